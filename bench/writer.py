"""The ledger writer alone: `python -m bench.writer` (not part of `make bench`).

Applies SpendBatch-shaped work straight to a LedgerWriter on a fresh SQLite
file, no gRPC: 4 submit_many calls of 100 Spends at a time, each Spend of 1
millicredit by a random one of BENCH_WRITER_ACCOUNTS wallets (default 1,000;
1 for the hot account). Prints spends/s and the process's CPU per spend;
with BENCH_WRITER_KEYS=1 it runs each case twice in the same process, plain
and with every Spend through a key with budgets (one key per wallet: the hot
account's one key, or 1,000 keys), so the CPU a key adds is read from one run;
with BENCH_WRITER_EVENTS=1 it compares, the same way, the writer with the
events domain's ledger extension (the outbox and its balance alerts) and
without it, both with refill's per-batch read of the wallets' configs (which
the alerts' defaults share in the server); with BENCH_WRITER_SQL=1 also the time of each batch statement per row, which
is how "Where a batched item's time goes" in bench/README.md splits the
database's share.

  BENCH_WRITER_ACCOUNTS=1000  BENCH_WRITER_ROUNDS=100  BENCH_WRITER_ITEMS=100  BENCH_WRITER_SQL=0
  BENCH_WRITER_KEYS=0  BENCH_WRITER_EVENTS=0  BENCH_WRITER_PROFILE=0 (1: cProfile of the keyed
  or the outbox runs)
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.db import batchsql
from server.db.engine import Database
from server.events.repository import ALERT_TABLES
from server.events.service import EventsService
from server.keys import repository as keys_repo
from server.keys.budgets import KeyBudgets, refused_events
from server.keys.models import BudgetLimit, Window, budgets_json
from server.ledger.model import wallet_id
from server.ledger.ops import Call, Idempotency, Spend
from server.ledger.tx import LedgerTx, TierPolicy
from server.ledger.writer import LedgerWriter
from server.platform.clock import Clock
from server.platform.config import Settings
from server.refill import repository as refill_repo

ITEMS_PER_CALL = int(os.environ.get("BENCH_WRITER_ITEMS", 100))  # 8: batches of 32, as per-call Spend makes
CALLS_IN_FLIGHT = 4
WARMUP_ROUNDS = 30

# SQL text (its start) -> [seconds, rows]
_SQL_TIME: collections.defaultdict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])


def _time_statements() -> None:
    """Wrap the batch's statement runners to add up their time per statement."""
    fetch, many = batchsql.BatchSql._sqlite_fetch, batchsql.BatchSql._many

    async def timed_fetch(self: batchsql.BatchSql, sql: str, args: Sequence[Any]) -> list[Any]:
        began = time.perf_counter()
        rows = await fetch(self, sql, args)
        entry = _SQL_TIME[sql[:60]]
        entry[0] += time.perf_counter() - began
        entry[1] += len(args)
        return rows

    async def timed_many(self: batchsql.BatchSql, sql: str, params: list[tuple[Any, ...]]) -> None:
        began = time.perf_counter()
        await many(self, sql, params)
        entry = _SQL_TIME[sql[:60]]
        entry[0] += time.perf_counter() - began
        entry[1] += len(params)

    batchsql.BatchSql._sqlite_fetch = timed_fetch  # type: ignore[method-assign]
    batchsql.BatchSql._many = timed_many  # type: ignore[method-assign]


# Budgets no bench spend reaches: every window checked and counted, none refuses.
BENCH_BUDGETS = budgets_json([BudgetLimit(w, 10**15) for w in Window])


async def _make_keys(writer: LedgerWriter, accounts: int) -> None:
    """One key per wallet, written as CreateKey writes it."""
    for i in range(accounts):
        user = f"u{i}"

        async def apply(tx: Any, user: str = user, i: int = i) -> None:
            await tx.wallet(user)
            keys_repo.insert_key(tx, {
                "id": f"key_{i:032x}", "user_id": user, "label": "bench", "secret_hash": f"{i:064x}",
                "secret_prefix": "fnk_bench", "budgets": BENCH_BUDGETS, "categories": "[]", "max_spend": 0,
                "expires_at_us": 0, "revoked_at_us": 0, "created_by": "bench", "created_at_us": tx.now_us,
            })

        await writer.submit(Call(fn=apply, accounts={wallet_id(user)}))


async def _refill_read(tx: LedgerTx, ops: list[Any]) -> None:
    """What refill's trigger reads in every batch (the server runs it before the events' hook)."""
    await refill_repo.due_configs(tx, sorted(tx.wallet_balances()), tx.now_us)


def _with_events(db: Database, writer: LedgerWriter) -> None:
    events = EventsService(Settings(), db, writer, writer.clock, refill_repo.alert_thresholds,
                           lambda user: 100_000)  # the free tier's allowance: a default alert at 10 credits
    writer.before_flush += [_refill_read, events.before_flush]
    writer.wallet_tables += ALERT_TABLES  # as the server registers the extension


async def run(
    accounts: int, rounds: int, *, keyed: bool = False, events: bool | None = None, profile: Any = None
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'writer.db'}")
        await db.migrate()
        writer = LedgerWriter(db, Clock(), TierPolicy({"free": 10**12}), max_batch=256)
        if keyed:
            writer.guard = KeyBudgets()
            writer.before_flush.append(refused_events)
        if events is not None:
            if events:
                _with_events(db, writer)
            else:
                writer.before_flush.append(_refill_read)
        await writer.start()
        if keyed:
            await _make_keys(writer, accounts)
        rng = random.Random(1)
        n = 0

        async def one_round() -> None:
            nonlocal n
            calls = []
            for _ in range(CALLS_IN_FLIGHT):
                ops = []
                for _ in range(ITEMS_PER_CALL):
                    n += 1
                    who = rng.randrange(accounts)
                    ops.append(Spend(
                        user_id=f"u{who}", amount=1, category="bench",
                        idempotency=Idempotency.of("service", "bench", "Spend", f"r{n}", "f" * 64),
                        charged_by="service/bench", key_id=f"key_{who:032x}" if keyed else "",
                    ))
                calls.append(writer.submit_many(ops))
            await asyncio.gather(*calls)

        for _ in range(WARMUP_ROUNDS):  # wallets created, tables grown
            await one_round()
        _SQL_TIME.clear()
        if profile is not None:
            profile.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await one_round()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profile is not None:
            profile.disable()
        await writer.stop()
        await db.writer.dispose()
        await db.reader.dispose()
    spends = rounds * CALLS_IN_FLIGHT * ITEMS_PER_CALL
    how = f"{accounts} keys" if keyed else "no key" if events is None else "outbox" if events else "no outbox"
    print(f"{accounts} accounts, {how}: {spends / wall:,.0f} spends/s, {1e6 * cpu / spends:.1f} us of CPU per spend")
    for sql, (seconds, rows) in sorted(_SQL_TIME.items(), key=lambda kv: -kv[1][0]):
        print(f"  {1e6 * seconds / spends:6.2f} us per spend  {1e6 * seconds / max(rows, 1):6.2f} us per row  {sql}")
    _SQL_TIME.clear()
    return cpu / spends


async def compare(rounds: int, profile: Any) -> None:
    """Plain and keyed, alternating in one process (the host is shared: CPU
    time of one run is the comparable measure)."""
    for accounts in (1, 1000):
        plain = await run(accounts, rounds)
        keyed = await run(accounts, rounds, keyed=True, profile=profile)
        again = await run(accounts, rounds)
        base = (plain + again) / 2
        print(f"  -> {accounts} accounts: {1e6 * base:.1f} us plain, {1e6 * keyed:.1f} us through keys: "
              f"{keyed / base:.2f}x CPU per spend")


async def compare_events(rounds: int, profile: Any) -> None:
    """Without and with the events' ledger extension, alternating in one process."""
    for accounts in (1, 1000):
        plain = await run(accounts, rounds, events=False)
        outbox = await run(accounts, rounds, events=True, profile=profile)
        again = await run(accounts, rounds, events=False)
        base = (plain + again) / 2
        print(f"  -> {accounts} accounts: {1e6 * base:.1f} us without the outbox, {1e6 * outbox:.1f} us with it: "
              f"{outbox / base:.2f}x CPU per spend")


def main() -> None:
    if os.environ.get("BENCH_WRITER_SQL", "") not in ("", "0"):
        _time_statements()
    rounds = int(os.environ.get("BENCH_WRITER_ROUNDS", 100))
    if os.environ.get("BENCH_WRITER_EVENTS", "") not in ("", "0"):
        profile = None
        if os.environ.get("BENCH_WRITER_PROFILE", "") not in ("", "0"):
            import cProfile
            import pstats

            profile = cProfile.Profile()
        asyncio.run(compare_events(rounds, profile))
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    if os.environ.get("BENCH_WRITER_KEYS", "") not in ("", "0"):
        profile = None
        if os.environ.get("BENCH_WRITER_PROFILE", "") not in ("", "0"):
            import cProfile
            import pstats

            profile = cProfile.Profile()
        asyncio.run(compare(rounds, profile))
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    asyncio.run(run(int(os.environ.get("BENCH_WRITER_ACCOUNTS", 1000)), rounds))


if __name__ == "__main__":
    main()
