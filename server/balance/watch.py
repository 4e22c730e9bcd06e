"""WatchBalance fan-out. Writers publish without ever waiting: each subscriber
has a bounded queue, and a subscriber that falls behind has its backlog
replaced by one marker that makes its stream send a fresh snapshot."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from server.ledger.model import BalanceEvent
from server.platform.metrics import METRICS

log = logging.getLogger(__name__)

RESYNC = BalanceEvent(user_id="", kind="resync")


class Subscription:
    def __init__(self, user_id: str, maxsize: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[BalanceEvent] = asyncio.Queue(maxsize)
        self.coalesced = 0

    def offer(self, event: BalanceEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Coalesce: drop the backlog, keep one resync marker.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)
            self.coalesced += 1


class WatchHub:
    def __init__(self, queue_size: int = 64) -> None:
        self.queue_size = queue_size
        self._subs: dict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, user_id: str) -> Subscription:
        sub = Subscription(user_id, self.queue_size)
        self._subs[user_id].add(sub)
        METRICS.watch_streams.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.user_id)
        if subs and sub in subs:
            subs.discard(sub)
            METRICS.watch_streams.dec()
            if not subs:
                del self._subs[sub.user_id]

    def deliver(self, events: list[BalanceEvent]) -> None:
        """Hand events to the local subscribers (never blocks)."""
        for event in events:
            for sub in self._subs.get(event.user_id, ()):
                sub.offer(event)
