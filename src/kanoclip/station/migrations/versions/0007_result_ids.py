"""A result's id is never given to another result, and retention finds the files rows name by index.

SQLite reused the id of the newest result once retention had pruned it (a rowid table gives out the largest id
plus one): a verdict sent for the pruned id then taught another part. The table is rebuilt with AUTOINCREMENT, which
keeps the largest id ever given (PostgreSQL's identity never reuses one). Retention looks up, step by step, whether
any row still names a file: the image, overlay and map hashes get an index each.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # Rebuilding drops the old table, and with foreign keys on (always, in a transaction that cannot turn them
        # off) that drop cascades to the verdicts: they are set aside and put back around it.
        bind.exec_driver_sql("CREATE TEMP TABLE kept_feedback AS SELECT * FROM feedback")
        with op.batch_alter_table("results", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
        bind.exec_driver_sql("INSERT INTO feedback SELECT * FROM kept_feedback")
        bind.exec_driver_sql("DROP TABLE kept_feedback")
    for column in ("image_sha256", "overlay_sha256", "map_sha256"):
        op.create_index(f"results_{column}", "results", [column])
