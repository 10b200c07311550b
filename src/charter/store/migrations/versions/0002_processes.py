"""Process definitions, instances, inbox, history, waits and escalations.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "process_definitions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "process_instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("process", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("business_key", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("next_wake_at", sa.Float),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("parent_id", sa.String(36)),
        sa.Column("parent_step", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("process", "business_key", name="uq_instance_process_key"),
    )
    op.create_index("ix_instances_wake", "process_instances", ["next_wake_at"])
    op.create_index("ix_instances_status", "process_instances", ["process", "status"])
    op.create_table(
        "process_inbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_process_inbox_instance_id", "process_inbox", ["instance_id"])
    op.create_table(
        "process_history",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("step", sa.String(64)),
        sa.Column("what", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_process_history_instance_id", "process_history", ["instance_id"])
    op.create_table(
        "process_waits",
        sa.Column("instance_id", sa.String(36), primary_key=True),
        sa.Column("step", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("field", sa.String(200), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_index("ix_waits_match", "process_waits", ["system", "type", "field", "value"])
    op.create_table(
        "escalations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("escalations")
    op.drop_index("ix_waits_match", "process_waits")
    op.drop_table("process_waits")
    op.drop_index("ix_process_history_instance_id", "process_history")
    op.drop_table("process_history")
    op.drop_index("ix_process_inbox_instance_id", "process_inbox")
    op.drop_table("process_inbox")
    op.drop_index("ix_instances_status", "process_instances")
    op.drop_index("ix_instances_wake", "process_instances")
    op.drop_table("process_instances")
    op.drop_table("process_definitions")
