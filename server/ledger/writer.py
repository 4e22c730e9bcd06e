"""Group commit: one writer task applies queued operations in batches.

Concurrent requests share one transaction and one durable commit; each
operation succeeds or fails on its own, and no caller hears back before the
commit that holds its effect is durable.

Callers take turns: each caller (role/subject; the service's own jobs are one
more) has its own queue, in order, and a batch takes one operation from each
caller in turn. A caller with thousands of spends queued (a SpendBatch of
1,000, a recorder's backlog) fills what the others leave free, and another
caller's Spend waits for about one batch, not for that backlog.

A batch holds the event loop while it applies (only the commit's fsync or
round trip leaves it), so its length is what another caller's operation
waits for. A caller alone fills whole batches (max_batch: the most items per
commit). While other callers are about (one submitted in the last
ACTIVE_SECONDS), one caller places at most `shared_ops` operations in a
batch: its backlog goes out in short batches, and an operation of someone
else, arriving at any moment, waits for one short batch rather than a full one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from server.db.batchsql import BatchSql
from server.db.engine import AsyncConnection, Database, is_retryable, is_unique_violation
from server.ledger.model import BalanceEvent
from server.ledger.ops import Op
from server.ledger.quota import StoredQuota
from server.ledger.tx import LedgerTx, MemberGuard, Row, SpendGuard, TierPolicy
from server.platform import errors
from server.platform.auth import Principal, Role, current_principal
from server.platform.clock import Clock
from server.platform.deadline import call_deadline, expired_error

log = logging.getLogger(__name__)

# A caller is about for this long after its last submit (as in fair shares).
ACTIVE_SECONDS = 1.0
# Operations one caller may place in a batch while others are about
# (measured: an honest Spend's p99 under a SpendBatch(1,000) flood follows the
# batch's length; at 32 a batch holds the loop ~3 ms on SQLite).
SHARED_OPS = 32

BatchHook = Callable[[LedgerTx, list[Op]], Awaitable[None]]
AuditHook = Callable[[LedgerTx, Principal, Op, list[Row]], None]


class _Refused(Exception):
    def __init__(self, error: errors.DomainError) -> None:
        self.error = error


@dataclass
class _Item:
    op: Op
    future: asyncio.Future[Any]
    deadline: float | None = None  # time.monotonic() when the caller stops waiting
    by: Principal | None = None  # the caller whose request this is
    over_quota: errors.DomainError | None = None  # answered if a repeat, else refused
    outcome: Any = None
    error: BaseException | None = None
    replayed: bool = False


@dataclass
class WriterStats:
    batches: int = 0
    operations: int = 0
    retries: int = 0  # batches run again after a lock conflict or a lost connection
    rereads: int = 0  # batches read again after another replica took a unique key
    expired: int = 0  # operations dropped unapplied: their caller's deadline passed in the queue
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class LedgerWriter:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        tiers: TierPolicy,
        *,
        max_batch: int = 256,
        publish: Callable[[list[BalanceEvent]], None] | None = None,
        after_batch: Callable[[int, float], None] | None = None,
        quota: StoredQuota | None = None,
        shared_ops: int = SHARED_OPS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.tiers = tiers
        self.max_batch = max_batch
        self.shared_ops = max(1, min(shared_ops, max_batch))
        self.publish = publish or (lambda events: None)
        self.after_batch = after_batch
        self.quota = quota or StoredQuota(0, 0)
        # Domains add work to every batch (e.g. refill jobs in the same transaction).
        self.before_flush: list[BatchHook] = []
        # Tables keyed by user_id that the hooks read in every batch (LedgerTx.wallet_tables).
        self.wallet_tables: list[Table] = []
        # Stages the audit row of a change made with an admin token (the admin domain's).
        self.admin_audit: AuditHook | None = None
        # Scoped keys' budgets, used inside the batch (Registry.spend_guard).
        self.guard = SpendGuard()
        # Org members' budgets, used inside the batch (Registry.member_guard).
        self.member_guard = MemberGuard()
        self.stats = WriterStats()
        # Each caller's queued operations, in order, and the callers in turn.
        self._lanes: dict[str, collections.deque[_Item]] = {}
        self._turns: collections.deque[str] = collections.deque()
        # When each caller last submitted: who is about.
        self._seen: dict[str, float] = {}
        self._swept = 0.0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task:
            await self._task

    async def submit(self, op: Op) -> Any:
        if self._closing:
            raise errors.Unavailable("server is shutting down", reason="SHUTTING_DOWN")
        who = current_principal.get(None)
        over = self.quota.check(who, 1, self.clock.now_us()) if op.idempotency is not None else None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Exclusive operations record what another system already did (a Stripe
        # session, a subscription): they are applied whatever the deadline.
        self._lane().append(_Item(op, fut, None if op.exclusive else call_deadline.get(), who, over))
        self._wakeup.set()
        # A cancelled caller cancels only its wait (the future): the queued write
        # is applied all the same, whole or not at all, and a retry with the
        # same request_id finds it. (No shield: one future per call is enough.)
        # Only a deadline that passes before the batch starts drops the write.
        return await fut

    async def submit_many(self, ops: Sequence[Op]) -> list[Any]:
        """Queue several operations at once, in order (they join the same
        group-commit batches, up to max_batch each) and wait for all of them.
        Each entry of the result is the operation's outcome or, when it was
        refused or failed, its exception: each succeeds or fails on its own."""
        if self._closing:
            raise errors.Unavailable("server is shutting down", reason="SHUTTING_DOWN")
        loop = asyncio.get_running_loop()
        deadline = call_deadline.get()
        who = current_principal.get(None)
        over = self.quota.check(who, sum(op.idempotency is not None for op in ops), self.clock.now_us())
        items = [_Item(op, loop.create_future(), None if op.exclusive else deadline, who, over) for op in ops]
        self._lane().extend(items)
        self._wakeup.set()
        # As for submit: cancelling the wait leaves the queued writes to be applied.
        return await asyncio.gather(*(item.future for item in items), return_exceptions=True)

    def _lane(self) -> collections.deque[_Item]:
        """The queue of the calling principal (a request's), or of the service's own jobs."""
        who = current_principal.get(None)
        scope = who.scope if who is not None else ""
        self._seen[scope] = time.monotonic()
        lane = self._lanes.get(scope)
        if lane is None:
            lane = self._lanes[scope] = collections.deque()
            self._turns.append(scope)
        return lane

    async def _run(self) -> None:
        while True:
            if not self._turns:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # One loop turn first: requests already read off the sockets join
            # this batch instead of the next (measured: batches ~40% larger and
            # Spend ~25% faster under load; at low load it costs microseconds).
            await asyncio.sleep(0)
            batch = self._take_batch()
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except Exception:  # never let the writer die; fail the batch instead
                log.exception("ledger batch failed")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(errors.Unavailable("ledger unavailable, retry with the same request_id"))

    def _per_caller(self, now: float) -> int:
        """The most operations one caller may place in the next batch: all of
        it when no one else is about, else `shared_ops`."""
        seen = self._seen
        if now - self._swept > ACTIVE_SECONDS:
            self._swept = now
            for scope in [s for s, at in seen.items() if at < now - ACTIVE_SECONDS]:
                del seen[scope]
        if len(seen) > 1 or len(self._lanes) > 1:
            return self.shared_ops
        return self.max_batch

    def _take_batch(self) -> list[_Item]:
        """The next batch: one exclusive operation, or up to max_batch others,
        one from each caller in turn, at most `_per_caller` from one. An
        operation whose caller's deadline has passed is answered
        DEADLINE_EXCEEDED here and never applied: its caller has already
        given up, and a retry with the same request_id applies it once."""
        lanes, turns, now = self._lanes, self._turns, time.monotonic()
        batch: list[_Item] = []
        # Callers whose next operation is exclusive: it opens the next batch.
        waiting: list[str] = []
        # Callers that placed their most in this batch: their turn comes back in the next.
        full: list[str] = []
        per_caller = self._per_caller(now)
        taken: dict[str, int] = {}
        while turns and len(batch) < self.max_batch:
            scope = turns.popleft()
            lane = lanes[scope]
            while lane and (deadline := lane[0].deadline) is not None and deadline <= now:
                item = lane.popleft()
                self.stats.expired += 1
                if not item.future.done():
                    item.future.set_exception(expired_error())
            if not lane:
                del lanes[scope]
                continue
            exclusive = lane[0].op.exclusive
            if exclusive and batch:
                waiting.append(scope)
                continue
            batch.append(lane.popleft())
            n = taken[scope] = taken.get(scope, 0) + 1
            if not lane:
                del lanes[scope]
            elif n < per_caller:
                turns.append(scope)
            else:
                full.append(scope)
            if exclusive:
                break
        turns.extendleft(reversed(waiting))
        turns.extend(full)
        return batch

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        events: list[BalanceEvent] = []
        after_commit: list[Callable[[], None]] = []
        reread = False
        for attempt in range(4):
            # No await in an except block (compiled: see _apply_once).
            failed: Exception | None = None
            try:
                events, after_commit = await self._apply(batch)
            except Exception as exc:
                failed = exc
            if failed is None:
                break
            if attempt < 3 and is_retryable(failed):
                self.stats.retries += 1
                log.info("batch retry after conflict: %s", type(failed).__name__)
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            if not reread and is_unique_violation(failed):
                # Keys cannot collide (server/ledger/keys.py) and every derived
                # key is checked before use, so this is another replica that
                # committed the same grant first. Read again, once: the
                # operation that needs it is then refused on its own.
                reread = True
                self.stats.rereads += 1
                log.warning("batch read again after a unique key was taken concurrently")
                continue
            if len(batch) == 1:
                raise failed
            # Isolate the culprit: apply each operation in its own transaction.
            log.warning("batch of %d failed (%s); applying one by one", len(batch), type(failed).__name__)
            events = []
            for item in batch:
                try:
                    await self._run_batch([item])
                except Exception as one:
                    log.exception("operation failed")
                    item.error = errors.Unavailable("ledger unavailable, retry with the same request_id")
                    if not item.future.done():
                        item.future.set_exception(item.error)
                    del one
            return
        self.stats.batches += 1
        self.stats.operations += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        for item in batch:
            if item.future.done():
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.outcome)
        if events:
            self.publish(events)
        for callback in after_commit:
            callback()
        if self.after_batch:
            self.after_batch(len(batch), time.perf_counter() - started)

    async def _apply(self, batch: list[_Item]) -> tuple[list[BalanceEvent], list[Callable[[], None]]]:
        try:
            return await self._apply_once(batch)
        except _Refused as refused:
            # An exclusive operation may have written rows directly: the whole
            # transaction was rolled back, and the caller hears why.
            batch[0].outcome, batch[0].error = None, refused.error
            return [], []

    async def _apply_once(self, batch: list[_Item]) -> tuple[list[BalanceEvent], list[Callable[[], None]]]:
        now = self.clock.now_us()
        # Neither `async with` nor an await in an except block: compiled, that
        # frees an exception still in use (scripts/build_core.py refuses it).
        conn = await self.db.writer.connect()
        failed: BaseException | None = None
        try:
            trans = await conn.begin()
            tx = await self._apply_in(conn, batch, now)
            await trans.commit()
        except BaseException as exc:
            failed = exc
        await conn.close()  # rolls back the transaction when it is still open
        if failed is not None:
            raise failed
        for item in batch:  # committed: what each caller stored counts against its quota
            if item.error is None and not item.replayed and item.op.idempotency is not None:
                self.quota.stored(item.by, now)
        return tx.events, tx.after_commit

    async def _apply_in(self, conn: AsyncConnection, batch: list[_Item], now: int) -> LedgerTx:
        """Apply the batch in the open transaction `conn`; its LedgerTx, flushed."""
        sql = await BatchSql.open(conn, is_sqlite=self.db.is_sqlite)
        tx = LedgerTx(conn, sql, now_us=now, is_sqlite=self.db.is_sqlite, tiers=self.tiers, guard=self.guard,
                      member_guard=self.member_guard, wallet_tables=self.wallet_tables)
        accounts: set[str] = set()
        holds: set[str] = set()
        tkeys: set[str] = set()
        rkeys: list[str] = []
        # The keys the operations name (not those of holds, read below) come
        # with the wallets' users, in their round trip on PostgreSQL; each
        # operation's keys are worked out once.
        named: list[tuple[str, int]] = []
        by_hold: list[Op] = []
        for item in batch:
            op = item.op
            accounts |= op.account_ids()
            hids = op.hold_ids()
            if hids:
                holds |= hids
                by_hold.append(op)
            else:
                named += op.budget_keys(tx)
            tkeys |= op.transfer_keys()
            if op.idempotency:
                rkeys.append(op.idempotency.key)
        extra = self.guard.prefetch(tx, named) if named else []
        found = await tx.load(accounts, holds, rkeys, tkeys, extra)
        if extra:
            self.guard.prefetched(tx, found)
        # After the accounts' locks (and the holds, which name their keys):
        # the keys' rows, locked in sorted order.
        budgets = named
        for op in by_hold:
            budgets += op.budget_keys(tx)
        if budgets:
            await self.guard.load(tx, budgets)
        for item in batch:
            item.outcome, item.error, item.replayed = None, None, False
            op = item.op
            idem = op.idempotency
            if idem is not None:
                try:
                    response = idem.replay(tx.stored)
                except errors.DomainError as exc:
                    item.error = exc
                    continue
                if response is not None:
                    item.outcome, item.replayed = op.decode(response), True
                    continue
            if item.over_quota is not None:
                item.error = item.over_quota
                continue
            mark = tx.mark()
            made = len(tx.new_transfers)
            try:
                item.outcome = await op.apply(tx)
                if self.admin_audit and item.by and item.by.role == Role.ADMIN and not op.audits_itself:
                    # Whatever service an admin's change goes through, its audit row commits with it.
                    self.admin_audit(tx, item.by, op, tx.new_transfers[made:])
                if idem:
                    tx.remember(idem.key, idem.fingerprint, op.encode(item.outcome))
            except errors.DomainError as exc:
                if op.exclusive:
                    raise _Refused(exc) from None
                tx.rollback_to(mark)
                item.error = exc
        for hook in self.before_flush:
            await hook(tx, [item.op for item in batch if item.error is None and not item.replayed])
        await self.guard.write(tx)
        await tx.flush()
        return tx
