"""A priced item's cost in-process: `python -m bench.priced` (not part of `make bench`).

SpendBatch-shaped work without the network: each item is a SpendRequest
(built beforehand) taken through what the server does with it, checked and
made an op as UsageServicer.SpendBatch does (server/usage/grpc.py), applied
by a LedgerWriter on a fresh database (4 submit_many calls of 100 at a
time; a SQLite file, or with BENCH_WRITER_DB=postgresql a PostgreSQL
database, as bench/writer.py's), and answered into a SpendBatchResponse.
Two of them live side by side in one process, by amount and priced by usage
(`api.calls`, 10 calls: 1 millicredit, as bench/run.py's priced rows), and
their measured windows alternate; printed: CPU per item of each (medians) and the median of the
windows' ratios. Under callgrind, instructions per item are the
deterministic measure on a shared host: with BENCH_PRICED_CALLGRIND=1 the
measured windows alone are instrumented (callgrind_control turns it on and
off; the interpreter itself must run under valgrind, not a shell shim):

  BENCH_PRICED_CALLGRIND=1 BENCH_PRICED_ONLY=priced BENCH_PRICED_WINDOWS=1 BENCH_PRICED_ROUNDS=3 \
    valgrind --tool=callgrind --instr-atstart=no .venv/bin/python -m bench.priced

  BENCH_PRICED_ACCOUNTS=1000  BENCH_PRICED_ROUNDS=60  BENCH_PRICED_WINDOWS=5  BENCH_PRICED_CALLGRIND=0
  BENCH_PRICED_ONLY=plain|priced (one side alone, for callgrind)  BENCH_PRICED_PROFILE=0 (1: cProfile of the priced side, or of the only one)
  BENCH_PRICED_UNARY=0 (1: each item a unary Spend, as UsageServicer.Spend takes it: checked, applied
  on its own `spend` call, the 400 of a round in flight together, and answered with its own SpendResponse)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from flownexus.billing.v1 import usage_pb2

from bench.writer import FreshWriter, alternate_windows, measured, server_collector
from server.ledger.ops import SpendResult
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
CALLGRIND = os.environ.get("BENCH_PRICED_CALLGRIND", "") not in ("", "0")
UNARY = os.environ.get("BENCH_PRICED_UNARY", "") not in ("", "0")


class Side(FreshWriter):
    """One writer and its usage service on a fresh database (bench/writer.py's)."""

    def __init__(self, accounts: int, priced: bool) -> None:
        super().__init__()
        self.accounts, self.priced = accounts, priced
        self.shown: dict[int, Any] = {}  # UsageServicer's, for unary answers
        self.pricing = PricingService(
            self.writer, PricingRepository(self.db.reader), Clock(), card=rate_card_file(""), lead_seconds=0
        )
        self.usage = UsageService(self.writer, None, Settings(), None, pricing=self.pricing)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return "priced by usage" if self.priced else "by amount"

    async def start(self) -> None:
        await self.open()
        await self.pricing.start()
        for _ in range(WARMUP_ROUNDS):
            await self.round(self.requests())

    async def stop(self) -> None:
        await self.pricing.stop()
        await self.close()

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
        usage_of = self.usage.usage_of
        for item in items:
            ops.append(self.usage.spend_op(SERVICE, **usage_grpc._spend_fields(item, usage_of)))
        response = usage_pb2.SpendBatchResponse()
        results = await self.usage.spend_batch(ops)
        assert all(isinstance(r, SpendResult) for r in results), results
        usage_grpc.results_into(response, results, {})
        return response

    async def unary(self, item: usage_pb2.SpendRequest) -> usage_pb2.SpendResponse:
        """UsageServicer.Spend's work (no org)."""
        result = await self.usage.spend(self.usage.spend_op(SERVICE, **usage_grpc._spend_fields(item, self.usage.usage_of)))
        return usage_grpc._spend_response(result, self.shown)

    async def round(self, calls: list[list[usage_pb2.SpendRequest]]) -> int:
        if UNARY:
            await asyncio.gather(*(self.unary(item) for items in calls for item in items))
        else:
            await asyncio.gather(*(self.call(items) for items in calls))
        return CALLS_IN_FLIGHT * ITEMS_PER_CALL

    async def window(self, rounds: int, profile: Any = None) -> float:
        """CPU seconds per item over `rounds` rounds (requests built outside)."""
        work = [self.requests() for _ in range(rounds)]
        with measured(profile, CALLGRIND):
            cpu = time.process_time()
            items = 0
            for calls in work:
                items += await self.round(calls)
            cpu = time.process_time() - cpu
        return cpu / items


async def compare(accounts: int, rounds: int, windows: int, only: str, profile: Any) -> None:
    sides = [Side(accounts, priced) for priced in (False, True) if only in ("", "priced" if priced else "plain")]
    for s in sides:
        await s.start()
    seen = await alternate_windows(sides, windows, lambda s: s.window(rounds, profile if s.priced or only else None))
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
    server_collector()
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
