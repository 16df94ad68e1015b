"""Tables of block storage: storage pools (with what agents report of them), disks and
their snapshots.

Counters that guard limits change only through conditional UPDATEs, like quotas: a disk's
``snapshot_count`` (``< limit``) and a pool's ``provisioned_gib`` (``+ n <= capacity x
ratio``), so concurrent requests cannot pass a limit however many API servers race.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from altostack.db.models import Base
from altostack.db.types import JSONType, UTCDateTime, utcnow


class StoragePool(Base):
    __tablename__ = "storage_pools"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    # Shared pools (ceph) are reachable from every host of their clusters; the others
    # (local, sim) are one pool per host, so a disk lives on one host.
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    storage_classes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    cluster_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    allocation_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    # The sum of the sizes of the disks placed here (the claim; race-free by UPDATE).
    provisioned_gib: Mapped[int] = mapped_column(BigInteger, default=0)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoragePoolReport(Base):
    """What one host's agent last said about its pool (PoolInfo): capacity and health."""

    __tablename__ = "storage_pool_reports"

    pool_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    provisioned_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    health: Mapped[str] = mapped_column(String(16), default="ok")
    health_detail: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Disk(Base):
    __tablename__ = "disks"
    __table_args__ = (
        Index("ix_disks_tenant", "tenant_id", "id"),
        Index("ix_disks_vm", "vm_id"),
        Index("ix_disks_state", "state"),
        UniqueConstraint("tenant_id", "name", name="uq_disks_name"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(64))
    size_gib: Mapped[int] = mapped_column(Integer)
    storage_class: Mapped[str] = mapped_column(String(32))
    pool_id: Mapped[str] = mapped_column(String(40))
    # The host whose pool holds the volume (non-shared pools); None on a shared pool.
    host_id: Mapped[str | None] = mapped_column(String(40))
    source_type: Mapped[str | None] = mapped_column(String(16))
    source_id: Mapped[str | None] = mapped_column(String(40))
    vm_id: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16), default="creating")
    reason: Mapped[str | None] = mapped_column(Text)
    snapshot_count: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_after: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_tenant", "tenant_id", "id"),
        Index("ix_snapshots_disk", "disk_id"),
        Index("ix_snapshots_vm", "vm_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    disk_id: Mapped[str | None] = mapped_column(String(40))
    """The data disk it is of; None for a VM's root disk (``vm_id``)."""
    vm_id: Mapped[str | None] = mapped_column(String(40))
    """The VM whose root disk it is of (root disks are not ``disk-…`` resources)."""
    name: Mapped[str] = mapped_column(String(64))
    size_gib: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="creating")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
