"""snapshots of a VM's root disk: ``snapshots.vm_id``; ``disk_id`` empty for them

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("vm_id", sa.String(length=40), nullable=True))
        batch.alter_column("disk_id", existing_type=sa.String(length=40), nullable=True)
        batch.create_index("ix_snapshots_vm", ["vm_id"])


def downgrade() -> None:
    op.execute("DELETE FROM snapshots WHERE disk_id IS NULL")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_index("ix_snapshots_vm")
        batch.alter_column("disk_id", existing_type=sa.String(length=40), nullable=False)
        batch.drop_column("vm_id")
