"""The caller's gRPC deadline, for work done on its behalf.

The interceptor records when the current call's deadline passes (monotonic
seconds). The ledger writer drops an operation whose deadline passed while
it was queued, before its batch starts, and Stripe calls are bounded by the
time the caller has left. Background jobs run outside any call: no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator

from server.platform import errors

# When the current call's deadline passes (time.monotonic()), or None without one.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


def expired_error() -> errors.DeadlineExceeded:
    return errors.DeadlineExceeded(
        "the call's deadline passed before it was applied; nothing was done, retry with the same request_id"
    )


def remaining() -> float | None:
    """Seconds the current caller has left, or None without a deadline."""
    at = call_deadline.get()
    return None if at is None else at - time.monotonic()


@contextlib.asynccontextmanager
async def bounded(longest: float) -> AsyncIterator[None]:
    """At most `longest` seconds (the callee's own timeout, which it enforces),
    or less when the caller has less left.
    A deadline already passed does not start the work at all."""
    left = remaining()
    if left is None or left >= longest:
        yield
        return
    if left <= 0:
        raise expired_error()
    try:
        async with asyncio.timeout(left):
            yield
    except TimeoutError:
        raise errors.DeadlineExceeded(
            "the call's deadline passed while waiting for the payment provider; retry with the same request_id"
        ) from None
