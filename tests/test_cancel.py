"""Deadlines and cancellation: a client that gives up mid-Spend gets the whole
effect or none, never half; a retry with the same request_id resolves which
one it was (and never applies it twice)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
from flownexus.billing.v1 import usage_pb2
from sqlalchemy import select

from server.db.schema import idempotency, transfers
from server.ledger import keys
from tests.calls import credits
from tests.harness import Running, auth

FREE = 100_000


def slow_commits(server: Running, seconds: float) -> None:
    """Every batch lingers before its commit, so cancellations land mid-write."""
    assert server.app is not None

    async def linger(tx: Any, ops: Any) -> None:
        await asyncio.sleep(seconds)

    server.app.writer.before_flush.append(linger)


async def ledger_rows(server: Running, user: str, rid: str) -> tuple[list[int], int]:
    assert server.app is not None
    key = keys.idempotency("user", user, "Spend", rid)
    async with server.app.db.reader.connect() as conn:
        q = select(transfers.c.id).where(transfers.c.key == keys.request_transfer(key))
        ids = [r[0] for r in (await conn.execute(q)).all()]
        stored = len((await conn.execute(select(idempotency.c.key).where(idempotency.c.key == key))).all())
    return ids, stored


async def test_cancel_mid_spend_lands_whole_and_retry_resolves(server: Running) -> None:
    await credits(server, "canceller")
    slow_commits(server, 0.4)
    req = usage_pb2.SpendRequest(amount_millicredits=1_234, request_id="mid", category="api")
    call = server.s.usage.Spend(req, metadata=auth("canceller"))
    await asyncio.sleep(0.15)  # the op is in the writer's batch, not yet committed
    call.cancel()
    try:
        await call
        raise AssertionError("the call should have been cancelled")
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.6)  # the shielded write finishes without its caller
    ids, stored = await ledger_rows(server, "canceller", "mid")
    assert len(ids) == 1 and stored == 1, "the cancelled spend must land whole (transfer and stored response)"
    assert await credits(server, "canceller") == FREE - 1_234
    again = await server.s.usage.Spend(req, metadata=auth("canceller"))
    assert again.transaction.id == str(ids[0]) and again.credits_millicredits == FREE - 1_234
    assert await credits(server, "canceller") == FREE - 1_234


async def test_deadline_exceeded_then_retry(server: Running) -> None:
    await credits(server, "hurried")
    slow_commits(server, 0.3)
    req = usage_pb2.SpendRequest(amount_millicredits=500, request_id="dl")
    try:
        await server.s.usage.Spend(req, metadata=auth("hurried"), timeout=0.1)
        raise AssertionError("expected DEADLINE_EXCEEDED")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    r = await server.s.usage.Spend(req, metadata=auth("hurried"), timeout=10)
    ids, stored = await ledger_rows(server, "hurried", "dl")
    assert ids == [int(r.transaction.id)] and stored == 1
    assert await credits(server, "hurried") == FREE - 500


async def test_random_cancellations_all_or_nothing(server: Running) -> None:
    """60 spends cancelled at random moments (before sending, in flight, mid
    commit). Each one is then either fully applied or absent, and one retry of
    each leaves every request applied exactly once."""
    user = "storm"
    await credits(server, user)
    slow_commits(server, 0.05)
    rng = random.Random(5)
    reqs = [usage_pb2.SpendRequest(amount_millicredits=rng.randint(1, 900), request_id=f"k{i}") for i in range(60)]

    async def fire(req: usage_pb2.SpendRequest) -> None:
        call = server.s.usage.Spend(req, metadata=auth(user))
        await asyncio.sleep(rng.uniform(0, 0.15))
        call.cancel()
        try:
            await call
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass

    await asyncio.gather(*(fire(r) for r in reqs))
    await asyncio.sleep(0.5)
    landed = []
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) in ((0, 0), (1, 1)), f"{r.request_id}: half applied ({ids}, {stored})"
        if ids:
            landed.append(r)
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in landed)
    for r in reqs:
        await server.s.usage.Spend(r, metadata=auth(user))
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) == (1, 1), r.request_id
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in reqs)
    print(f"\ncancel: {len(landed)} of {len(reqs)} cancelled spends had landed whole; the rest applied once on retry")
