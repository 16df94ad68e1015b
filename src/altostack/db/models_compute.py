"""Tables of the compute control plane: regions → clusters → hosts, instance types,
images, placement groups and VMs.

Host usage columns are the scheduler's claims: they change only through conditional
UPDATEs (``used + n <= total * ratio``), so two schedulers can never overbook a host.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from altostack.db.models import Base
from altostack.db.types import JSONType, UTCDateTime, utcnow


class Region(Base):
    __tablename__ = "regions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("region_id", "name", name="uq_clusters_region_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    region_id: Mapped[str] = mapped_column(ForeignKey("regions.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    cpu_allocation_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    ram_allocation_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    policy: Mapped[str] = mapped_column(String(8), default="spread")
    join_token_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    # What the administrator wants (enabled|disabled|maintenance) and what the heartbeats
    # say (up|down); the API shows one ``state`` derived from both.
    admin_state: Mapped[str] = mapped_column(String(16), default="enabled")
    liveness: Mapped[str] = mapped_column(String(8), default="up")
    arch: Mapped[str] = mapped_column(String(16))
    accel: Mapped[str] = mapped_column(String(8), default="sim")
    cores: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    disk_gib: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    capabilities: Mapped[dict[str, bool]] = mapped_column(JSONType, default=dict)
    vcpus_used: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib_used: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_gib_used: Mapped[int] = mapped_column(BigInteger, default=0)
    gpus_used: Mapped[int] = mapped_column(Integer, default=0)
    load: Mapped[float] = mapped_column(Float, default=0.0)
    agent_token_hash: Mapped[str | None] = mapped_column(String(64))
    # The address VXLAN tunnels of other hosts reach this one at; a network host runs
    # the VPC routers (docs/network.md: the designated network host).
    underlay_ip: Mapped[str | None] = mapped_column(String(64))
    network_host: Mapped[bool] = mapped_column(Boolean, default=False)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class InstanceType(Base):
    __tablename__ = "instance_types"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    min_disk_gib: Mapped[int] = mapped_column(Integer, default=10)
    max_disk_gib: Mapped[int] = mapped_column(Integer, default=2048)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_tenant", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(128))
    os_family: Mapped[str] = mapped_column(String(32), default="linux")
    os_version: Mapped[str | None] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    format: Mapped[str | None] = mapped_column(String(8))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    virtual_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    checksum_sha256: Mapped[str | None] = mapped_column(String(64))
    min_disk_gib: Mapped[int] = mapped_column(Integer, default=1)
    visibility: Mapped[str] = mapped_column(String(8), default="private")
    shared_with: Mapped[list[str]] = mapped_column(JSONType, default=list)
    state: Mapped[str] = mapped_column(String(12), default="importing")
    error: Mapped[str | None] = mapped_column(Text)
    source: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PlacementGroup(Base):
    __tablename__ = "placement_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_placement_groups_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(8))
    # Hard affinity only: the host every live member is on, and how many live members
    # there are. The first member sets ``host_id`` with a conditional UPDATE (``WHERE
    # host_id IS NULL OR host_id = :host``), so two concurrent first members cannot land
    # on different hosts; the last one to leave (to the recycle bin) clears it.
    host_id: Mapped[str | None] = mapped_column(String(40))
    members: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AntiAffinitySlot(Base):
    """One row per (hard anti-affinity group, host): the primary key makes two VMs of the
    group on one host impossible, however many schedulers race."""

    __tablename__ = "anti_affinity_slots"

    group_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(40), unique=True)


class Vm(Base):
    __tablename__ = "vms"
    __table_args__ = (
        Index("ix_vms_tenant", "tenant_id", "id"),
        Index("ix_vms_host", "host_id"),
        Index("ix_vms_state", "state"),
        Index("ix_vms_placement_group", "placement_group_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(63))
    instance_type_id: Mapped[str] = mapped_column(String(40))
    instance_type: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    root_disk_gib: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_addresses: Mapped[list[str]] = mapped_column(JSONType, default=list)
    image_id: Mapped[str] = mapped_column(String(40))
    arch: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str | None] = mapped_column(String(40))
    cluster_id: Mapped[str | None] = mapped_column(String(40))
    subnet_id: Mapped[str | None] = mapped_column(String(40))
    private_ip: Mapped[str | None] = mapped_column(String(45))
    placement_group_id: Mapped[str | None] = mapped_column(String(40))
    tags: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    ssh_keys: Mapped[list[str]] = mapped_column(JSONType, default=list)
    user_data: Mapped[str | None] = mapped_column(Text)
    # Spec: what the user wants; status: what was last observed.
    power_state: Mapped[str] = mapped_column(String(8), default="running")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    # The accelerator its host reported (kvm|tcg|sim); None until the host first answered.
    accel: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_after: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsoleGrant(Base):
    """A one-time console credential, by its nonce (the credential itself is an HMAC).

    A page token gets its row when it is spent (``used`` true): the primary key makes a
    second use fail in the database, race-free across API processes. A WebSocket ticket
    gets its row when it is issued, holding the VNC listener it leads to (so the browser
    never learns the host's address), and is spent by flipping ``used`` in a conditional
    UPDATE. Rows are deleted once they would have expired anyway."""

    __tablename__ = "console_grants"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    vm_id: Mapped[str] = mapped_column(String(40))
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    used: Mapped[bool] = mapped_column(default=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
