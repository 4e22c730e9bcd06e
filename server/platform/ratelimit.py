"""Per-caller rate limits: a token bucket per (method, principal).

Applied by `CallInterceptor` (server/grpc/interceptors.py) once the caller is
authenticated. Past the limit a call is refused with
RESOURCE_EXHAUSTED / RATE_LIMITED and `retry_after_ms` in its ErrorInfo, before
the servicer runs: a refused call never reaches the ledger or Stripe. Each
caller has its own bucket, so one noisy caller never starves the others.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.platform import errors
from server.platform.auth import Principal


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: `rate` tokens per second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = 100_000, now: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.now = now
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, key: str, n: int = 1) -> float:
        """Take `n` tokens (at most the burst: see ByRole.check); returns 0,
        or the seconds to wait until there are enough."""
        need = float(n)
        now = self.now()
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(float(self.burst), now)
            self._buckets[key] = b
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)  # forget the least recently seen caller (its bucket was full)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate)
            b.updated = now
        if b.tokens >= need:
            b.tokens -= need
            return 0.0
        return (need - b.tokens) / self.rate

    def check(self, key: str, what: str, n: int = 1) -> None:
        wait = self.acquire(key, n)
        if wait > 0:
            raise errors.ResourceExhausted(
                f"too many {what} calls; retry later",
                reason="RATE_LIMITED",
                metadata={"retry_after_ms": math.ceil(wait * 1000), "limit_per_second": self.rate, "burst": self.burst},
            )


class InFlight:
    """Counts billing RPCs in progress (streams for their whole life). grpc.aio's
    own `maximum_concurrent_rpcs` makes extra calls wait silently; this refuses
    them at once so that clients can back off or go to another replica."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def enter(self) -> None:
        if self.current >= self.limit:
            raise errors.ResourceExhausted(
                "too many concurrent calls; retry later",
                reason="TOO_MANY_CONCURRENT_RPCS",
                metadata={"limit": self.limit, "retry_after_ms": 100},
            )
        self.current += 1

    def exit(self) -> None:
        self.current -= 1


class PerCaller:
    """Calls in progress per caller (role/subject), each refused at its cap
    before anything is allocated for it, so that one token holding its cap
    leaves the rest of the global limit to everyone else. Callers with
    nothing in progress take no memory."""

    def __init__(self, user_limit: int, privileged_limit: int, *, reason: str, what: str) -> None:
        self.user_limit = user_limit
        self.privileged_limit = privileged_limit
        self.reason = reason
        self.what = what
        self.counts: dict[str, int] = {}

    def enter(self, who: Principal) -> str:
        key = who.scope
        limit = self.privileged_limit if who.privileged else self.user_limit
        n = self.counts.get(key, 0)
        if n >= limit:
            raise errors.ResourceExhausted(
                f"too many {self.what} for this caller; close some or retry later",
                reason=self.reason,
                metadata={"limit": limit, "retry_after_ms": 100},
            )
        self.counts[key] = n + 1
        return key

    def exit(self, key: str) -> None:
        n = self.counts.get(key, 0) - 1
        if n > 0:
            self.counts[key] = n
        else:
            self.counts.pop(key, None)


class ByRole:
    """One token bucket per caller, with a bigger one for service and admin
    tokens (platform services act for many users)."""

    def __init__(self, user: RateLimiter | None, privileged: RateLimiter | None) -> None:
        self.user = user
        self.privileged = privileged

    def check(self, who: Principal, what: str, n: int = 1) -> None:
        limiter = self.privileged if who.privileged else self.user
        if limiter is None:
            return
        if n > limiter.burst:
            # A batch is charged by its items: one larger than the whole
            # bucket could never be admitted, so waiting cannot help.
            raise errors.InvalidArgument(
                f"{what} of {n} items is more than this caller's mutation burst of {limiter.burst}; "
                "send smaller batches",
                reason="BATCH_OVER_MUTATION_BURST",
                metadata={"items": n, "burst": limiter.burst, "limit_per_second": limiter.rate},
            )
        limiter.check(who.scope, what, n)


def _bucket(rate: float, burst: int) -> RateLimiter | None:
    return RateLimiter(rate, burst) if rate > 0 else None


def mutation_limits(settings: Any) -> ByRole:
    """The bucket every mutating RPC (one that takes a request_id) draws from."""
    return ByRole(
        _bucket(settings.user_mutation_rate_per_second, settings.user_mutation_burst),
        _bucket(settings.service_mutation_rate_per_second, settings.service_mutation_burst),
    )


def caller_shares(settings: Any) -> tuple[PerCaller, PerCaller]:
    """(open streams, unary calls in progress) per caller."""
    return (
        PerCaller(settings.user_max_streams, settings.service_max_streams,
                  reason="TOO_MANY_STREAMS", what="open streams"),
        PerCaller(settings.user_max_in_flight, settings.service_max_in_flight,
                  reason="TOO_MANY_CALLS_IN_FLIGHT", what="calls in progress"),
    )


AWARD_METHOD = "/flownexus.billing.v1.EarningsService/AwardCredits"
PAYMENT_LINK_METHOD = "/flownexus.billing.v1.PaymentsService/CreatePaymentLink"
TOP_UP_METHOD = "/flownexus.billing.v1.PaymentsService/TopUp"


def limiters(settings: Any) -> dict[str, RateLimiter]:
    """The configured limits (a rate of 0 turns one off)."""
    out: dict[str, RateLimiter] = {}
    if settings.award_rate_per_second > 0:
        out[AWARD_METHOD] = RateLimiter(settings.award_rate_per_second, settings.award_burst)
    if settings.payment_link_rate_per_second > 0:
        out[PAYMENT_LINK_METHOD] = RateLimiter(settings.payment_link_rate_per_second, settings.payment_link_burst)
        # A top-up charges a card: the same limit as payment links, counted on its own.
        out[TOP_UP_METHOD] = RateLimiter(settings.payment_link_rate_per_second, settings.payment_link_burst)
    return out
