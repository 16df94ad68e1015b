"""storage: pools (and what agents report of them), disks and snapshots

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 07:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import altostack.db.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = altostack.db.types.UTCDateTime(timezone=True)
_JSON = altostack.db.types.JSONType


def upgrade() -> None:
    op.create_table(
        "storage_pools",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("storage_classes", _JSON, nullable=False),
        sa.Column("cluster_ids", _JSON, nullable=False),
        sa.Column("allocation_ratio", sa.Float(), nullable=False),
        sa.Column("provisioned_gib", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_storage_pools_name")),
    )
    op.create_table(
        "storage_pool_reports",
        sa.Column("pool_id", sa.String(length=40), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=False),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("allocated_bytes", sa.BigInteger(), nullable=False),
        sa.Column("provisioned_bytes", sa.BigInteger(), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("health_detail", sa.Text(), nullable=True),
        sa.Column("reported_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("pool_id", "host_id", name=op.f("pk_storage_pool_reports")),
    )
    op.create_table(
        "disks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("size_gib", sa.Integer(), nullable=False),
        sa.Column("storage_class", sa.String(length=32), nullable=False),
        sa.Column("pool_id", sa.String(length=40), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=True),
        sa.Column("source_type", sa.String(length=16), nullable=True),
        sa.Column("source_id", sa.String(length=40), nullable=True),
        sa.Column("vm_id", sa.String(length=40), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("snapshot_count", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("deleted_at", _TIME, nullable=True),
        sa.Column("purge_after", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disks")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_disks_name"),
    )
    op.create_index("ix_disks_tenant", "disks", ["tenant_id", "id"], unique=False)
    op.create_index("ix_disks_vm", "disks", ["vm_id"], unique=False)
    op.create_index("ix_disks_state", "disks", ["state"], unique=False)
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("disk_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("size_gib", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    op.create_index("ix_snapshots_tenant", "snapshots", ["tenant_id", "id"], unique=False)
    op.create_index("ix_snapshots_disk", "snapshots", ["disk_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_snapshots_disk", table_name="snapshots")
    op.drop_index("ix_snapshots_tenant", table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index("ix_disks_state", table_name="disks")
    op.drop_index("ix_disks_vm", table_name="disks")
    op.drop_index("ix_disks_tenant", table_name="disks")
    op.drop_table("disks")
    op.drop_table("storage_pool_reports")
    op.drop_table("storage_pools")
