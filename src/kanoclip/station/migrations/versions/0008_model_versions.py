"""Adapt jobs and model versions (#32): a profile's adapted models, each with its shadow evaluation on the labelled
history; the profile names the version in use and what each promote replaced, for rollback.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.add_column("profiles", sa.Column("model_version", sa.Integer))
    op.add_column("profiles", sa.Column("rollback", sa.JSON))
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("profile_uid", sa.String(32), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("version", sa.Integer),
    )
    op.create_index("jobs_profile_created_at", "jobs", ["profile", "created_at"])
    op.create_table(
        "model_versions",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("profile_uid", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("model_changes", sa.JSON, nullable=False),
        sa.Column("parent", sa.JSON, nullable=False),
        sa.Column("parts", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("numbers", sa.JSON, nullable=False),
        sa.Column("shadow", sa.JSON, nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("model_versions_profile_version", "model_versions", ["profile_uid", "version"], unique=True)


def downgrade() -> None:
    op.drop_index("model_versions_profile_version", "model_versions")
    op.drop_table("model_versions")
    op.drop_index("jobs_profile_created_at", "jobs")
    op.drop_table("jobs")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("rollback")
        batch.drop_column("model_version")
