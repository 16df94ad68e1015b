"""network: NICs, public IP pools, elastic IPs, NAT gateways; VPC push generations; host
underlay addresses and the network-host flag

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import altostack.db.types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = altostack.db.types.UTCDateTime(timezone=True)
_JSON = altostack.db.types.JSONType


def _id(name: str = "id", nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.String(length=40), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("vpcs") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(
            sa.Column("observed_generation", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("hosts", _JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("underlay_ip", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("network_host", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "nics",
        _id(),
        _id("tenant_id"),
        _id("vpc_id"),
        _id("subnet_id"),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("private_ip", sa.String(length=64), nullable=False),
        sa.Column("security_group_ids", _JSON, nullable=False),
        sa.Column("primary", sa.Boolean(), nullable=False),
        _id("vm_id", nullable=True),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nics")),
        sa.UniqueConstraint("mac", name=op.f("uq_nics_mac")),
        sa.UniqueConstraint("vm_id", "slot", name="uq_nics_vm_slot"),
    )
    for column in ("tenant_id", "vpc_id", "subnet_id", "vm_id"):
        op.create_index(op.f(f"ix_nics_{column}"), "nics", [column])
    op.create_table(
        "ip_pools",
        _id(),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("gateway_ip", sa.String(length=64), nullable=False),
        sa.Column("range_start", sa.String(length=64), nullable=False),
        sa.Column("range_end", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_pools")),
        sa.UniqueConstraint("region", "name", name="uq_ip_pools_name"),
    )
    op.create_index(op.f("ix_ip_pools_region"), "ip_pools", ["region"])
    op.create_table(
        "public_ip_allocations",
        _id("pool_id"),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("owner_type", sa.String(length=16), nullable=False),
        _id("owner_id"),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("pool_id", "ip", name=op.f("pk_public_ip_allocations")),
    )
    op.create_index(
        op.f("ix_public_ip_allocations_owner_id"), "public_ip_allocations", ["owner_id"]
    )
    op.create_table(
        "eips",
        _id(),
        _id("tenant_id"),
        _id("pool_id"),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("bandwidth_mbps", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        _id("nic_id", nullable=True),
        _id("nat_gateway_id", nullable=True),
        _id("vpc_id", nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eips")),
        sa.UniqueConstraint("nic_id", name=op.f("uq_eips_nic_id")),
        sa.UniqueConstraint("nat_gateway_id", name=op.f("uq_eips_nat_gateway_id")),
    )
    for column in ("tenant_id", "pool_id", "vpc_id"):
        op.create_index(op.f(f"ix_eips_{column}"), "eips", [column])
    op.create_table(
        "nat_gateways",
        _id(),
        _id("tenant_id"),
        _id("vpc_id"),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nat_gateways")),
        sa.UniqueConstraint("vpc_id", "name", name="uq_nat_gateways_name"),
    )
    op.create_index(op.f("ix_nat_gateways_tenant_id"), "nat_gateways", ["tenant_id"])
    op.create_index(op.f("ix_nat_gateways_vpc_id"), "nat_gateways", ["vpc_id"])
    op.create_table(
        "nat_rules",
        _id(),
        _id("nat_gateway_id"),
        _id("tenant_id"),
        _id("vpc_id"),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("source_key", sa.String(length=80), nullable=False),
        _id("subnet_id", nullable=True),
        _id("vm_id", nullable=True),
        sa.Column("protocol", sa.String(length=8), nullable=True),
        sa.Column("public_port", sa.Integer(), nullable=True),
        sa.Column("private_port", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nat_rules")),
        sa.UniqueConstraint("vpc_id", "source_key", name="uq_nat_rules_source"),
    )
    op.create_index(op.f("ix_nat_rules_nat_gateway_id"), "nat_rules", ["nat_gateway_id"])
    op.create_index(op.f("ix_nat_rules_tenant_id"), "nat_rules", ["tenant_id"])


def downgrade() -> None:
    for table in ("nat_rules", "nat_gateways", "eips", "public_ip_allocations", "ip_pools", "nics"):
        op.drop_table(table)
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("network_host")
        batch.drop_column("underlay_ip")
    with op.batch_alter_table("vpcs") as batch:
        for column in ("hosts", "observed_generation", "generation"):
            batch.drop_column(column)
