"""old request keys: the idempotency records stored under the key encoding
before 0007 (`{role}/{subject}:{Method}:{request_id}`) move to the encoding
of server/ledger/keys.py, so the service looks up one key per request

The old form joins its parts with `:`, which a request_id may hold (and a
subject could, before subjects followed the grammar of user ids). A subject
that follows the grammar holds no `:`, so each old key has at most one
reading a caller can still send again:
- subject, method and request_id read exactly (the request_id holds no `:`):
  the record moves to its new key, response and all, and a retry replays it;
- the request_id holds `:` (another subject's request could have made the
  same string): the record becomes a tombstone under the one reading left
  (an empty response), so a retry is refused REQUEST_ID_EXPIRED: never
  applied twice, and never answered with another caller's response;
- the subject breaks the grammar (no token can carry it any more) or the key
  is not of the old form's shape: the record is deleted.
A record whose new key is already stored is deleted (the new one wins).

Revision ID: 0014
Revises: 0013
"""

import re

import sqlalchemy as sa
from alembic import op

from server.ledger import keys
from server.platform.ids import is_user_id

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ROLES = ("admin", "service", "user")
METHOD = re.compile(r"[A-Z][A-Za-z]*")

_idempotency = sa.table(
    "idempotency",
    sa.column("key", sa.String),
    sa.column("fingerprint", sa.String),
    sa.column("response", sa.LargeBinary),
    sa.column("created_at_us", sa.BigInteger),
)


def new_record(old_key: str, response: bytes) -> tuple[str, bytes] | None:
    """The key and response an old record moves to, or None to delete it."""
    role, _, rest = old_key.partition("/")
    subject, _, rest = rest.partition(":")
    method, _, request_id = rest.partition(":")
    if role not in ROLES or not is_user_id(subject) or not METHOD.fullmatch(method) or not request_id:
        return None
    return keys.idempotency(role, subject, method, request_id), (response if ":" not in request_id else b"")


def upgrade() -> None:
    conn = op.get_bind()
    t = _idempotency
    for role in ROLES:
        # A range on the key's index: `/` sorts just before `0`.
        rows = conn.execute(sa.select(t).where(t.c.key >= f"{role}/", t.c.key < f"{role}0")).all()
        for row in rows:
            moved = new_record(row.key, bytes(row.response))
            conn.execute(sa.delete(t).where(t.c.key == row.key))
            if moved is None:
                continue
            key, response = moved
            if conn.execute(sa.select(t.c.key).where(t.c.key == key)).first() is None:
                conn.execute(sa.insert(t).values(
                    key=key, fingerprint=row.fingerprint, response=response, created_at_us=row.created_at_us,
                ))


def downgrade() -> None:
    # Earlier releases look up the new encoding as well: nothing to undo.
    pass
