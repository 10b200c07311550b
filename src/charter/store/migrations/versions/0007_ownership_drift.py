"""Field ownership and drift: held writes, write decisions, drift counters, notices.

Deliveries held for review use the status 'quarantined'; ``deliveries.status``
is a string column, so that needs no change.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("integration", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("field", sa.String(200), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("system_of_record", sa.String(64), nullable=False),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float),
        sa.Column("decided_by", sa.String(100)),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_quarantine_status_team", "quarantine", ["status", "team"])
    op.create_index("ix_quarantine_event", "quarantine", ["event_id", "integration"])
    op.create_table(
        "field_writes",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("entity", sa.String(64), primary_key=True),
        sa.Column("field", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(16), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_table(
        "drift",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("event_type", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("field", sa.String(300), primary_key=True),
        sa.Column("value", sa.String(255), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_index("ix_drift_last_seen", "drift", ["last_seen"])
    op.create_table(
        "notices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_notices_team", "notices", ["team", "id"])


def downgrade() -> None:
    op.drop_index("ix_notices_team", table_name="notices")
    op.drop_table("notices")
    op.drop_index("ix_drift_last_seen", table_name="drift")
    op.drop_table("drift")
    op.drop_table("field_writes")
    op.drop_index("ix_quarantine_event", table_name="quarantine")
    op.drop_index("ix_quarantine_status_team", table_name="quarantine")
    op.drop_table("quarantine")
