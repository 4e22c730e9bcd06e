"""What one caller may store: free Reserve/Release cycles stop at the
caller's daily quota of stored requests (RESOURCE_EXHAUSTED with a clear
reason and the time to the next UTC day); repeats, other callers and the
next day go on, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import usage_pb2

from server.platform.clock import ManualClock
from tests.calls import DAY_S, FREE, credits, release, reserve, spend
from tests.harness import auth, expect_error, serving

QUOTA = 6


async def _refused_items(server, batch: usage_pb2.SpendBatchRequest, user: str) -> None:  # type: ignore[no-untyped-def]
    r = await server.s.usage.SpendBatch(batch, metadata=auth(user))
    assert [(x.error.code, x.error.reason) for x in r.results] == [
        (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "STORAGE_QUOTA_EXCEEDED")] * len(batch.requests)


async def test_free_hold_cycles_stop_at_the_daily_quota(db_url: str, clock: ManualClock) -> None:
    async with serving(db_url, clock, user_max_stored_requests_per_day=QUOTA) as server:
        user = "hoarder"
        holds = []
        for i in range(QUOTA // 2):  # each cycle stores two requests, and costs nothing
            holds.append(await reserve(server, user, 1, f"r{i}"))
            await release(server, user, holds[-1].id, f"x{i}")
        assert await credits(server, user) == FREE
        info = await expect_error(reserve(server, user, 1, "one-more"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  "STORAGE_QUOTA_EXCEEDED")
        assert info.metadata["limit_per_day"] == str(QUOTA) and info.metadata["used"] == str(QUOTA)
        ms_to_midnight = (86_400_000_000 - server.clock.now_us() % 86_400_000_000) // 1000
        assert int(info.metadata["retry_after_ms"]) == ms_to_midnight
        await expect_error(spend(server, user, 1, "s"), grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_QUOTA_EXCEEDED")
        batch = usage_pb2.SpendBatchRequest(requests=[
            usage_pb2.SpendRequest(amount_millicredits=1, request_id=f"b{i}") for i in range(2)])
        await _refused_items(server, batch, user)
        # A repeat stores nothing: answered as before.
        assert await reserve(server, user, 1, "r0") == holds[0]
        # Another user, and a service acting for this one, are not held back.
        await spend(server, "neighbour", 1, "n")
        await server.s.usage.Spend(usage_pb2.SpendRequest(user_id=user, amount_millicredits=1, request_id="svc"),
                                   metadata=auth("svc", "service"))
        # A SpendBatch counts its items: two do not fit in what is left of a fresh day's quota of 6 after 5.
        server.clock.advance(DAY_S)
        for i in range(QUOTA - 1):
            await spend(server, user, 1, f"d{i}")
        await _refused_items(server, batch, user)
        await spend(server, user, 1, "last")
        assert await credits(server, user) == FREE - 1 - QUOTA
