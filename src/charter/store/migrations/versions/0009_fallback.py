"""Fallback: where a delivery (and each attempt) went instead of its target.

``fallback`` names the fallback system, or ``file:PATH`` for a file drop; NULL
means the target itself, which is what every earlier delivery went to.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("fallback", sa.Text))
    op.add_column("attempts", sa.Column("fallback", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("fallback")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("fallback")
