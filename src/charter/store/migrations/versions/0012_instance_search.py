"""Indexes for finding process instances: by start time and by business key.

``charter process list`` and ``GET /v1/processes/instances`` show the newest instances
first, filtered by process, status, business key or time. Ended instances stay in the
table, so without these every search sorted the whole table (on PostgreSQL, 625 ms
for the newest 100 of a million instances) and a business key without its process
was found by reading every row (100 ms). Both columns are written once, when an
instance starts, so the transitions that update an instance do not touch these
indexes (PostgreSQL's heap-only updates stay possible; SQLite updates only the
indexes of changed columns).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instances_created", "process_instances", ["created_at"])
    op.create_index("ix_instances_business_key", "process_instances", ["business_key"])


def downgrade() -> None:
    op.drop_index("ix_instances_business_key", "process_instances")
    op.drop_index("ix_instances_created", "process_instances")
