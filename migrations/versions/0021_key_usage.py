"""key usage: a key's use counters (and resets_at_us, with its index) move
from the wide api_keys row to a narrow key_usage row of their own, one per
key: a batch's spends through a key rewrite only that row (on SQLite an
UPDATE writes the whole row: about 2 us for the narrow one against 4 us for
the key's). The counters of the keys already there move with them; the
downgrade puts them back.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

COUNTERS = ("hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used", "lifetime_used")
MOVED = (*COUNTERS, "resets_at_us")


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("id", sa.String(64), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in COUNTERS),
        sa.Column("resets_at_us", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_key_usage"),
    )
    op.create_index("ix_key_usage_resets", "key_usage", ["resets_at_us", "id"])
    cols = ", ".join(("id", *MOVED))
    op.execute(f"INSERT INTO key_usage ({cols}) SELECT {cols} FROM api_keys")
    op.drop_index("ix_api_keys_resets", table_name="api_keys")
    for c in MOVED:
        op.drop_column("api_keys", c)


def downgrade() -> None:
    for c in MOVED:
        op.add_column("api_keys", sa.Column(c, sa.BigInteger(), nullable=False, server_default="0"))
    sets = ", ".join(f"{c} = (SELECT u.{c} FROM key_usage u WHERE u.id = api_keys.id)" for c in MOVED)
    op.execute(f"UPDATE api_keys SET {sets} WHERE id IN (SELECT id FROM key_usage)")
    op.create_index("ix_api_keys_resets", "api_keys", ["resets_at_us", "id"])
    op.drop_index("ix_key_usage_resets", table_name="key_usage")
    op.drop_table("key_usage")
