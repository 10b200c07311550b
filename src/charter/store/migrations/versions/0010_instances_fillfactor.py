"""Room on each page of ``process_instances`` (PostgreSQL) for the rows' next versions.

Every transition of an instance updates its row. When the new version fits on the
same page and no indexed column changes, PostgreSQL writes it as a heap-only tuple
(HOT), without an entry in each of the table's four indexes. With pages filled
completely by inserts there is no room, and almost no update was HOT: 962 of 32,012
in 8,000 task-step instances. At 70 % most are; the engine benchmark ran about a
tenth faster (docs/performance.md). The setting applies to pages written from now
on. SQLite has no such setting; nothing changes there.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE process_instances SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE process_instances RESET (fillfactor)")
