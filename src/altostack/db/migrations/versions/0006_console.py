"""console: one-time console tokens and WebSocket tickets

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 04:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import altostack.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_grants",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("vm_id", sa.String(length=40), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("expires_at", altostack.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_console_grants")),
    )
    op.create_index(
        op.f("ix_console_grants_expires_at"), "console_grants", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_console_grants_expires_at"), table_name="console_grants")
    op.drop_table("console_grants")
