"""What one caller may store: stored responses (one per applied mutating
request, with the transfers, holds and rows it made) per caller and UTC day.

Reserve and Release cycles cost no credits, yet each stores its records: a
caller inside its rate limit could still grow the database by gigabytes a
day for free. Counted by the ledger writer as requests are applied (a
repeat answered from its stored response, or a refused request, stores
nothing and counts nothing); refused before queueing with
RESOURCE_EXHAUSTED `STORAGE_QUOTA_EXCEEDED` and the time to the next UTC
day. Counts live in each server process, as the per-caller rate buckets do.
"""

from __future__ import annotations

from server.platform import errors
from server.platform.auth import Principal
from server.platform.clock import DAY_US


class StoredQuota:
    def __init__(self, user_per_day: int, privileged_per_day: int) -> None:
        self.user_per_day = user_per_day
        self.privileged_per_day = privileged_per_day
        self._day = -1
        self._counts: dict[str, int] = {}

    def _limit(self, who: Principal) -> int:
        return self.privileged_per_day if who.privileged else self.user_per_day

    def _today(self, now_us: int) -> dict[str, int]:
        day = now_us // DAY_US
        if day != self._day:  # a new UTC day: every count starts again
            self._day, self._counts = day, {}
        return self._counts

    def check(self, who: Principal | None, n: int, now_us: int) -> errors.DomainError | None:
        """The refusal of a call whose `n` requests would take the caller past its quota."""
        if who is None or not (limit := self._limit(who)):
            return None
        used = self._today(now_us).get(who.scope, 0)
        if used + n <= limit:
            return None
        return errors.ResourceExhausted(
            f"this caller stored {used} of its {limit} requests for today (UTC); retry tomorrow",
            reason="STORAGE_QUOTA_EXCEEDED",
            metadata={
                "limit_per_day": str(limit), "used": str(used), "requested": str(n),
                "retry_after_ms": str(-(-(DAY_US - now_us % DAY_US) // 1000)),
            },
        )

    def stored(self, who: Principal | None, now_us: int) -> None:
        if who is not None and self._limit(who):
            counts = self._today(now_us)
            counts[who.scope] = counts.get(who.scope, 0) + 1
