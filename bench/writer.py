"""The ledger writer alone: `python -m bench.writer` (not part of `make bench`).

Applies SpendBatch-shaped work straight to a LedgerWriter on a fresh SQLite
file, no gRPC: 4 submit_many calls of 100 Spends at a time, each Spend of 1
millicredit by a random one of BENCH_WRITER_ACCOUNTS wallets (default 1,000;
1 for the hot account). Prints spends/s and the process's CPU per spend;
with BENCH_WRITER_SQL=1 also the time of each batch statement per row, which
is how "Where a batched item's time goes" in bench/README.md splits the
database's share.

With BENCH_WRITER_KEYS=1 it compares plain spends with spends through a key
with budgets (one key per wallet: the hot account's one key, or 1,000 keys),
SpendBatch-shaped and unary-shaped (32 single spends at once, as the
per-call Spend row's callers): two writers live side by side in one process
and their measured windows alternate (BENCH_WRITER_WINDOWS of them, the
rounds shared out), so the CPU a key adds is the median ratio of windows
close in time, on a shared host.

With BENCH_WRITER_EVENTS=1 it compares, the same way, the writer with the
events domain's ledger extension (the outbox and its balance alerts) and
without it, both with refill's per-batch read of the wallets' configs (which
the alerts' defaults share in the server).

  BENCH_WRITER_ACCOUNTS=1000  BENCH_WRITER_ROUNDS=100  BENCH_WRITER_ITEMS=100  BENCH_WRITER_SQL=0
  BENCH_WRITER_KEYS=0  BENCH_WRITER_EVENTS=0  BENCH_WRITER_WINDOWS=5
  BENCH_WRITER_PROFILE=0 (1: cProfile of the keyed or the outbox windows)
  BENCH_WRITER_DB=sqlite (postgresql: a fresh database on BENCH_PG_DSN per writer)
  BENCH_WRITER_SHAPES=1-batch,1000-batch,1-unary,1000-unary (the compared shapes: accounts-how)
  BENCH_WRITER_ONLY=plain|keyed (one side alone, for callgrind; keyed: with keys, or with the outbox)
  BENCH_WRITER_CALLGRIND=0 (1: callgrind's instrumentation on the measured windows only)

Under callgrind, instructions per spend are the deterministic measure on a
shared host (the interpreter itself must run under valgrind):

  BENCH_WRITER_KEYS=1 BENCH_WRITER_CALLGRIND=1 BENCH_WRITER_ONLY=keyed BENCH_WRITER_SHAPES=1000-batch \
    BENCH_WRITER_WINDOWS=1 BENCH_WRITER_ROUNDS=3 \
    valgrind --tool=callgrind --instr-atstart=no .venv/bin/python -m bench.writer
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

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
# The unary shape: single spends at once, as the per-call Spend row's 32 callers.
UNARY_IN_FLIGHT = 32
WARMUP_ROUNDS = 30
ON_PG = os.environ.get("BENCH_WRITER_DB", "sqlite").startswith("postg")
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CALLGRIND = os.environ.get("BENCH_WRITER_CALLGRIND", "") not in ("", "0")
ONLY = os.environ.get("BENCH_WRITER_ONLY", "")
SHAPES = os.environ.get("BENCH_WRITER_SHAPES", "1-batch,1000-batch,1-unary,1000-unary").split(",")

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


async def _no_orgs(principal: Any, user_id: str, org_id: str, right: Any) -> str:
    raise AssertionError("the bench reads no org's events")


def _with_events(db: Database, writer: LedgerWriter) -> None:
    events = EventsService(Settings(), db, writer, writer.clock, refill_repo.alert_thresholds,
                           lambda user: 100_000,  # the free tier's allowance: a default alert at 10 credits
                           _no_orgs)
    writer.before_flush += [_refill_read, events.before_flush]
    writer.wallet_tables += ALERT_TABLES  # as the server registers the extension


class FreshWriter:
    """A LedgerWriter on a fresh database of its own: a SQLite file, or with
    BENCH_WRITER_DB=postgresql a new database on BENCH_PG_DSN, dropped at
    close (this bench's and bench/priced.py's)."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.pg_name = f"billing_writer_{uuid.uuid4().hex[:10]}" if ON_PG else ""
        self.db = Database(
            f"{PG_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{self.pg_name}" if ON_PG
            else f"sqlite+aiosqlite:///{Path(self.tmp.name) / 'writer.db'}"
        )
        self.writer = LedgerWriter(self.db, Clock(), TierPolicy({"free": 10**12}), max_batch=256)
        self.rng = random.Random(1)
        self.n = 0

    async def open(self) -> None:
        """The database made and migrated, the writer started."""
        if ON_PG:
            admin = await asyncpg.connect(PG_DSN)
            await admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            await admin.close()
        await self.db.migrate()
        await self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()
        await self.db.writer.dispose()
        await self.db.reader.dispose()
        self.tmp.cleanup()
        if ON_PG:
            admin = await asyncpg.connect(PG_DSN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            await admin.close()


async def alternate_windows(
    sides: Sequence[Any], windows: int, measure: Callable[[Any], Awaitable[Any]]
) -> list[list[Any]]:
    """`measure(side)` for each side in turn, `windows` times: the sides'
    windows alternate, so that each pair is close in time on a shared host.
    A list per window of the sides' results, in order."""
    seen = []
    for _ in range(windows):
        seen.append([await measure(s) for s in sides])
    return seen


class Bench(FreshWriter):
    """One writer on a fresh database, its wallets (and keys) made and warmed up."""

    def __init__(
        self, accounts: int, *, keyed: bool = False, unary: bool = False, events: bool | None = None
    ) -> None:
        super().__init__()
        self.accounts, self.keyed, self.unary, self.events = accounts, keyed, unary, events
        if keyed:
            self.writer.guard = KeyBudgets()
            self.writer.before_flush.append(refused_events)
        if events:
            _with_events(self.db, self.writer)
        elif events is not None:
            self.writer.before_flush.append(_refill_read)

    @property
    def name(self) -> str:
        how = f"{self.accounts} keys" if self.keyed else "no key" if self.events is None else (
            "outbox" if self.events else "no outbox")
        return f"{self.accounts} accounts, {'unary' if self.unary else 'batches'}, {how}"

    async def start(self) -> None:
        await self.open()
        if self.keyed:
            await _make_keys(self.writer, self.accounts)
        for _ in range(WARMUP_ROUNDS):  # wallets created, tables grown
            await self.round()

    def spend(self) -> Spend:
        self.n += 1
        who = self.rng.randrange(self.accounts)
        return Spend(
            user_id=f"u{who}", amount=1, category="bench",
            idempotency=Idempotency.of("service", "bench", "Spend", f"r{self.n}", "f" * 64),
            charged_by="service/bench", key_id=f"key_{who:032x}" if self.keyed else "",
        )

    async def round(self) -> int:
        """One round of spends: SpendBatch-shaped (CALLS_IN_FLIGHT calls of
        ITEMS_PER_CALL), or unary (UNARY_IN_FLIGHT single spends at once, as
        many rounds of them as make the same number of spends)."""
        if self.unary:
            for _ in range(CALLS_IN_FLIGHT * ITEMS_PER_CALL // UNARY_IN_FLIGHT):
                await asyncio.gather(*(self.writer.submit(self.spend()) for _ in range(UNARY_IN_FLIGHT)))
        else:
            await asyncio.gather(*(
                self.writer.submit_many([self.spend() for _ in range(ITEMS_PER_CALL)]) for _ in range(CALLS_IN_FLIGHT)
            ))
        return CALLS_IN_FLIGHT * ITEMS_PER_CALL // UNARY_IN_FLIGHT * UNARY_IN_FLIGHT if self.unary else (
            CALLS_IN_FLIGHT * ITEMS_PER_CALL)

    async def window(self, rounds: int, profile: Any = None) -> tuple[float, float]:
        """(spends per second, CPU seconds per spend) over `rounds` rounds."""
        with measured(profile, CALLGRIND):
            wall, cpu = time.perf_counter(), time.process_time()
            spends = 0
            for _ in range(rounds):
                spends += await self.round()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return spends / wall, cpu / spends


@contextlib.contextmanager
def measured(profile: Any, under_callgrind: bool) -> Iterator[None]:
    """A measured window (this bench's and bench/priced.py's): the profile, if
    any, and callgrind's instrumentation of this process, when asked
    (BENCH_WRITER_CALLGRIND=1, BENCH_PRICED_CALLGRIND=1), on around it only."""
    if profile is not None:
        profile.enable()
    _callgrind("on", under_callgrind)
    try:
        yield
    finally:
        _callgrind("off", under_callgrind)
        if profile is not None:
            profile.disable()


def _callgrind(state: str, on: bool) -> None:
    if on:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True)


def server_collector() -> None:
    """The server's collector settings (App.serve_forever): what is loaded is
    frozen, young objects are collected every 20,000 allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _print_sql(spends: int) -> None:
    for sql, (seconds, rows) in sorted(_SQL_TIME.items(), key=lambda kv: -kv[1][0]):
        print(f"  {1e6 * seconds / spends:6.2f} us per spend  {1e6 * seconds / max(rows, 1):6.2f} us per row  {sql}")
    _SQL_TIME.clear()


async def run(accounts: int, rounds: int) -> float:
    bench = Bench(accounts)
    await bench.start()
    _SQL_TIME.clear()
    rate, cpu = await bench.window(rounds)
    await bench.close()
    print(f"{bench.name}: {rate:,.0f} spends/s, {1e6 * cpu:.1f} us of CPU per spend")
    _print_sql(rounds * CALLS_IN_FLIGHT * ITEMS_PER_CALL)
    return cpu


async def compare(rounds: int, windows: int, profile: Any, *, events: bool = False) -> None:
    """Plain and keyed writers (or without and with the events' extension)
    side by side in one process, their measured windows alternating (the host
    is shared: CPU per spend, windows close in time, and the median of
    several, is what compares)."""
    for shape in SHAPES:
        accounts, unary = int(shape.split("-")[0]), shape.endswith("unary")
        if events:
            plain, keyed = Bench(accounts, unary=unary, events=False), Bench(accounts, unary=unary, events=True)
        else:
            plain, keyed = Bench(accounts, unary=unary), Bench(accounts, keyed=True, unary=unary)
        sides = [b for b, name in ((plain, "plain"), (keyed, "keyed")) if ONLY in ("", name)]
        for b in sides:
            await b.start()
        seen = await alternate_windows(
            sides, windows, lambda b: b.window(rounds, profile if b.keyed or b.events else None))
        for b in sides:
            await b.close()
        if len(sides) == 1:
            cpu = statistics.median(w[0][1] for w in seen)
            print(f"{sides[0].name}: {1e6 * cpu:.1f} us of CPU per spend (median of {windows})", flush=True)
            continue
        pairs = [(p[1], k[1]) for p, k in seen]
        p = statistics.median(p for p, _ in pairs)
        k = statistics.median(k for _, k in pairs)
        ratio = statistics.median(k / p for p, k in pairs)
        print(f"{keyed.name}: {1e6 * p:.1f} us without, {1e6 * k:.1f} us with it per spend (medians of {windows}); "
              f"{ratio:.2f}x CPU per spend ({', '.join(f'{k / p:.2f}' for p, k in pairs)})", flush=True)


def main() -> None:
    server_collector()
    if os.environ.get("BENCH_WRITER_SQL", "") not in ("", "0"):
        _time_statements()
    rounds = int(os.environ.get("BENCH_WRITER_ROUNDS", 100))
    events = os.environ.get("BENCH_WRITER_EVENTS", "") not in ("", "0")
    if events or os.environ.get("BENCH_WRITER_KEYS", "") not in ("", "0"):
        windows = int(os.environ.get("BENCH_WRITER_WINDOWS", 5))
        profile = None
        if os.environ.get("BENCH_WRITER_PROFILE", "") not in ("", "0"):
            import cProfile
            import pstats

            profile = cProfile.Profile()
        asyncio.run(compare(max(rounds // windows, 1), windows, profile, events=events))
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    asyncio.run(run(int(os.environ.get("BENCH_WRITER_ACCOUNTS", 1000)), rounds))


if __name__ == "__main__":
    main()
