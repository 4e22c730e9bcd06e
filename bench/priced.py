"""A priced item's cost in-process: `python -m bench.priced` (not part of `make bench`).

SpendBatch-shaped work without the network: each item is a SpendRequest
(built beforehand) taken through what the server does with it, checked and
made an op as UsageServicer.SpendBatch does (server/usage/grpc.py), applied
by a LedgerWriter on a fresh SQLite file (4 submit_many calls of 100 at a
time), and answered into a SpendBatchResponse. Two of them live side by side
in one process, by amount and priced by usage (`api.calls`, 10 calls: 1
millicredit, as bench/run.py's priced rows), and their measured windows
alternate; printed: CPU per item of each (medians) and the median of the
windows' ratios. Under callgrind (BENCH_PRICED_WINDOWS=1, a few rounds),
instructions per item are the deterministic measure on a shared host:

  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='bench.priced*' ...

  BENCH_PRICED_ACCOUNTS=1000  BENCH_PRICED_ROUNDS=60  BENCH_PRICED_WINDOWS=5
  BENCH_PRICED_ONLY=plain|priced (one side alone, for callgrind)  BENCH_PRICED_PROFILE=0 (1: cProfile of the priced side, or of the only one)
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flownexus.billing.v1 import usage_pb2

from server.db.engine import Database
from server.ledger.ops import SpendResult
from server.ledger.tx import TierPolicy
from server.ledger.writer import LedgerWriter
from server.platform.auth import Principal, Role
from server.platform.clock import Clock
from server.platform.config import Settings
from server.pricing.repository import PricingRepository
from server.pricing.service import PricingService, rate_card_file
from server.usage import grpc as usage_grpc
from server.usage.service import UsageService

ITEMS_PER_CALL = 100
CALLS_IN_FLIGHT = 4
WARMUP_ROUNDS = 20
SERVICE = Principal("bench", Role.SERVICE)


class Side:
    """One writer and its usage service on a fresh SQLite file."""

    def __init__(self, accounts: int, priced: bool) -> None:
        self.accounts, self.priced = accounts, priced
        self.tmp = tempfile.TemporaryDirectory()
        self.db = Database(f"sqlite+aiosqlite:///{Path(self.tmp.name) / 'priced.db'}")
        self.writer = LedgerWriter(self.db, Clock(), TierPolicy({"free": 10**12}), max_batch=256)
        self.pricing = PricingService(
            self.writer, PricingRepository(self.db.reader), Clock(), card=rate_card_file(""), lead_seconds=0
        )
        self.usage = UsageService(self.writer, None, Settings(), None, pricing=self.pricing)  # type: ignore[arg-type]
        self.rng = random.Random(1)
        self.n = 0

    @property
    def name(self) -> str:
        return "priced by usage" if self.priced else "by amount"

    async def start(self) -> None:
        await self.db.migrate()
        await self.writer.start()
        await self.pricing.start()
        for _ in range(WARMUP_ROUNDS):
            await self.round(self.requests())

    async def stop(self) -> None:
        await self.pricing.stop()
        await self.writer.stop()
        await self.db.writer.dispose()
        await self.db.reader.dispose()
        self.tmp.cleanup()

    def requests(self) -> list[list[usage_pb2.SpendRequest]]:
        calls = []
        for _ in range(CALLS_IN_FLIGHT):
            items = []
            for _ in range(ITEMS_PER_CALL):
                self.n += 1
                r = usage_pb2.SpendRequest(
                    user_id=f"u{self.rng.randrange(self.accounts)}", request_id=f"r{self.n}", category="bench")
                if self.priced:
                    r.usage.meter = "api.calls"
                    r.usage.quantity = 10
                else:
                    r.amount_millicredits = 1
                items.append(r)
            calls.append(items)
        return calls

    async def call(self, items: list[usage_pb2.SpendRequest]) -> usage_pb2.SpendBatchResponse:
        """UsageServicer.SpendBatch's per-item work (one part of 100, no org)."""
        ops: list[Any] = []
        for item in items:
            ops.append(self.usage.spend_op(SERVICE, **usage_grpc._spend_fields(item)))
        response = usage_pb2.SpendBatchResponse()
        results = await self.usage.spend_batch(ops)
        assert all(isinstance(r, SpendResult) for r in results), results
        usage_grpc.results_into(response, results, {})
        return response

    async def round(self, calls: list[list[usage_pb2.SpendRequest]]) -> int:
        await asyncio.gather(*(self.call(items) for items in calls))
        return CALLS_IN_FLIGHT * ITEMS_PER_CALL

    async def window(self, rounds: int, profile: Any = None) -> float:
        """CPU seconds per item over `rounds` rounds (requests built outside)."""
        work = [self.requests() for _ in range(rounds)]
        if profile is not None:
            profile.enable()
        cpu = time.process_time()
        items = 0
        for calls in work:
            items += await measured_round(self, calls)
        cpu = time.process_time() - cpu
        if profile is not None:
            profile.disable()
        return cpu / items


async def measured_round(side: Side, calls: list[list[usage_pb2.SpendRequest]]) -> int:
    """The part callgrind counts (--toggle-collect='bench.priced*measured_round*')."""
    return await side.round(calls)


async def compare(accounts: int, rounds: int, windows: int, only: str, profile: Any) -> None:
    sides = [Side(accounts, priced) for priced in (False, True) if only in ("", "priced" if priced else "plain")]
    for s in sides:
        await s.start()
    seen: list[list[float]] = []
    for _ in range(windows):
        seen.append([await s.window(rounds, profile if s.priced or only else None) for s in sides])
    for s in sides:
        await s.stop()
    for i, s in enumerate(sides):
        print(f"{accounts} accounts, {s.name}: {1e6 * statistics.median(w[i] for w in seen):.1f} us of CPU per item "
              f"(median of {windows} windows)")
    if len(sides) == 2:
        ratios = [p / a for a, p in seen]
        print(f"{accounts} accounts: priced/plain {statistics.median(ratios):.2f}x CPU per item "
              f"({', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


def main() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)  # the server's (App.serve_forever)
    rounds = int(os.environ.get("BENCH_PRICED_ROUNDS", 60))
    windows = int(os.environ.get("BENCH_PRICED_WINDOWS", 5))
    profile = None
    if os.environ.get("BENCH_PRICED_PROFILE", "") not in ("", "0"):
        import cProfile

        profile = cProfile.Profile()
    accounts = int(os.environ.get("BENCH_PRICED_ACCOUNTS", 1000))
    asyncio.run(compare(accounts, max(rounds // windows, 1), windows, os.environ.get("BENCH_PRICED_ONLY", ""), profile))
    if profile is not None:
        import pstats

        pstats.Stats(profile).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
