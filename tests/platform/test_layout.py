"""The layout rules that a grep can hold: every statement lives in a
repository (or the ledger and the database layer, which own the batch), and
auto-refill and tiers reach Stripe only through payments' public API."""

from __future__ import annotations

import re
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"

# What builds or runs a statement: SQLAlchemy, a statement run on a
# connection or a batch, staged rows, or SQL written out.
SQL = re.compile(
    r"^\s*(from sqlalchemy\b|import sqlalchemy\b)"
    r"|(?<![.\w])(?<!def )(select|insert|update|delete|text)\("
    r"|\.(execute|fetch|fetch_one|fetch_scalar|read_in|rows)\("
    r"|[\"'](SELECT|INSERT|UPDATE|DELETE|WITH)\s",
    re.MULTILINE,
)
# Payments' internals, which auto-refill and tiers never import: they reach
# Stripe, the saved card and the payment rows only through PaymentsService.
PAYMENTS_INSIDE = re.compile(
    r"^\s*(from|import) server\.payments(\.| import )(gateway|repository|webhooks|customers)\b", re.MULTILINE
)


def _owns_statements(path: Path) -> bool:
    rel = path.relative_to(SERVER).as_posix()
    return path.name == "repository.py" or rel.startswith(("ledger/", "db/"))


def _sources() -> list[Path]:
    return sorted(p for p in SERVER.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_statement_is_in_a_repository() -> None:
    found = [
        f"{p.relative_to(SERVER.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for p in _sources() if not _owns_statements(p)
        for text in [p.read_text()]
        for m in SQL.finditer(text)
    ]
    assert found == [], "SQL outside repository.py, server/ledger/ and server/db/:\n" + "\n".join(found)


def test_refill_and_tiers_use_only_the_public_payments_api() -> None:
    found = [
        f"{p.relative_to(SERVER.parent)}: {m.group(0)}"
        for p in _sources() if p.relative_to(SERVER).parts[0] in ("refill", "tiers")
        for m in PAYMENTS_INSIDE.finditer(p.read_text())
    ]
    assert found == [], "\n".join(found)


def test_the_rules_catch_what_they_are_about() -> None:
    assert SQL.search("    q = select(users.c.id)")
    assert SQL.search('await conn.execute("SELECT 1")')
    assert SQL.search("from sqlalchemy import select")
    assert SQL.search("tx.rows(admin_actions).insert({")
    assert not SQL.search("values.update(a=1)")
    assert not SQL.search("validation.text(value, field='x')")
    assert not SQL.search("def text(value: str) -> str:")
    assert PAYMENTS_INSIDE.search("from server.payments import repository as payrepo")
    assert PAYMENTS_INSIDE.search("from server.payments.webhooks import record_invoice")
    assert PAYMENTS_INSIDE.search("from server.payments.gateway import StripeGateway")
    assert PAYMENTS_INSIDE.search("import server.payments.customers")
    assert not PAYMENTS_INSIDE.search("from server.payments.models import SavedCard")
    assert not PAYMENTS_INSIDE.search("from server.payments.service import PaymentsService")
