"""history: the per-account transfer indexes are on (account, -id), an order
only they can give, so a page is one index range scan under any plan

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_transfers_debit_newest", "transfers", ["debit_account", sa.text("(-id)")])
    op.create_index("ix_transfers_credit_newest", "transfers", ["credit_account", sa.text("(-id)")])
    op.drop_index("ix_transfers_debit_id", table_name="transfers")
    op.drop_index("ix_transfers_credit_id", table_name="transfers")


def downgrade() -> None:
    op.create_index("ix_transfers_debit_id", "transfers", ["debit_account", "id"])
    op.create_index("ix_transfers_credit_id", "transfers", ["credit_account", "id"])
    op.drop_index("ix_transfers_debit_newest", table_name="transfers")
    op.drop_index("ix_transfers_credit_newest", table_name="transfers")
