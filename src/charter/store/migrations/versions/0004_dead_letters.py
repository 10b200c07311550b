"""Dead-letter operations and replay: the audit of actions taken on deliveries.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", Id),
        sa.Column("replay_id", sa.String(36)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    )
    op.create_index("ix_delivery_actions_delivery_id", "delivery_actions", ["delivery_id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_actions_delivery_id", "delivery_actions")
    op.drop_table("delivery_actions")
