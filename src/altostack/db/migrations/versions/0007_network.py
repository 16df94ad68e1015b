"""network: VPCs, subnets, IP allocations, security groups and their rules

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 05:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import altostack.db.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = altostack.db.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vpcs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vpcs")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_vpcs_name"),
        sa.UniqueConstraint("vni", name=op.f("uq_vpcs_vni")),
    )
    op.create_index(op.f("ix_vpcs_tenant_id"), "vpcs", ["tenant_id"], unique=False)
    op.create_table(
        "subnets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("vpc_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("gateway_ip", sa.String(length=64), nullable=False),
        sa.Column("dns_servers", altostack.db.types.JSONType, nullable=False),
        sa.Column("dhcp", sa.Boolean(), nullable=False),
        sa.Column("ipv6_prefix", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subnets")),
        sa.UniqueConstraint("vpc_id", "name", name="uq_subnets_name"),
    )
    op.create_index(op.f("ix_subnets_tenant_id"), "subnets", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_subnets_vpc_id"), "subnets", ["vpc_id"], unique=False)
    op.create_table(
        "ip_allocations",
        sa.Column("subnet_id", sa.String(length=40), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("owner_type", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("subnet_id", "ip", name=op.f("pk_ip_allocations")),
    )
    op.create_index(
        op.f("ix_ip_allocations_owner_id"), "ip_allocations", ["owner_id"], unique=False
    )
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("vpc_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_groups")),
        sa.UniqueConstraint("vpc_id", "name", name="uq_security_groups_name"),
    )
    op.create_index(
        op.f("ix_security_groups_tenant_id"), "security_groups", ["tenant_id"], unique=False
    )
    op.create_index(op.f("ix_security_groups_vpc_id"), "security_groups", ["vpc_id"], unique=False)
    op.create_table(
        "security_group_rules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=True),
        sa.Column("port_max", sa.Integer(), nullable=True),
        sa.Column("remote_cidr", sa.String(length=64), nullable=True),
        sa.Column("remote_group_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_group_rules")),
    )
    op.create_index(op.f("ix_security_group_rules_group_id"), "security_group_rules", ["group_id"])
    op.create_index(
        op.f("ix_security_group_rules_tenant_id"), "security_group_rules", ["tenant_id"]
    )


def downgrade() -> None:
    for table in ("security_group_rules", "security_groups", "ip_allocations", "subnets", "vpcs"):
        op.drop_table(table)
