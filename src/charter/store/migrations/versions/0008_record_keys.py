"""Lineage: the canonical records events map to, by entity and key value.

Events appended before this revision have no rows: their records are not found
by ``charter lineage``.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "record_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("integration", sa.String(64), nullable=False),
        sa.Column("mapping", sa.String(100), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_index("ix_record_keys_entity_key", "record_keys", ["entity", "key"])


def downgrade() -> None:
    op.drop_index("ix_record_keys_entity_key", table_name="record_keys")
    op.drop_table("record_keys")
