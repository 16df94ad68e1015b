"""placement groups: the host and live-member count of a hard affinity group

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 04:45:00.000000

Existing hard affinity groups get both from their live members, so a database upgraded
mid-life keeps its groups together.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("members", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        """
        UPDATE placement_groups SET
            members = (SELECT COUNT(*) FROM vms
                       WHERE vms.placement_group_id = placement_groups.id
                         AND vms.state != 'deleted' AND vms.host_id IS NOT NULL),
            host_id = (SELECT MIN(vms.host_id) FROM vms
                       WHERE vms.placement_group_id = placement_groups.id
                         AND vms.state != 'deleted')
        WHERE policy = 'affinity' AND mode = 'hard'
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.drop_column("members")
        batch_op.drop_column("host_id")
