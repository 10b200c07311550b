"""Resilience: shared quota buckets and their use per flow, circuit breakers and their history.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quota_buckets",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("paused_until", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "quota_usage",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("flow", sa.String(100), primary_key=True),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("granted", sa.BigInteger, nullable=False),
        sa.Column("waited_s", sa.Float, nullable=False),
        sa.Column("deferred", sa.BigInteger, nullable=False),
        sa.Column("rate_limited", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "breakers",
        sa.Column("key", sa.String(330), primary_key=True),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(260)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "breaker_transitions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(330), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(260)),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("worker", sa.String(100), nullable=False),
    )
    op.create_index("ix_breaker_transitions_system_at", "breaker_transitions", ["system", "at"])


def downgrade() -> None:
    op.drop_index("ix_breaker_transitions_system_at", "breaker_transitions")
    op.drop_table("breaker_transitions")
    op.drop_table("breakers")
    op.drop_table("quota_usage")
    op.drop_table("quota_buckets")
