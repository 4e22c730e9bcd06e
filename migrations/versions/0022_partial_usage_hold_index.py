"""transfer_usage: the hold_id index only over the rows that name a hold
(a Reserve's and a Capture's). Most priced transfers are Spends, whose
hold_id is NULL: each of them inserted a NULL entry that no read looks for
(a hold's usage is found by `hold_id = ...`, which the partial index serves).

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

NAMES_A_HOLD = "hold_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_transfer_usage_hold_id", table_name="transfer_usage")
    op.create_index(
        "ix_transfer_usage_hold_id", "transfer_usage", ["hold_id"],
        sqlite_where=sa.text(NAMES_A_HOLD), postgresql_where=sa.text(NAMES_A_HOLD),
    )


def downgrade() -> None:
    op.drop_index("ix_transfer_usage_hold_id", table_name="transfer_usage")
    op.create_index("ix_transfer_usage_hold_id", "transfer_usage", ["hold_id"])
