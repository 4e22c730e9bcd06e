"""transfer_usage: what a transfer priced from usage used (meter, quantity,
dimensions) and the price it was charged at (rate card version, unit price)

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A side table, not columns of transfers: only priced transfers pay for it.
    op.create_table(
        "transfer_usage",
        sa.Column("transfer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("meter", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("dimensions", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("per_units", sa.BigInteger(), nullable=False),
        sa.Column("priced_at_us", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("transfer_id", name="pk_transfer_usage"),
    )
    op.create_index("ix_transfer_usage_hold_id", "transfer_usage", ["hold_id"])


def downgrade() -> None:
    op.drop_index("ix_transfer_usage_hold_id", table_name="transfer_usage")
    op.drop_table("transfer_usage")
