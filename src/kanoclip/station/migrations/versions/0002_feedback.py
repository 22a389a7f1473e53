"""Feedback on results (good | defect, with a note), and which instance recorded each result.

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

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("result_id", BIG_ID, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_result_id", "feedback", ["result_id"])
    with op.batch_alter_table("results") as batch:  # SQLite rebuilds the table; PostgreSQL adds a column
        batch.add_column(sa.Column("instance", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("instance")
    op.drop_table("feedback")
