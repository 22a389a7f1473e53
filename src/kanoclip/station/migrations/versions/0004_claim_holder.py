"""Claims held by a holder id (one per watcher process, `claims.new_holder`) and completed by compare-and-set on it;
released by their holder when it stops; pruned with the results they completed. The column `claimed_by` already
holds the id (it held the server's host:pid); what is new is how the claims are found: by holder (release), by
result (pruned with it) and by age (stale ones pruned).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("claims_claimed_by", "claims", ["claimed_by"])
    op.create_index("claims_result_id", "claims", ["result_id"])
    op.create_index("claims_claimed_at", "claims", ["claimed_at"])


def downgrade() -> None:
    op.drop_index("claims_claimed_at", table_name="claims")
    op.drop_index("claims_result_id", table_name="claims")
    op.drop_index("claims_claimed_by", table_name="claims")
