"""history: a wallet's debits by (kind, created_at_us), as its credits
already are, so that a filtered page learns from one probe per kind whether
anything matches, and a spending report reads only its own rows

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_transfers_debit_kind_created", "transfers", ["debit_account", "kind", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_transfers_debit_kind_created", table_name="transfers")
