"""The station: profiles, their good parts, and every result.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("class_name", sa.String(200)),
        sa.Column("checkpoint", sa.Text),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("exported", sa.Text),
        sa.Column("bank_sha256", sa.String(64)),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "profile_references",
        sa.Column("profile", sa.String(64), sa.ForeignKey("profiles.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "results",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("overlay_sha256", sa.String(64)),
        sa.Column("map_sha256", sa.String(64)),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("label", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("image_threshold", sa.Float),
        sa.Column("pixel_threshold", sa.Float),
        sa.Column("threshold_basis", sa.JSON),
        sa.Column("threshold_stale", sa.Text),
        sa.Column("bank_id", sa.String(16)),
        sa.Column("backbone_fingerprint", sa.String(64)),
        sa.Column("checkpoint_sha256", sa.String(64)),
        sa.Column("engine", sa.Text),
        sa.Column("precision", sa.String(8)),
        sa.Column("latency_ms", sa.Float),
    )
    op.create_index("results_profile_id", "results", ["profile", "id"])
    op.create_index("results_created_at", "results", ["created_at"])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("profile_references")
    op.drop_table("profiles")
