"""Fair share of the server among its callers (docs/fairness.md).

Caps alone let one caller inside them fill the event loop: a read answered
inline costs little in the servicer but a lot in gRPC around it, so a
hundred of them in flight put every other caller's call behind a hundred
others, and the attacker's own retries refused at once cost as much.

So each caller (role/subject) has its own queue, and each caller's calls are
paced to its share of a nominal capacity: `calls_per_second` times its weight
over the weights of the callers active in the last second (service tokens
weigh more: they carry every user's traffic). A caller alone has the whole
capacity; with twenty others, a twenty-first of it. A call's measured work
(rows examined, batch items, reported with `charge`) costs its caller more
calls' worth. A caller within its share is admitted at once, without a hop;
one past it waits in its queue, which costs nothing, so a caller looping on
calls is slowed to its share instead of being refused and retrying at once.

The nominal capacity is a ceiling, not what the server can do (that moves
2-3x between machines and with their load). What other callers feel is the
event loop's lag, and the ledger writer's queue: while more than a tenth of
the loop's lag samples are past `lag_target`, or the writer is busy more than WRITER_BUSY of the time
(an operation arriving then waits for the batch in progress), and more than
one caller is active, the capacity the shares divide is halved each window, down to
MIN_CALLS_PER_CALLER per active caller; once the lag is back under it, the
capacity grows back by a tenth a window. A caller alone keeps the whole
ceiling (no one to protect); a heavy caller among others is slowed until the
loop keeps up, while callers within their share never wait.

When too many calls wait in all, the heaviest caller (the longest queue) is
refused first: RESOURCE_EXHAUSTED SERVER_BUSY with a retry delay.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable

from server.platform import errors
from server.platform.auth import Principal

# Work one call's worth covers: rows examined, or batch items (an item
# written counts as WORK_PER_ITEM rows read: a SpendBatch item is the same
# ledger operation as a Spend call, and costs the ledger writer as much).
WORK_PER_CALL = 100
WORK_PER_ITEM = WORK_PER_CALL
# A read handed to a reader thread (SQLite's bulk reads): the loop and the
# thread trade the GIL, which costs the loop at least a call's worth.
WORK_PER_HOP = WORK_PER_CALL
# A read's round trip to PostgreSQL: sending it and decoding its answer cost
# the loop more than the call around it (CheckBalance serves 2.3x fewer calls
# a second on PostgreSQL than inline on SQLite), so it counts one call more.
WORK_PER_ROUND_TRIP = WORK_PER_CALL
# Calls of one caller running at once, per unit of its weight.
RUNNING_PER_WEIGHT = 4
# A caller is active for this long after its last call began.
ACTIVE_SECONDS = 1.0
RETRY_AFTER_MS = 100
# The loop's lag is sampled every LAG_TICK seconds and judged by its mean
# over each LAG_WINDOW.
LAG_TICK = 0.01
LAG_WINDOW = 0.1
# The capacity never falls below this many calls a second per active caller
# (honest callers make a few a second: they never wait for their share).
MIN_CALLS_PER_CALLER = 20.0
# The share of ticks past the lag target that makes a window lagging (the
# loop's p90 lag, not its mean: a long tail is what other callers' p99 meets).
LAGGING_TICKS = 0.1
# The share of time the ledger writer may spend in batches before the
# shares shrink (its durable commits are the one queue every write joins).
WRITER_BUSY = 0.5

call_work: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("call_work", default=None)
# The running call's place in the shares (set by the interceptor): see `pace`.
call_turns: contextvars.ContextVar[tuple[FairShare, Turns] | None] = contextvars.ContextVar("call_turns", default=None)


def charge(rows: int) -> None:
    """Adds measured work (rows examined) to the current call's cost."""
    work = call_work.get()
    if work is not None:
        work[0] += rows


async def pace(work: int) -> None:
    """For a call whose work is known before it is done, in parts (a
    SpendBatch's items): charges the next part to the caller's share now and
    waits until the share has covered what the caller used before it, so a
    large call's work goes out at the caller's pace instead of all at once.
    Always yields one turn of the event loop. Unpaced callers only yield."""
    place = call_turns.get()
    delay = place[0].charge_ahead(place[1], work) if place is not None else 0.0
    await asyncio.sleep(delay)


class Turns:
    """One caller's place: its queue, its calls running, and when its next
    call may begin (later the more it has used of its share)."""

    __slots__ = ("key", "last", "queue", "ready_at", "running", "timer", "weight")

    def __init__(self, key: str, weight: int) -> None:
        self.key = key
        self.weight = weight
        self.queue: deque[asyncio.Future[None]] = deque()
        self.ready_at = 0.0
        self.last = 0.0
        self.running = 0
        self.timer: asyncio.TimerHandle | None = None


class FairShare:
    def __init__(
        self, calls_per_second: float, user_weight: int, service_weight: int, max_waiting: int,
        *, now: Callable[[], float] = time.monotonic, lag_target: float = 0.0,
    ) -> None:
        self.calls_per_second = calls_per_second
        # What the shares divide: the ceiling, lowered while the loop lags.
        self.capacity = calls_per_second
        self.lag_target = lag_target
        self.user_weight = user_weight
        self.service_weight = service_weight
        self.max_waiting = max_waiting
        self.now = now
        self.waiting = 0
        self._callers: dict[str, Turns] = {}
        self._active_weight = 0
        self._swept = 0.0
        self._lag_timer: asyncio.TimerHandle | None = None
        self._lag_sum = 0  # samples past the target in this window
        self._lag_ticks = 0
        self._busy = 0.0

    def exempt(self, who: Principal) -> bool:
        """Service and admin calls are not paced when their weight is 0."""
        return who.privileged and self.service_weight == 0

    def take(self, who: Principal) -> tuple[Turns, asyncio.Future[None] | None]:
        """The caller's place, and None when the call may run now, else the
        future its turn completes."""
        now = self.now()
        if now - self._swept > ACTIVE_SECONDS / 4:
            self._sweep(now)
        key = who.scope
        t = self._callers.get(key)
        if t is None:
            t = self._callers[key] = Turns(key, self.service_weight if who.privileged else self.user_weight)
            self._active_weight += t.weight
            if self.lag_target > 0 and self._lag_timer is None:
                loop = asyncio.get_running_loop()
                self._lag_sum, self._lag_ticks, self._busy = 0, 0, 0.0
                self._lag_timer = loop.call_later(LAG_TICK, self._tick, loop.time() + LAG_TICK)
        if not t.queue and self._may_run(t, now):
            self._admit(t, now)
            return t, None
        if self.waiting >= self.max_waiting:
            self._refuse_heaviest(t)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.queue.append(fut)
        self.waiting += 1
        self._wake_later(t)
        return t, fut

    async def wait(self, t: Turns, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        except asyncio.CancelledError:
            if fut in t.queue:  # cancelled while waiting: it never ran
                t.queue.remove(fut)
                self.waiting -= 1
            elif not fut.cancelled():  # admitted, then cancelled before it ran
                self.leave(t, 0)
            raise

    def leave(self, t: Turns, work: int) -> None:
        t.running -= 1
        if work >= WORK_PER_CALL:
            t.ready_at += (work // WORK_PER_CALL) * self._interval(t)
        if t.queue:
            self._wake_later(t)

    def charge_ahead(self, t: Turns, work: int) -> float:
        """Charges `work` to a running call of `t` now; returns how long to
        wait before doing it (0 when the caller's share covers it already)."""
        now = self.now()
        start = max(t.ready_at, now)
        t.ready_at = start + work / WORK_PER_CALL * self._interval(t)
        return start - now

    def _interval(self, t: Turns) -> float:
        """One call's worth of this caller's share of the capacity."""
        return self._active_weight / (self.capacity * t.weight)

    def _may_run(self, t: Turns, now: float) -> bool:
        return t.ready_at <= now and t.running < t.weight * RUNNING_PER_WEIGHT

    def _admit(self, t: Turns, now: float) -> None:
        t.running += 1
        t.last = now
        t.ready_at = max(t.ready_at, now) + self._interval(t)

    def _wake_later(self, t: Turns) -> None:
        if t.timer is None and t.running < t.weight * RUNNING_PER_WEIGHT:
            t.timer = asyncio.get_running_loop().call_at(t.ready_at, self._wake, t)

    def _wake(self, t: Turns) -> None:
        t.timer = None
        now = self.now()
        while t.queue and self._may_run(t, now):
            fut = t.queue.popleft()
            self.waiting -= 1
            if not fut.done():
                self._admit(t, now)
                fut.set_result(None)
        if t.queue:
            self._wake_later(t)

    def _refuse_heaviest(self, arriving: Turns) -> None:
        heaviest = max(self._callers.values(), key=lambda q: (len(q.queue), q.ready_at))
        busy = errors.ResourceExhausted(
            "the server is busy and this caller has the most calls waiting; retry later",
            reason="SERVER_BUSY",
            metadata={"retry_after_ms": RETRY_AFTER_MS, "waiting": len(heaviest.queue)},
        )
        if heaviest is arriving or len(arriving.queue) >= len(heaviest.queue):
            raise busy
        fut = heaviest.queue.pop()
        self.waiting -= 1
        if not fut.done():
            fut.set_exception(busy)

    def _tick(self, due: float) -> None:
        """Samples the loop's lag; at the end of each window, adjusts the capacity."""
        loop = asyncio.get_running_loop()
        at = loop.time()
        lag = at - due
        self._lag_ticks += 1
        if lag > self.lag_target:
            self._lag_sum += 1  # ticks that lagged: the tail is what callers feel, not the mean
        if self._lag_ticks * LAG_TICK >= LAG_WINDOW:
            lagging = (self._lag_sum > LAGGING_TICKS * self._lag_ticks
                       or self._busy > WRITER_BUSY * self._lag_ticks * LAG_TICK)
            self._lag_sum, self._lag_ticks, self._busy = 0, 0, 0.0
            self._adjust(lagging)
        if not self._callers and self.capacity >= self.calls_per_second:
            self._lag_timer = None  # idle: no sampling until the next caller
            return
        self._lag_timer = loop.call_later(LAG_TICK, self._tick, at + LAG_TICK)

    def writer_busy(self, size: int, seconds: float) -> None:
        """The ledger writer reports each batch (its after_batch hook)."""
        self._busy += seconds

    def _adjust(self, lagging: bool) -> None:
        """Halve the capacity while the loop lags and callers share it, else
        grow it back by a tenth, within [MIN_CALLS_PER_CALLER per caller, the ceiling]."""
        if lagging and len(self._callers) > 1:
            floor = MIN_CALLS_PER_CALLER * max(1, self._active_weight)
            self.capacity = min(self.capacity, max(floor, self.capacity / 2))
        else:
            self.capacity = min(self.calls_per_second, self.capacity * 1.1)

    def _sweep(self, now: float) -> None:
        """Callers idle for a while leave the active weight; with nothing
        running or waiting, they take no memory."""
        self._swept = now
        for key, t in list(self._callers.items()):
            if not t.queue and not t.running and t.last < now - ACTIVE_SECONDS and t.ready_at <= now:
                del self._callers[key]
                self._active_weight -= t.weight
