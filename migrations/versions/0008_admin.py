"""admin: the audit trail (admin_actions); transfers record their lots and
charging principal (transfers.ledger) and what they correct (transfers.corrects)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transfers", sa.Column("ledger", sa.Text(), nullable=False, server_default="{}"))
    op.add_column("transfers", sa.Column("corrects", sa.BigInteger(), nullable=True))
    op.create_index("ix_transfers_corrects", "transfers", ["corrects"])
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("transfer_ids", sa.Text(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_admin_actions_created", "admin_actions", ["created_at_us", "id"])
    op.create_index("ix_admin_actions_user", "admin_actions", ["user_id", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_admin_actions_user", table_name="admin_actions")
    op.drop_index("ix_admin_actions_created", table_name="admin_actions")
    op.drop_table("admin_actions")
    op.drop_index("ix_transfers_corrects", table_name="transfers")
    op.drop_column("transfers", "corrects")
    op.drop_column("transfers", "ledger")
