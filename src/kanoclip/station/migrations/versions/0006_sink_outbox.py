"""Sinks' outbox: messages a sink (MQTT) has not yet had acknowledged, kept in the state so that results made while
its broker is down, or before a restart, are published when it is back; a row goes when the broker acknowledges it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "sink_outbox",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("sink", sa.String(200), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("sink_outbox_sink_id", "sink_outbox", ["sink", "id"])


def downgrade() -> None:
    op.drop_index("sink_outbox_sink_id", "sink_outbox")
    op.drop_table("sink_outbox")
