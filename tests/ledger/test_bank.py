"""Jepsen-style bank test through the real gRPC server, on SQLite and PostgreSQL.

Many concurrent clients do random Spend (with and without a publisher revenue
share; in one run mostly as SpendBatch calls of 1 to 50 items),
Reserve/Capture/Release and AwardCredits. A checker runs alongside and
audits live snapshots; at the end every acknowledged operation must be in the
ledger with its amount, every refused one must have left no trace, and the
balances must match a model built only from the acknowledgements.

Short by default; `make soak` (BILLING_SOAK=1) runs it for 10 minutes in all.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, common_pb2, earnings_pb2, usage_pb2
from sqlalchemy import func, select, text

from server.db.schema import accounts, idempotency, transfers
from server.ledger import keys
from server.ledger.model import SYSTEM_EARNINGS, SYSTEM_HOLDS, SYSTEM_REVENUE
from tests.harness import WAIT, Running, auth, error_info

FREE = 100_000
SHARE_PERCENT = 70
SERVICE = "bank"
NO_LIMITS = {
    "award_rate_per_second": 0,
    "award_daily_limit_challenge": 0,
    "award_daily_limit_app_usage": 0,
    "award_daily_limit_referral": 0,
}


@dataclass
class Log:
    """The client side's knowledge: what was acknowledged and what was refused."""

    acked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # transfer key -> (kind, transfer id, amount)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (method, request_id)
    balance: dict[str, int] = field(default_factory=lambda: defaultdict(lambda: FREE))
    pending: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    awarded: int = 0
    revenue: int = 0  # spends + captures - revenue shares
    counts: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    anomalies: list[str] = field(default_factory=list)


def key(method: str, rid: str) -> str:
    return keys.request_transfer(keys.idempotency("service", SERVICE, method, rid))


def spend_request(rng: random.Random, users: list[str], user: str, rid: str) -> tuple[usage_pb2.SpendRequest, str]:
    """A random Spend (30 % with a revenue share) and its publisher ("" for none)."""
    share = rng.random() < 0.3
    pub = rng.choice([u for u in users if u != user]) if share else ""
    req = usage_pb2.SpendRequest(
        user_id=user, amount_millicredits=rng.randint(1, 20_000), request_id=rid, category="bank",
        app_id="app-bank" if share else "", publisher_user_id=pub,
    )
    return req, pub


def spent(log: Log, req: usage_pb2.SpendRequest, r: usage_pb2.SpendResponse) -> None:
    """An acknowledged Spend, in the model."""
    amount, user, pub = req.amount_millicredits, req.user_id, req.publisher_user_id
    log.acked[key("Spend", req.request_id)] = ("spend", r.transaction.id, amount)
    log.balance[user] -= amount
    log.revenue += amount
    if pub and amount * SHARE_PERCENT // 100 > 0:
        log.balance[pub] += amount * SHARE_PERCENT // 100
        log.revenue -= amount * SHARE_PERCENT // 100
    if r.credits_millicredits < 0:
        log.anomalies.append(f"{req.request_id}: spend acknowledged a negative balance {r.credits_millicredits}")


async def spend_batch(server: Running, log: Log, rng: random.Random, users: list[str], rid: str) -> None:
    """1 to 50 spends in one SpendBatch; each item acknowledged or refused on its own."""
    items = [spend_request(rng, users, rng.choice(users), f"{rid}.{j}")[0] for j in range(rng.randint(1, 50))]
    r = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=auth(SERVICE, "service"))
    for req, result in zip(items, r.results, strict=True):
        if result.HasField("response"):
            spent(log, req, result.response)
            log.counts["SpendBatch:ok"] += 1
        else:
            if result.error.reason != "INSUFFICIENT_CREDITS":
                log.anomalies.append(f"{req.request_id} SpendBatch item: unexpected {result.error}")
            log.refused.append(("Spend", req.request_id))
            log.counts["SpendBatch:refused"] += 1


def covered(log: Log, batches: float) -> bool:
    """Whether the run has seen every outcome the test asserts on: a spend
    acknowledged and one refused, a capture, a release and a live audit."""
    spends = "SpendBatch" if batches else "Spend"
    c = log.counts
    return (
        c[f"{spends}:ok"] > 0 and c[f"{spends}:refused"] + c["Reserve:refused"] > 0
        and c["Capture:ok"] > 0 and c["Release:ok"] > 0 and log.checks > 0
    )


def running(log: Log, stop_at: float, batches: float) -> bool:
    """At least until `stop_at`; then on until `covered`, up to `WAIT` more
    seconds: on a slow host the same mix needs longer to drain a wallet."""
    now = time.monotonic()
    return now < stop_at or (now < stop_at + WAIT and not covered(log, batches))


async def client(
    server: Running, log: Log, users: list[str], n: int, seed: int, stop_at: float, *, batches: float = 0.0
) -> None:
    """`batches`: the share of the Spends that are SpendBatch calls instead."""
    rng = random.Random(seed)
    md = auth(SERVICE, "service")
    holds: list[tuple[str, str, int]] = []  # this client's active holds: (hold id, user, amount)
    i = 0
    while running(log, stop_at, batches):
        i += 1
        rid = f"c{n}-{i}"
        user = rng.choice(users)
        roll = rng.random()
        try:
            if roll < 0.40 and rng.random() < batches:
                method = "SpendBatch"
                await spend_batch(server, log, rng, users, rid)
                continue
            if roll < 0.40:
                req, _ = spend_request(rng, users, user, rid)
                method = "Spend"
                spent(log, req, await server.s.usage.Spend(req, metadata=md))
            elif roll < 0.60:
                amount = rng.randint(1, 20_000)
                method = "Reserve"
                r2 = await server.s.usage.Reserve(
                    usage_pb2.ReserveRequest(user_id=user, amount_millicredits=amount, request_id=rid), metadata=md
                )
                log.acked[key(method, rid)] = ("hold", "", amount)
                holds.append((r2.hold.id, user, amount))
                log.balance[user] -= amount
                log.pending[user] += amount
            elif roll < 0.85 and holds:
                hold_id, owner, held = holds.pop(rng.randrange(len(holds)))
                if rng.random() < 0.6:
                    cap = rng.randint(0, held)
                    share = rng.random() < 0.3
                    pub = rng.choice([u for u in users if u != owner]) if share else ""
                    method = "Capture"
                    r3 = await server.s.usage.Capture(
                        usage_pb2.CaptureRequest(
                            hold_id=hold_id, amount_millicredits=cap, request_id=rid,
                            app_id="app-bank" if share else "", publisher_user_id=pub,
                        ),
                        metadata=md,
                    )
                    if cap:
                        log.acked[key(method, rid)] = ("hold_capture", r3.transaction.id, cap)
                    log.balance[owner] += held - cap
                    log.pending[owner] -= held
                    log.revenue += cap
                    if share and cap * SHARE_PERCENT // 100 > 0:
                        log.balance[pub] += cap * SHARE_PERCENT // 100
                        log.revenue -= cap * SHARE_PERCENT // 100
                else:
                    method = "Release"
                    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold_id, request_id=rid), metadata=md)
                    log.acked[key(method, rid)] = ("hold_release", "", held)
                    log.balance[owner] += held
                    log.pending[owner] -= held
            else:
                amount = rng.randint(1, 30_000)
                method = "AwardCredits"
                r4 = await server.s.earnings.AwardCredits(
                    earnings_pb2.AwardCreditsRequest(
                        user_id=user, amount_millicredits=amount, source=common_pb2.EARNING_SOURCE_CHALLENGE,
                        source_ref=rid, request_id=rid, reason="bank test",
                    ),
                    metadata=md,
                )
                log.acked[keys.award(user, "challenge", rid)] = ("award", r4.transaction.id, amount)
                log.balance[user] += amount
                log.awarded += amount
            log.counts[f"{method}:ok"] += 1
        except grpc.aio.AioRpcError as exc:
            reason = error_info(exc).reason
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or reason != "INSUFFICIENT_CREDITS":
                log.anomalies.append(f"{rid} {method}: unexpected {exc.code()} {reason} {exc.details()}")
            log.refused.append((method, rid))
            log.counts[f"{method}:refused"] += 1


async def checker(server: Running, log: Log, users: list[str], done: asyncio.Event) -> None:
    """Live audits while the clients run: a full `verify` snapshot, the zero
    sum, no wallet below zero, and each GetBalance sane."""
    assert server.app is not None
    rng = random.Random(7)
    while not done.is_set():
        report = await server.audit()
        log.anomalies.extend(f"live verify: {p}" for p in report.problems)
        async with server.read() as conn:
            total, lowest = (
                await conn.execute(
                    select(func.sum(accounts.c.balance), func.min(accounts.c.balance).filter(accounts.c.kind == "wallet"))
                )
            ).one()
        if total != 0:
            log.anomalies.append(f"live: accounts sum to {total}")
        if lowest is not None and lowest < 0:
            log.anomalies.append(f"live: a wallet is at {lowest}")
        user = rng.choice(users)
        b = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id=user), metadata=auth(SERVICE, "service"))
        if b.credits_millicredits < 0 or b.pending_millicredits < 0:
            log.anomalies.append(f"live: {user} credits {b.credits_millicredits} pending {b.pending_millicredits}")
        if sum(lot.remaining_millicredits for lot in b.lots) != max(b.credits_millicredits, 0):
            log.anomalies.append(f"live: {user} lots do not add up to the balance")
        log.checks += 1
        await asyncio.sleep(0.05)


async def final_checks(server: Running, log: Log, users: list[str]) -> None:
    assert server.app is not None
    report = await server.audit()
    assert report.ok, report.render()
    md = auth(SERVICE, "service")
    for user in users:
        b = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id=user), metadata=md)
        assert (b.credits_millicredits, b.pending_millicredits) == (log.balance[user], log.pending[user]), user
    async with server.read() as conn:
        bal = dict((await conn.execute(select(accounts.c.id, accounts.c.balance))).all())
        rows = (await conn.execute(select(transfers.c.key, transfers.c.kind, transfers.c.id, transfers.c.amount))).all()
        idem_keys = {k for (k,) in (await conn.execute(select(idempotency.c.key))).all()}
        n_allowances = (await conn.execute(text("SELECT count(*) FROM transfers WHERE kind='allowance_grant'"))).scalar_one()
    # conservation, system accounts included
    assert sum(bal.values()) == 0
    assert bal.get(SYSTEM_EARNINGS, 0) == -log.awarded
    assert bal.get(SYSTEM_HOLDS, 0) == sum(log.pending.values())
    assert bal.get(SYSTEM_REVENUE, 0) == log.revenue
    assert n_allowances == len(users)
    # every acknowledged operation is present, once, with its amount
    by_key = {k: (kind, tid, amount) for k, kind, tid, amount in rows}
    for k, (kind, tid, amount) in log.acked.items():
        assert k in by_key, f"acknowledged {k} is missing from the ledger"
        got_kind, got_id, got_amount = by_key[k]
        assert (got_kind, got_amount) == (kind, amount), k
        assert tid in ("", str(got_id)), k
    # no refused operation left a trace
    written = set(by_key)
    for method, rid in log.refused:
        assert key(method, rid) not in written and keys.revenue_share(key(method, rid)) not in written, rid
        assert keys.idempotency("service", SERVICE, method, rid) not in idem_keys, rid


async def run_bank(url: str, clock, seconds: float, *, clients: int = 16, n_users: int = 6, seed: int = 1, batches: float = 0.0) -> Log:  # type: ignore[no-untyped-def]
    server = Running(url, clock, **NO_LIMITS)
    await server.start()
    log = Log()
    users = [f"acct{i}" for i in range(n_users)]
    try:
        for u in users:  # open the wallets (free allowance) before the race
            await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id=u), metadata=auth(SERVICE, "service"))
        done = asyncio.Event()
        stop_at = time.monotonic() + seconds
        check = asyncio.create_task(checker(server, log, users, done))
        await asyncio.gather(*(client(server, log, users, n, seed * 1000 + n, stop_at, batches=batches) for n in range(clients)))
        done.set()
        await check
        assert not log.anomalies, log.anomalies[:10]
        await final_checks(server, log, users)
    finally:
        await server.stop()
    ops = sum(log.counts.values())
    took = time.monotonic() - stop_at + seconds
    summary = (
        f"bank[{url.split(':', 1)[0]}]: {ops} operations in {took:.0f}s ({dict(sorted(log.counts.items()))}), "
        f"{log.checks} live audits, {len(log.anomalies)} discrepancies"
    )
    print("\n" + summary)
    assert covered(log, batches), f"not every outcome was seen: {summary}"
    return log


async def test_bank(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    await run_bank(db_url, clock, seconds=5)


async def test_bank_under_spend_batch_load(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    """The same invariants with most Spends sent as SpendBatch calls of 1 to 50
    items, racing the holds, captures and awards of the other clients."""
    await run_bank(db_url, clock, seconds=5, batches=0.8, seed=3)


@pytest.mark.slow
async def test_bank_soak(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    seconds = float(os.environ.get("BILLING_BANK_SECONDS", "300"))  # per database: 10 minutes in all
    await run_bank(db_url, clock, seconds=seconds, clients=32, n_users=10, seed=2)
