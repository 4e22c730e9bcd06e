"""Background jobs: hold expiry, and the rollover of allowance and promotional lots. Each job is an
idempotent ledger operation re-checked under the row locks, so replicas that
pick the same rows never apply them twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server.ledger.ops import EnsureWallet, ExpireHolds, PruneResponses
from server.ledger.repository import LedgerReader
from server.ledger.writer import LedgerWriter
from server.platform.clock import Clock

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[int]]


class Workers:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.jobs: dict[str, Job] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, job: Job) -> None:
        self.jobs[name] = job

    async def run_once(self) -> dict[str, int]:
        done = {}
        for name, job in self.jobs.items():
            try:
                done[name] = await job()
            except Exception:
                log.exception("background job failed", extra={"job": name})
                done[name] = -1
        return done

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                await self.run_once()

        self._task = asyncio.create_task(loop(), name="workers")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


@dataclass(frozen=True)
class Retention:
    """How long stored responses are kept, and the pruning job's bounds."""

    seconds: float
    batch: int = 1_000
    max_batches: int = 20


def ledger_jobs(
    workers: Workers, writer: LedgerWriter, reader: LedgerReader, clock: Clock, retention: Retention
) -> None:
    async def expire_holds() -> int:
        ids = await reader.expired_holds(clock.now_us())
        return await writer.submit(ExpireHolds(ids)) if ids else 0

    async def roll_over_allowances() -> int:
        users = await reader.users_due_rollover(clock.now_us())
        await asyncio.gather(*(writer.submit(EnsureWallet(u)) for u in users))
        return len(users)

    async def prune_responses() -> int:
        """Stored responses past the retention period, in bounded batches, each
        its own short writer turn, so that Spends queued meanwhile go first."""
        before = clock.now_us() - int(retention.seconds * 1_000_000)
        pruned = 0
        for _ in range(retention.max_batches):
            n: int = await writer.submit(PruneResponses(before, retention.batch))
            pruned += n
            if n < retention.batch:
                break
        return pruned

    workers.add("expire_holds", expire_holds)
    workers.add("roll_over_allowances", roll_over_allowances)
    workers.add("prune_responses", prune_responses)
