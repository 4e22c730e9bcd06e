"""key resets: api_keys.resets_at_us, the end of the earliest window in which
the key has use recorded (0: none), indexed, so the budget reset job reads
only the keys that are due instead of scanning every key; filled in for
the keys already there. And transfers lose ix_transfers_key_id: no read
uses it (history and reports filter a wallet's transfers by key through the
wallet's own indexes), and with many keys every spend through a key
inserted into it at a random place (about a tenth of the writer's CPU per
spend with 1,000 keys)

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

from server.platform.clock import window_bounds

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_keys = sa.table(
    "api_keys",
    sa.column("id", sa.String),
    sa.column("resets_at_us", sa.BigInteger),
    *(sa.column(c, sa.BigInteger) for c in (
        "hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used",
    )),
)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("resets_at_us", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_api_keys_resets", "api_keys", ["resets_at_us", "id"])
    op.drop_index("ix_transfers_key_id", table_name="transfers")
    conn = op.get_bind()
    t = _keys
    used = sa.or_(t.c.hour_used > 0, t.c.day_used > 0, t.c.month_used > 0)
    for row in conn.execute(sa.select(t).where(used)).all():
        ends = [
            window_bounds(w, getattr(row, f"{w}_start_us"))[1]
            for w in ("hour", "day", "month")
            if getattr(row, f"{w}_used") > 0 and getattr(row, f"{w}_start_us") > 0
        ]
        if ends:
            conn.execute(sa.update(t).where(t.c.id == row.id).values(resets_at_us=min(ends)))


def downgrade() -> None:
    op.create_index("ix_transfers_key_id", "transfers", ["key_id", "id"])
    op.drop_index("ix_api_keys_resets", table_name="api_keys")
    op.drop_column("api_keys", "resets_at_us")
