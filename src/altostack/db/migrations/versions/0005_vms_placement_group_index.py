"""vms: index on placement_group_id

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 04:50:00.000000

The scheduler's snapshot reads every grouped VM (``placement_group_id IS NOT NULL``, about
one VM in ten in the scale benchmark), and group pages and deletes look members up by
group: without the index each was a full scan of ``vms``.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.create_index("ix_vms_placement_group", ["placement_group_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_index("ix_vms_placement_group")
