"""tiers_earnings

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tier_subscriptions",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("payment_url", sa.Text(), nullable=False),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("pending_tier", sa.String(length=16), nullable=True),
        sa.Column("pending_change_at_us", sa.BigInteger(), nullable=True),
        sa.Column("grace_until_us", sa.BigInteger(), nullable=True),
        sa.Column("cancel_in_stripe", sa.Boolean(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_tier_subscriptions"),
        sa.UniqueConstraint("stripe_subscription_id", name="uq_tier_subscriptions_stripe_subscription_id"),
    )
    op.create_index("ix_tier_subscriptions_customer", "tier_subscriptions", ["stripe_customer_id"])
    # Daily award limits sum a user's awards of one source since midnight.
    op.create_index("ix_transfers_credit_kind_created", "transfers", ["credit_account", "kind", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_transfers_credit_kind_created", table_name="transfers")
    op.drop_index("ix_tier_subscriptions_customer", table_name="tier_subscriptions")
    op.drop_table("tier_subscriptions")
