"""saved cards: the card off-session charges use moves from refill_configs
to its own table, saved_cards, owned by payments

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_CARD = ("payment_method_id", "brand", "last4", "exp_month", "exp_year", "setup_intent_id")
_OLD = ("payment_method_id", "pm_brand", "pm_last4", "pm_exp_month", "pm_exp_year", "setup_intent_id")


def upgrade() -> None:
    op.create_table(
        "saved_cards",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("payment_method_id", sa.String(length=255), nullable=True),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=8), nullable=False),
        sa.Column("exp_month", sa.Integer(), nullable=False),
        sa.Column("exp_year", sa.Integer(), nullable=False),
        sa.Column("setup_intent_id", sa.String(length=255), nullable=True),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_saved_cards")),
    )
    op.execute(
        f"INSERT INTO saved_cards (user_id, {', '.join(_CARD)}, updated_at_us) "
        f"SELECT user_id, {', '.join(_OLD)}, updated_at_us FROM refill_configs "
        "WHERE payment_method_id IS NOT NULL OR setup_intent_id IS NOT NULL"
    )
    with op.batch_alter_table("refill_configs") as batch:
        for name in _OLD:
            batch.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("refill_configs") as batch:
        batch.add_column(sa.Column("payment_method_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("pm_brand", sa.String(length=32), nullable=False, server_default=""))
        batch.add_column(sa.Column("pm_last4", sa.String(length=8), nullable=False, server_default=""))
        batch.add_column(sa.Column("pm_exp_month", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("pm_exp_year", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("setup_intent_id", sa.String(length=255), nullable=True))
    # A card of a user without a config goes with the table: auto-refill never charged it.
    for old, new in zip(_OLD, _CARD, strict=True):
        op.execute(
            f"UPDATE refill_configs SET {old} = (SELECT {new} FROM saved_cards "
            "WHERE saved_cards.user_id = refill_configs.user_id) "
            "WHERE user_id IN (SELECT user_id FROM saved_cards)"
        )
    op.drop_table("saved_cards")
