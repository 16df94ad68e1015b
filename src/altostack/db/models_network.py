"""Tables of the virtual network: VPCs, subnets, IP allocations, security groups, NICs,
public IP pools, elastic IPs and NAT gateways.

Races are settled by keys, not by reading first: a VPC's VNI is unique, and an address is
the primary key of its allocation row, so two VMs can never get one address however many
API servers and workers race (the loser of an INSERT picks another address).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from altostack.db.models import Base
from altostack.db.types import JSONType, UTCDateTime, utcnow


class Vpc(Base):
    __tablename__ = "vpcs"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_vpcs_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(64))
    vni: Mapped[int] = mapped_column(Integer, unique=True)
    state: Mapped[str] = mapped_column(String(16))
    # Bumped with every change the hosts must see; the hosts ack what they applied.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    hosts: Mapped[list[str]] = mapped_column(JSONType, default=list)
    """The hosts the VPC was last pushed to (to clean up those that no longer need it)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subnet(Base):
    __tablename__ = "subnets"
    __table_args__ = (UniqueConstraint("vpc_id", "name", name="uq_subnets_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    vpc_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(64))
    gateway_ip: Mapped[str] = mapped_column(String(64))
    dns_servers: Mapped[list[str]] = mapped_column(JSONType, default=list)
    dhcp: Mapped[bool] = mapped_column(Boolean, default=True)
    ipv6_prefix: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IpAllocation(Base):
    """One row per address in use: the primary key is the race-free part of IPAM."""

    __tablename__ = "ip_allocations"

    subnet_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_type: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecurityGroup(Base):
    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("vpc_id", "name", name="uq_security_groups_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    vpc_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(255))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecurityGroupRule(Base):
    __tablename__ = "security_group_rules"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    direction: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str] = mapped_column(String(8))
    port_min: Mapped[int | None] = mapped_column(Integer)
    port_max: Mapped[int | None] = mapped_column(Integer)
    remote_cidr: Mapped[str | None] = mapped_column(String(64))
    remote_group_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(8))
    priority: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Nic(Base):
    """A virtual NIC: one address of one subnet, a MAC, security groups, at most one VM.

    ``slot`` is the NIC's place on its VM (0 = the primary NIC made with the VM); the
    unique (vm, slot) key is what keeps a VM at six NICs however many attaches race.
    """

    __tablename__ = "nics"
    __table_args__ = (UniqueConstraint("vm_id", "slot", name="uq_nics_vm_slot"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    vpc_id: Mapped[str] = mapped_column(String(40), index=True)
    subnet_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    private_ip: Mapped[str] = mapped_column(String(64))
    security_group_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    vm_id: Mapped[str | None] = mapped_column(String(40), index=True)
    slot: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IpPool(Base):
    """A public (external) network of a region and the range elastic IPs come from."""

    __tablename__ = "ip_pools"
    __table_args__ = (UniqueConstraint("region", "name", name="uq_ip_pools_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(64))
    gateway_ip: Mapped[str] = mapped_column(String(64))
    range_start: Mapped[str] = mapped_column(String(64))
    range_end: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PublicIpAllocation(Base):
    """One row per public address in use (an EIP or a VPC router's own address): the
    primary key makes two tenants holding one address impossible."""

    __tablename__ = "public_ip_allocations"

    pool_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_type: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Eip(Base):
    __tablename__ = "eips"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    pool_id: Mapped[str] = mapped_column(String(40), index=True)
    address: Mapped[str] = mapped_column(String(64))
    bandwidth_mbps: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    nic_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    nat_gateway_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    vpc_id: Mapped[str | None] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NatGateway(Base):
    __tablename__ = "nat_gateways"
    __table_args__ = (UniqueConstraint("vpc_id", "name", name="uq_nat_gateways_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    vpc_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NatRule(Base):
    """A SNAT source (a subnet or one VM) or a DNAT port mapping of a NAT gateway.

    SNAT sources are unique per VPC across its gateways (``source_key``: the subnet or
    VM id); DNAT public ports are unique per gateway and protocol (``source_key``:
    ``dnat/<protocol>/<port>``). Both are keys, so a racing duplicate is a 409.
    """

    __tablename__ = "nat_rules"
    __table_args__ = (UniqueConstraint("vpc_id", "source_key", name="uq_nat_rules_source"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nat_gateway_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    vpc_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(8))
    source_key: Mapped[str] = mapped_column(String(80))
    subnet_id: Mapped[str | None] = mapped_column(String(40))
    vm_id: Mapped[str | None] = mapped_column(String(40))
    protocol: Mapped[str | None] = mapped_column(String(8))
    public_port: Mapped[int | None] = mapped_column(Integer)
    private_port: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
