"""What the station is taught belongs to a profile, not to its name: each profile gets a `uid`, and each verdict the
`profile_uid` of the profile it teaches, so a profile deleted and created again starts without the old verdicts.

Existing rows are kept: every profile gets a fresh uid; a verdict gets its profile's uid when its result was recorded
since that profile was created (older ones belonged to a profile of the same name, deleted since).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("uid", sa.String(32)))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("profile_uid", sa.String(32)))
    bind = op.get_bind()
    profiles = sa.table("profiles", sa.column("name"), sa.column("uid"), sa.column("created_at"))
    results = sa.table("results", sa.column("id"), sa.column("profile"), sa.column("created_at"))
    feedback = sa.table("feedback", sa.column("result_id"), sa.column("profile_uid"))
    for name, created_at in list(bind.execute(sa.select(profiles.c.name, profiles.c.created_at))):
        uid = uuid.uuid4().hex
        bind.execute(sa.update(profiles).where(profiles.c.name == name).values(uid=uid))
        since = sa.select(results.c.id).where(results.c.profile == name, results.c.created_at >= created_at)
        bind.execute(sa.update(feedback).where(feedback.c.result_id.in_(since)).values(profile_uid=uid))
    with op.batch_alter_table("profiles") as batch:
        batch.alter_column("uid", existing_type=sa.String(32), nullable=False)
    op.create_index("ix_feedback_profile_uid", "feedback", ["profile_uid"])


def downgrade() -> None:
    op.drop_index("ix_feedback_profile_uid", "feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("profile_uid")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("uid")
