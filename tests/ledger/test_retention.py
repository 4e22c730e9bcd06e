"""Retention of stored responses: older than BILLING_IDEMPOTENCY_RETENTION they
are pruned in bounded batches by a background job. A pruned request_id keeps
its key as a tombstone: its repeat is refused REQUEST_ID_EXPIRED and never
applied a second time, whatever the operation."""

from __future__ import annotations

from datetime import timedelta

import grpc
from flownexus.billing.v1 import admin_pb2, common_pb2, usage_pb2
from sqlalchemy import func, select

from server.db.schema import idempotency, transfers
from server.ledger import keys
from server.platform.clock import ManualClock
from tests.calls import credits
from tests.harness import Running, auth, expect_error, serving

FREE = 100_000
DAY = 86_400


async def stored(server: Running, key: str) -> bytes | None:
    assert server.app is not None
    async with server.read() as conn:
        row = (await conn.execute(select(idempotency.c.response).where(idempotency.c.key == key))).first()
    return None if row is None else bytes(row[0])


async def live_responses(server: Running) -> int:
    assert server.app is not None
    async with server.read() as conn:
        q = select(func.count()).select_from(idempotency).where(func.length(idempotency.c.response) > 0)
        return int((await conn.execute(q)).scalar_one())


async def request_transfers(server: Running, key: str) -> int:
    assert server.app is not None
    async with server.read() as conn:
        q = select(func.count()).select_from(transfers).where(transfers.c.key == keys.request_transfer(key))
        return int((await conn.execute(q)).scalar_one())


async def prune(server: Running) -> int:
    assert server.app is not None
    return await server.run_job("prune_responses")


async def test_pruned_request_id_is_refused_and_never_applied_twice(db_url: str, clock: ManualClock) -> None:
    async with serving(db_url, clock, idempotency_retention=timedelta(days=7)) as server:
        md = auth("keeper")
        spend = usage_pb2.SpendRequest(amount_millicredits=1_500, request_id="old-spend", category="api")
        first = await server.s.usage.Spend(spend, metadata=md)
        hold = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=10, request_id="old-hold"), metadata=md)
        release = usage_pb2.ReleaseRequest(hold_id=hold.hold.id, request_id="old-release")
        await server.s.usage.Release(release, metadata=md)
        admin = auth("ops", "admin")
        adjust = admin_pb2.AdjustBalanceRequest(user_id="keeper", amount_millicredits=700, reason="goodwill", lot=common_pb2.LOT_KIND_EARNED,
                                            request_id="old-adj")
        await server.s.admin.AdjustBalance(adjust, metadata=admin)
        spend_key = keys.idempotency("user", "keeper", "Spend", "old-spend")
        balance = await credits(server, "keeper")
        assert balance == FREE - 1_500 + 700

        # Six days on nothing is old enough; a repeat still replays the stored answer.
        clock.advance(6 * DAY)
        assert await prune(server) == 0
        assert await server.s.usage.Spend(spend, metadata=md) == first
        recent = await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=5, request_id="recent"), metadata=md
        )

        clock.advance(1 * DAY + 1)  # the first four are now past the 7 days; "recent" is not
        assert await prune(server) == 4
        for call in (
            server.s.usage.Spend(spend, metadata=md),
            server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=10, request_id="old-hold"), metadata=md),
            server.s.usage.Release(release, metadata=md),
            server.s.admin.AdjustBalance(adjust, metadata=admin),
        ):
            info = await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_EXPIRED")
            assert info.metadata["request_id"].startswith("old-")
        # Other parameters under a pruned request_id are still a reuse.
        await expect_error(
            server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=9, request_id="old-spend"), metadata=md),
            grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED",
        )
        # Nothing applied twice: one transfer for the Spend, the balance as it was.
        assert await request_transfers(server, spend_key) == 1
        assert await stored(server, spend_key) == b"", "the key must stay as a tombstone"
        assert await credits(server, "keeper") == balance - 5
        # Recent requests replay as before, across a restart too; new ones apply.
        assert await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=5, request_id="recent"), metadata=md
        ) == recent
        await server.restart()
        await expect_error(server.s.usage.Spend(spend, metadata=md), grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_EXPIRED")
        await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="new"), metadata=md)
        assert await credits(server, "keeper") == balance - 6
        assert await prune(server) == 0


async def test_pruning_runs_in_bounded_batches_oldest_first(db_url: str, clock: ManualClock) -> None:
    async with serving(
        db_url, clock, idempotency_retention=timedelta(days=7), idempotency_prune_batch=3, idempotency_prune_max_batches=2
    ) as server:
        md = auth("batcher")
        for i in range(10):
            await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id=f"s{i}"), metadata=md)
            clock.advance(0.001)
        assert await live_responses(server) == 10
        clock.advance(8 * DAY)
        assert await prune(server) == 6  # two batches of three in one run
        assert await live_responses(server) == 4
        for i in range(10):
            response = await stored(server, keys.idempotency("user", "batcher", "Spend", f"s{i}"))
            assert (response == b"") == (i < 6), f"s{i}: pruned out of order"
        assert await prune(server) == 4
        assert await prune(server) == 0
        assert await live_responses(server) == 0
        assert await credits(server, "batcher") == FREE - 10
