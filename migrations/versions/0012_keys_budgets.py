"""scoped keys with budgets: api_keys (with their use per window), and the key of each transfer and hold

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("secret_prefix", sa.String(16), nullable=False),
        sa.Column("budgets", sa.Text(), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("max_spend", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(160), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in (
            "hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used", "lifetime_used",
        )),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user_id", "created_at_us"])
    # Nullable additions: no table rebuild on SQLite.
    op.add_column("transfers", sa.Column("key_id", sa.String(64), nullable=True))
    op.create_index("ix_transfers_key_id", "transfers", ["key_id", "id"])
    op.add_column("holds", sa.Column("key_id", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("holds", "key_id")
    op.drop_index("ix_transfers_key_id", table_name="transfers")
    op.drop_column("transfers", "key_id")
    op.drop_index("ix_api_keys_user", table_name="api_keys")
    op.drop_table("api_keys")
