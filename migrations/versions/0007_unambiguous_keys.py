"""unambiguous keys: re-key the transfers whose keys were built from a user id;
an index on lot expiry for the roll-over job

Monthly and Enterprise allowance grants, allowance expiries and awards were
keyed by joining a user id and other parts with `:`, which a user id may
contain. They are re-keyed to the encoding of server/ledger/keys.py, so that
the exactly-once checks of this release find them. Each row's own accounts
and columns give its parts exactly: nothing is parsed out of the old key, and
a key that is not exactly what its row would have made is left as it is.
Amounts, accounts and balances are not touched.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from server.ledger import keys

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_transfers = sa.table(
    "transfers",
    sa.column("id", sa.BigInteger),
    sa.column("key", sa.String),
    sa.column("kind", sa.String),
    sa.column("debit_account", sa.String),
    sa.column("credit_account", sa.String),
    sa.column("category", sa.String),
    sa.column("ref", sa.String),
)


def _user(account: str) -> str | None:
    return account[len("wallet:"):] if account.startswith("wallet:") else None


def _new_key(row: sa.Row) -> str | None:
    key, kind = row.key, row.kind
    if kind == "allowance_grant" and (uid := _user(row.credit_account)) is not None:
        for old_prefix, build in ((f"allowance:upgrade:{uid}:", keys.allowance_upgrade), (f"allowance:{uid}:", keys.allowance)):
            rest = key[len(old_prefix):]
            if key.startswith(old_prefix) and rest.isdigit():
                return build(uid, int(rest))
    if kind == "allowance_expiry" and (uid := _user(row.debit_account)) is not None:
        prefix = f"allowance-expiry:{uid}:"
        parts = key[len(prefix):].split(":") if key.startswith(prefix) else []
        if parts and all(p.isdigit() for p in parts) and len(parts) <= 2:
            return keys.allowance_expiry(uid, int(parts[0]), int(parts[1]) if len(parts) == 2 else 1)
    if kind == "award" and (uid := _user(row.credit_account)) is not None and row.ref:
        if key == f"award:{uid}:{row.category}:{row.ref}":
            return keys.award(uid, row.category, row.ref)
    return None


def upgrade() -> None:
    op.create_index("ix_lots_expiry", "lots", ["expires_at_us"])
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_transfers).where(_transfers.c.kind.in_(("allowance_grant", "allowance_expiry", "award")))
    ).all()
    for row in rows:
        new = _new_key(row)
        if new is not None and new != row.key:
            conn.execute(sa.update(_transfers).where(_transfers.c.id == row.id).values(key=new))


def downgrade() -> None:
    op.drop_index("ix_lots_expiry", table_name="lots")
    # The old keys cannot be told apart again; an older release reading these
    # rows only misses its exactly-once checks for periods already granted.
    pass
