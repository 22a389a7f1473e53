"""`kanoclip watch`: claims on arriving files (the ledger that makes scoring exactly-once), events (stream gaps,
undelivered webhooks, watcher errors), the frame a result came from; and each profile's model options (backbone,
resolution, ...), so that a profile means the same model in every process that serves it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("result_id", BIG_ID),
    )
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("profile", sa.String(64)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("instance", sa.String(64)),
    )
    op.create_index("events_created_at", "events", ["created_at"])
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("frame_index", sa.BigInteger))
        batch.add_column(sa.Column("frame_time", sa.Float))
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("model_changes", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("model_changes")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("frame_time")
        batch.drop_column("frame_index")
    op.drop_table("events")
    op.drop_table("claims")
