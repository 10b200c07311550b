"""One timeline row per transition: ``process_history.entries``.

A transition adds three or four timeline entries (a step completed, the next one
started, its first attempt). Each was a row of its own, and on both databases those
inserts cost more than the rest of the transition's write. From this revision a
transition's entries are one row: ``what`` is ``transition`` and ``entries`` holds
them as a JSON array. Rows written before hold one entry each, with ``entries``
NULL, and read as before.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("process_history", sa.Column("entries", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("process_history") as batch:
        batch.drop_column("entries")
