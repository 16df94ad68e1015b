"""console: spent one-time console tokens and WebSocket tickets

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 04:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import altostack.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spent_console_tokens",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("vm_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_spent_console_tokens")),
    )
    op.create_index(
        op.f("ix_spent_console_tokens_expires_at"),
        "spent_console_tokens",
        ["expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_spent_console_tokens_expires_at"), table_name="spent_console_tokens")
    op.drop_table("spent_console_tokens")
