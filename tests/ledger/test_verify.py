"""`python -m server verify` can fail: each check is proven by corrupting a copy
of a real database with direct SQL and watching the audit (in process and
through the CLI, which must exit non-zero) report that exact discrepancy."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from flownexus.billing.v1 import (
    common_pb2,
    earnings_pb2,
    events_pb2,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
)

from server.db.engine import Database
from server.ledger.verify import verify
from tests.conftest import _require_postgres
from tests.harness import PG_DSN, Running, auth, database

ROOT = Path(__file__).resolve().parents[2]


def run_cli(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BILLING_DATABASE_URL": url, "BILLING_LOG_JSON": "false"}
    return subprocess.run(
        [sys.executable, "-m", "server", "verify"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def audit(url: str) -> list[str]:
    db = Database(url)
    try:
        return (await verify(db.reader)).problems
    finally:
        await db.dispose()


async def populate(server) -> str:
    """Some history: a balance alert and the event of its crossing, spends, an
    award, a settled hold and an active one. Returns an active hold id."""
    svc = auth("engine", "service")
    await server.s.events.SetBalanceAlerts(
        events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[95_000], request_id="al"), metadata=auth("alice"))
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=7_000, request_id="s1"), metadata=auth("alice"))
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id="alice", amount_millicredits=20_000, source=common_pb2.EARNING_SOURCE_CHALLENGE,
            source_ref="c1", request_id="a1",
        ),
        metadata=svc,
    )
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="bob", amount_millicredits=10_000, request_id="s2", app_id="app1", publisher_user_id="alice"),
        metadata=svc,
    )
    h = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=3_000, request_id="h1"), metadata=auth("bob"))
    await server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=h.hold.id, amount_millicredits=1_000, request_id="c1"), metadata=auth("bob"))
    active = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=4_000, request_id="h2"), metadata=auth("alice"))
    # A second rate card version, scheduled.
    await pricing_pb2_grpc.PricingServiceStub(server.s.channel).PublishRateCard(pricing_pb2.PublishRateCardRequest(
        meters=[pricing_pb2.Meter(name="api.calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])],
        request_id="rc2"), metadata=auth("ops", "admin"))
    return active.hold.id


def _fill_row(con: sqlite3.Connection, table: str, values: dict[str, object]) -> None:
    """Insert into `table`, giving every other NOT NULL column a neutral value
    (so this keeps working when the payments table grows columns)."""
    cols = con.execute(f"PRAGMA table_info({table})").fetchall()
    row = dict(values)
    for _cid, name, ctype, notnull, default, _pk in cols:
        if name not in row and notnull and default is None:
            row[name] = 0 if any(t in ctype.upper() for t in ("INT", "BOOL")) else ""
    names = ",".join(f'"{k}"' for k in row)
    con.execute(f"INSERT INTO {table} ({names}) VALUES ({','.join('?' * len(row))})", list(row.values()))


def paid_without_grant(con: sqlite3.Connection) -> None:
    if not con.execute("SELECT name FROM sqlite_master WHERE name='payments'").fetchone():
        con.execute("CREATE TABLE payments (id TEXT PRIMARY KEY, status TEXT NOT NULL)")
    _fill_row(con, "payments", {"id": "pay_corrupt", "status": "paid", "user_id": "alice"} if _has_col(con, "payments", "user_id") else {"id": "pay_corrupt", "status": "paid"})


def _has_col(con: sqlite3.Connection, table: str, col: str) -> bool:
    return any(r[1] == col for r in con.execute(f"PRAGMA table_info({table})"))


def negative_wallet(con: sqlite3.Connection) -> None:
    """A consistent overdraft: the transfer, both balances and the lots agree,
    only the rule 'no wallet below zero without overdraft' is broken."""
    bal = con.execute("SELECT balance FROM accounts WHERE id='wallet:bob'").fetchone()[0]
    amount = bal + 5
    top = con.execute("SELECT max(id) FROM transfers").fetchone()[0]
    rev = con.execute("SELECT balance FROM accounts WHERE id='system:platform_revenue'").fetchone()[0]
    con.execute(
        "INSERT INTO transfers (id, key, debit_account, credit_account, amount, kind, description, category, ref, metadata,"
        " debit_balance_after, credit_balance_after, created_at_us) VALUES (?, 'corrupt:overdraft', 'wallet:bob',"
        " 'system:platform_revenue', ?, 'spend', '', '', '', '{}', -5, ?, 1)",
        (top + 1, amount, rev + amount),
    )
    con.execute("UPDATE accounts SET balance=-5, spent_total=spent_total+? WHERE id='wallet:bob'", (amount,))
    con.execute("UPDATE accounts SET balance=balance+? WHERE id='system:platform_revenue'", (amount,))
    con.execute("UPDATE lots SET remaining=0 WHERE account_id='wallet:bob'")


def negative_lot(con: sqlite3.Connection) -> None:
    con.execute("PRAGMA ignore_check_constraints=ON")
    con.execute("UPDATE lots SET remaining=-1 WHERE account_id='wallet:alice' AND kind='earned'")


def _the_event(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT id FROM events WHERE user_id='alice' AND type='balance.low'").fetchone()[0])


def _endpoint(con: sqlite3.Connection, endpoint_id: str) -> None:
    _fill_row(con, "webhook_endpoints", {"id": endpoint_id, "url": "https://hooks.example/x", "secret": "whsec_x",
                                         "status": "enabled", "cursor": 0})


def _delivery(con: sqlite3.Connection, endpoint_id: str, event_id: int, user: str = "alice") -> None:
    _fill_row(con, "webhook_deliveries", {"id": f"{endpoint_id}/{event_id}", "endpoint_id": endpoint_id,
                                          "event_id": event_id, "user_id": user, "status": "pending"})


def delivery_without_endpoint(con: sqlite3.Connection) -> None:
    _delivery(con, "we_gone", _the_event(con))


def pending_delivery_without_event(con: sqlite3.Connection) -> None:
    _endpoint(con, "we_ok")
    _delivery(con, "we_ok", 10_000)


def delivery_of_another_wallet(con: sqlite3.Connection) -> None:
    _endpoint(con, "we_ok")
    _delivery(con, "we_ok", _the_event(con), user="bob")


CORRUPTIONS: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    "cached_balance": (lambda c: c.execute("UPDATE accounts SET balance=balance+1 WHERE id='wallet:alice'"), "cached balance"),
    "sum_not_zero": (lambda c: c.execute("UPDATE accounts SET balance=balance+1 WHERE id='system:earnings'"), "accounts sum to 1"),
    "deleted_transfer": (lambda c: c.execute("DELETE FROM transfers WHERE kind='spend' AND debit_account='wallet:alice'"), "!= sum of transfers"),
    "spent_total": (lambda c: c.execute("UPDATE accounts SET spent_total=spent_total+3 WHERE id='wallet:bob'"), "spent_total"),
    "earned_total": (lambda c: c.execute("UPDATE accounts SET earned_total=0 WHERE id='wallet:alice'"), "earned_total"),
    "negative_wallet": (negative_wallet, "negative balance -5"),
    "lots_sum": (lambda c: c.execute("UPDATE lots SET remaining=remaining+1 WHERE account_id='wallet:bob'"), "lots sum"),
    "negative_lot": (negative_lot, "negative lot -1"),
    "pending": (lambda c: c.execute("UPDATE accounts SET pending=pending+1 WHERE id='wallet:alice'"), "pending"),
    "hold_without_transfer": (
        lambda c: c.execute(
            "INSERT INTO holds (id, account_id, user_id, amount, captured, status, lots, category, description, expires_at_us, created_at_us)"
            " VALUES ('hold_orphan', 'wallet:alice', 'alice', 5, 0, 'released', '[]', '', '', 0, 0)"
        ),
        "hold hold_orphan: no matching hold transfer",
    ),
    "transfer_without_hold": (lambda c: c.execute("DELETE FROM holds WHERE status='captured'"), "has no hold record"),
    "paid_without_grant": (paid_without_grant, "payment pay_corrupt (paid) has 0 grant transfers"),
    "event_without_wallet": (lambda c: c.execute("UPDATE events SET user_id='ghost'"), "its wallet wallet:ghost does not exist"),
    "event_past_counter": (lambda c: c.execute("UPDATE event_counter SET last_id=0"), "the event counter gave out 0"),
    "delivery_without_endpoint": (delivery_without_endpoint, "its endpoint does not exist"),
    "pending_delivery_without_event": (pending_delivery_without_event, "we_ok/10000: pending, but its event does not exist"),
    "delivery_of_another_wallet": (delivery_of_another_wallet, "its wallet is not its event's"),
    "rate_card_invalid": (lambda c: c.execute(
        "UPDATE rate_card_versions SET card=replace(card, '\"price\":2000', '\"price\":0')"),
        "rate card version 1: not a valid card (rate card refused: meters.agent.deployments.price"),
    "rate_card_hash": (lambda c: c.execute("UPDATE rate_card_versions SET card_sha256='0'"),
                       "rate card version 1: card or card_sha256 is not its canonical form"),
    "rate_card_not_canonical": (lambda c: c.execute("UPDATE rate_card_versions SET card=' ' || card"),
                                "rate card version 1: card or card_sha256 is not its canonical form"),
    "rate_card_gap": (lambda c: c.execute("UPDATE rate_card_versions SET version=3 WHERE version=2"),
                      "rate card version 3: expected version 2"),
    "rate_card_effective_before_published": (
        lambda c: c.execute("UPDATE rate_card_versions SET effective_at_us=published_at_us-1 WHERE version=2"),
        "rate card version 2: effective at"),
}


async def golden_copy(tmp_path: Path, clock, fill: Callable[[Running], Any]) -> Path:  # type: ignore[no-untyped-def]
    """A real SQLite database after the traffic `fill` makes (server stopped, WAL checkpointed), copied."""
    async with database("sqlite", tmp_path) as url:
        running = Running(url, clock)
        await running.start()
        try:
            await fill(running)
        finally:
            await running.stop()
        path = Path(url.split("///", 1)[1])
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = tmp_path / "golden.db"
        shutil.copy(path, copy)
        return copy


@pytest.fixture
async def golden(tmp_path: Path, clock) -> Path:  # type: ignore[no-untyped-def]
    """A real database after some traffic (server stopped, WAL checkpointed)."""
    return await golden_copy(tmp_path, clock, populate)


async def test_clean_database_passes(golden: Path) -> None:
    url = f"sqlite+aiosqlite:///{golden}"
    assert await audit(url) == []
    done = run_cli(url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger OK" in done.stdout
    assert "checked transfers:" in done.stdout and "checked holds: 2" in done.stdout
    assert "checked events: 2" in done.stdout  # balance.low, then balance.recovered (the award)
    assert "checked rate_card_versions: 2" in done.stdout


@pytest.mark.parametrize("name", list(CORRUPTIONS))
async def test_each_check_can_fail(golden: Path, tmp_path: Path, name: str) -> None:
    corrupt, expected = CORRUPTIONS[name]
    path = tmp_path / f"{name}.db"
    shutil.copy(golden, path)
    con = sqlite3.connect(path)
    corrupt(con)
    con.commit()
    con.close()
    url = f"sqlite+aiosqlite:///{path}"
    problems = await audit(url)
    assert any(expected in p for p in problems), f"{name}: expected {expected!r} in {problems}"
    if name in ("cached_balance", "hold_without_transfer", "paid_without_grant", "event_without_wallet"):
        done = run_cli(url)
        assert done.returncode == 1, done.stdout + done.stderr
        assert expected in done.stdout and "PROBLEM:" in done.stdout


async def test_postgres_corruption_detected(tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    """Same audit on PostgreSQL: clean passes; a cached balance and an orphaned hold are caught."""
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        running = Running(url, clock)
        await running.start()
        try:
            hold_id = await populate(running)
        finally:
            await running.stop()
        assert await audit(url) == []
        done = run_cli(url)
        assert done.returncode == 0, done.stdout + done.stderr
        dsn = PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE accounts SET balance=balance+1 WHERE id='wallet:alice'")
            await conn.execute("DELETE FROM holds WHERE id=$1", hold_id)
            await conn.execute("UPDATE rate_card_versions SET version=5 WHERE version=2")
        finally:
            await conn.close()
        problems = await audit(url)
        assert any("cached balance" in p for p in problems), problems
        assert any(f"hold transfer {hold_id} has no hold record" in p for p in problems), problems
        assert any("rate card version 5: expected version 2" in p for p in problems), problems
        done = run_cli(url)
        assert done.returncode == 1 and "accounts sum to 1" in done.stdout, done.stdout
