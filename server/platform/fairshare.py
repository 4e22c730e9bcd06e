"""Fair share of the event loop among callers (docs/fairness.md).

A caps-only server lets one caller inside its caps fill the event loop: a
read answered inline costs little in the servicer but a lot in gRPC around
it, and a hundred of them in flight put every other caller's call behind a
hundred others. Here each caller (role/subject) has its own queue, and the
queues are served in turn: each turn of the event loop admits at most
`share` calls of one caller (more for service tokens, which carry every
user's traffic), and a call's measured work (rows examined, batch items,
reported with `charge`) costs its caller further turns. A caller with
nothing waiting and no debt is admitted at once, without a hop. A queued
call costs nothing while it waits, so a caller looping on calls is slowed
to its share instead of being refused and retrying at once.

When too many calls wait in all, the heaviest caller (the longest queue)
is refused first: RESOURCE_EXHAUSTED SERVER_BUSY with a retry delay.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque

from server.platform import errors
from server.platform.auth import Principal

# Work a call may do within one turn: rows examined, or batch items (an
# item written counts as WORK_PER_ITEM rows read).
WORK_PER_TURN = 100
WORK_PER_ITEM = 5
# Calls of one caller running at once, per unit of its share, while others wait.
RUNNING_PER_SHARE = 4
RETRY_AFTER_MS = 100
# How often callers gone quiet with a debt paid off are forgotten.
SWEEP_TURNS = 4096

call_work: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("call_work", default=None)


def charge(rows: int) -> None:
    """Adds measured work (rows examined) to the current call's cost."""
    work = call_work.get()
    if work is not None:
        work[0] += rows


class Turns:
    """One caller's place: its queue, calls running, and the turn from which
    it may be admitted again (its debt)."""

    __slots__ = ("key", "queue", "ready_at", "running", "share")

    def __init__(self, key: str, share: int) -> None:
        self.key = key
        self.share = share
        self.queue: deque[asyncio.Future[None]] = deque()
        self.ready_at = 0.0
        self.running = 0


class FairShare:
    def __init__(self, user_share: int, service_share: int, max_waiting: int) -> None:
        self.user_share = user_share
        self.service_share = service_share
        self.max_waiting = max_waiting
        self.turn = 0
        self.waiting = 0
        self._callers: dict[str, Turns] = {}
        self._queued: dict[str, Turns] = {}
        self._scheduled = False

    def take(self, who: Principal) -> tuple[Turns, asyncio.Future[None] | None]:
        """The caller's place, and None when the call may run now, else the
        future its turn completes."""
        key = who.scope
        t = self._callers.get(key)
        if t is None:
            share = self.service_share if who.privileged else self.user_share
            t = self._callers[key] = Turns(key, share)
        if not t.queue and self._may_run(t):
            self._admit(t)
            return t, None
        if self.waiting >= self.max_waiting:
            self._refuse_heaviest(t)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.queue.append(fut)
        self.waiting += 1
        self._queued[key] = t
        self._schedule()
        return t, fut

    async def wait(self, t: Turns, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        except asyncio.CancelledError:
            if fut in t.queue:  # cancelled while waiting: it never ran
                t.queue.remove(fut)
                self.waiting -= 1
                self._forget(t)
            elif not fut.cancelled():  # admitted, then cancelled before it ran
                self.leave(t, 0)
            raise

    def leave(self, t: Turns, work: int) -> None:
        t.running -= 1
        if work > WORK_PER_TURN:
            t.ready_at += (work // WORK_PER_TURN) / t.share
        if t.queue:
            self._schedule()
        else:
            self._forget(t)

    def _may_run(self, t: Turns) -> bool:
        return t.ready_at <= self.turn + 1 and t.running < t.share * RUNNING_PER_SHARE

    def _admit(self, t: Turns) -> None:
        t.running += 1
        t.ready_at = max(t.ready_at, self.turn) + 1 / t.share
        self._schedule()  # the next turn of the loop is the next turn of everyone

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._scheduled = False
        self.turn += 1
        if self.turn % SWEEP_TURNS == 0:
            for t in list(self._callers.values()):
                self._forget(t)
        if not self._queued:
            return
        in_debt = False
        for t in sorted(self._queued.values(), key=lambda q: q.ready_at):
            while t.queue and self._may_run(t):
                fut = t.queue.popleft()
                self.waiting -= 1
                if fut.done():
                    continue
                self._admit(t)
                fut.set_result(None)
            if not t.queue:
                del self._queued[t.key]
            elif t.ready_at > self.turn + 1:
                in_debt = True  # its turn comes with the loop's turns; the others wake on leave
        if in_debt:
            self._schedule()

    def _refuse_heaviest(self, arriving: Turns) -> None:
        heaviest = max(self._queued.values(), key=lambda q: (len(q.queue), q.ready_at), default=arriving)
        busy = errors.ResourceExhausted(
            "the server is busy and this caller has the most calls waiting; retry later",
            reason="SERVER_BUSY",
            metadata={"retry_after_ms": RETRY_AFTER_MS, "waiting": len(heaviest.queue)},
        )
        if heaviest is arriving or len(arriving.queue) >= len(heaviest.queue):
            raise busy
        fut = heaviest.queue.pop()
        self.waiting -= 1
        if not heaviest.queue:
            del self._queued[heaviest.key]
        fut.set_exception(busy)

    def _forget(self, t: Turns) -> None:
        # A caller with nothing running or waiting and no debt takes no memory.
        if not t.queue and not t.running and t.ready_at <= self.turn + 1:
            self._callers.pop(t.key, None)
            self._queued.pop(t.key, None)
