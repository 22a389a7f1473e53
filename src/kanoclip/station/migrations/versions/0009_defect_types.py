"""Defect typing (#34): each result's type and its probability, a "defect" verdict's type, and the typed examples
each profile learned from those verdicts. Existing rows keep every value; their new columns are empty. And one
running adapt job per profile, held by a partial unique index.

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
    op.add_column("results", sa.Column("defect_type", sa.String(100)))
    op.add_column("results", sa.Column("defect_type_p", sa.Float))
    op.add_column("feedback", sa.Column("defect_type", sa.String(100)))
    op.create_table(
        "defect_examples",
        sa.Column("profile_uid", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    running = sa.text("state = 'running'")
    op.create_index(
        "jobs_one_running", "jobs", ["profile_uid"], unique=True, sqlite_where=running, postgresql_where=running
    )


def downgrade() -> None:
    op.drop_index("jobs_one_running", "jobs")
    op.drop_table("defect_examples")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("defect_type")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("defect_type_p")
        batch.drop_column("defect_type")
