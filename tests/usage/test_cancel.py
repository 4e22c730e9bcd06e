"""Deadlines and cancellation: a client that gives up mid-Spend gets the whole
effect or none, never half; a retry with the same request_id resolves which
one it was (and never applies it twice)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import usage_pb2
from sqlalchemy import select

from server.db.schema import idempotency, transfers
from server.ledger import keys
from tests.calls import credits
from tests.harness import WAIT, Running, auth, until

FREE = 100_000


def slow_commits(server: Running, seconds: float) -> Any:
    """Every batch lingers before its commit, so cancellations land mid-write."""
    assert server.app is not None

    async def linger(tx: Any, ops: Any) -> None:
        await asyncio.sleep(seconds)

    server.app.writer.before_flush.append(linger)
    return linger


class HeldCommits:
    """Every batch waits before its commit until the test releases it: what the
    test does in between happens mid-write by order, not by a guess of time."""

    def __init__(self, server: Running) -> None:
        assert server.app is not None
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        server.app.writer.before_flush.append(self.hold)

    async def hold(self, tx: Any, ops: Any) -> None:
        self.entered.set()
        await self.released.wait()


async def committed_before(server: Running) -> None:
    """Returns once every batch the writer has taken so far has committed: the
    writer commits its batches one at a time, in order, and this Spend's batch
    comes after them (or is one of them)."""
    await credits(server, "bystander")
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id=uuid.uuid4().hex),
                               metadata=auth("bystander"), timeout=WAIT)


async def queued_past_deadline(server: Running) -> bool:
    """Whether every operation waiting in the writer's queue has a deadline, passed."""
    assert server.app is not None
    now = time.monotonic()
    lanes = server.app.writer._lanes.values()
    return all(item.deadline is not None and item.deadline <= now for lane in lanes for item in lane)


async def ledger_rows(server: Running, user: str, rid: str) -> tuple[list[int], int]:
    assert server.app is not None
    key = keys.idempotency("user", user, "Spend", rid)
    async with server.read() as conn:
        q = select(transfers.c.id).where(transfers.c.key == keys.request_transfer(key))
        ids = [r[0] for r in (await conn.execute(q)).all()]
        stored = len((await conn.execute(select(idempotency.c.key).where(idempotency.c.key == key))).all())
    return ids, stored


async def test_cancel_mid_spend_lands_whole_and_retry_resolves(server: Running) -> None:
    await credits(server, "canceller")
    held = HeldCommits(server)
    req = usage_pb2.SpendRequest(amount_millicredits=1_234, request_id="mid", category="api")
    call = server.s.usage.Spend(req, metadata=auth("canceller"))
    await asyncio.wait_for(held.entered.wait(), WAIT)  # the op is in the writer's batch, not yet committed
    call.cancel()
    try:
        await call
        raise AssertionError("the call should have been cancelled")
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.1)  # the server hears of the cancel (were it later, the write would simply finish first)
    held.released.set()
    await committed_before(server)  # the shielded write finishes without its caller
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
    landed: list[usage_pb2.SpendRequest] = []

    async def settled() -> bool:
        """Whole or absent, each of them; and the balance is theirs, once no write is still landing."""
        landed.clear()
        for r in reqs:
            ids, stored = await ledger_rows(server, user, r.request_id)
            assert (len(ids), stored) in ((0, 0), (1, 1)), f"{r.request_id}: half applied ({ids}, {stored})"
            if ids:
                landed.append(r)
        return await credits(server, user) == FREE - sum(r.amount_millicredits for r in landed)

    await until(settled, "the balance never matched the spends that landed", every=0.2)
    for r in reqs:
        await server.s.usage.Spend(r, metadata=auth(user))
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) == (1, 1), r.request_id
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in reqs)
    print(f"\ncancel: {len(landed)} of {len(reqs)} cancelled spends had landed whole; the rest applied once on retry")


async def test_spend_whose_deadline_passed_in_the_queue_is_not_applied(server: Running) -> None:
    """Spends with deadlines of 0.5 ms to 2 s wait behind a slow batch: each
    client hears DEADLINE_EXCEEDED, none of them is committed afterwards, and a
    retry with the same request_id applies each exactly once. (The 2 s one
    reaches the writer's queue even on a slow host, and expires there.)"""
    user = "hasty"
    await credits(server, user)
    await credits(server, "other")
    held = HeldCommits(server)
    blocker = asyncio.ensure_future(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="b"), metadata=auth("other"), timeout=WAIT)
    )
    await asyncio.wait_for(held.entered.wait(), WAIT)  # the blocker's batch is held before its commit
    timeouts = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.08, 2.0]
    reqs = [usage_pb2.SpendRequest(amount_millicredits=100 + i, request_id=f"t{i}") for i in range(len(timeouts))]

    async def hurried(req: usage_pb2.SpendRequest, timeout: float) -> grpc.StatusCode:
        try:
            await server.s.usage.Spend(req, metadata=auth(user), timeout=timeout)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    codes = await asyncio.gather(*(hurried(r, t) for r, t in zip(reqs, timeouts, strict=True)))
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    # The server's deadline is its receipt of the call plus the timeout, a
    # little after the client's: the batch is released once every spend
    # waiting in the writer's queue is past its deadline there too.
    await until(lambda: queued_past_deadline(server), "the queued spends' deadlines pass on the server")
    held.released.set()
    await blocker
    await committed_before(server)  # any batch that took them has committed
    for r in reqs:
        assert await ledger_rows(server, user, r.request_id) == ([], 0), f"{r.request_id} was applied after its deadline"
    assert await credits(server, user) == FREE
    assert server.app is not None and server.writer_stats.expired >= 1
    first = [await server.s.usage.Spend(r, metadata=auth(user), timeout=10) for r in reqs]
    again = [await server.s.usage.Spend(r, metadata=auth(user), timeout=10) for r in reqs]
    assert [a.transaction.id for a in again] == [f.transaction.id for f in first]
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) == (1, 1), r.request_id
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in reqs)


async def test_tiny_deadlines_then_retry_apply_once(server: Running) -> None:
    """The reviewer's probe: Spends with 0.5-2 ms deadlines on an idle server.
    Whatever each client heard, one retry with the same request_id leaves every
    request applied exactly once."""
    user = "tiny"
    await credits(server, user)
    reqs = [usage_pb2.SpendRequest(amount_millicredits=10 + i, request_id=f"d{i}") for i in range(16)]

    async def fire(i: int, req: usage_pb2.SpendRequest) -> None:
        try:
            await server.s.usage.Spend(req, metadata=auth(user), timeout=0.0005 + 0.0001 * i)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc

    await asyncio.gather(*(fire(i, r) for i, r in enumerate(reqs)))
    await asyncio.sleep(0.3)
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) in ((0, 0), (1, 1)), f"{r.request_id}: half applied"
        await server.s.usage.Spend(r, metadata=auth(user), timeout=10)
    for r in reqs:
        ids, stored = await ledger_rows(server, user, r.request_id)
        assert (len(ids), stored) == (1, 1), r.request_id
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in reqs)


async def test_spend_batch_whose_deadline_passed_in_the_queue_is_not_applied(server: Running) -> None:
    """The items of a SpendBatch carry its deadline: queued behind a slow batch
    past it, none is applied; a retry of the same batch applies each once."""
    user = "hasty-batch"
    await credits(server, user)
    await credits(server, "other")
    held = HeldCommits(server)
    blocker = asyncio.ensure_future(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="b"), metadata=auth("other"), timeout=WAIT)
    )
    await asyncio.wait_for(held.entered.wait(), WAIT)  # the blocker's batch is held before its commit
    batch = usage_pb2.SpendBatchRequest(requests=[
        usage_pb2.SpendRequest(amount_millicredits=100 + i, request_id=f"bt{i}") for i in range(5)
    ])
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await server.s.usage.SpendBatch(batch, metadata=auth(user), timeout=0.02)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    held.released.set()
    await blocker
    await committed_before(server)  # any batch that took them has committed
    for r in batch.requests:
        assert await ledger_rows(server, user, r.request_id) == ([], 0), f"{r.request_id} was applied after its deadline"
    assert await credits(server, user) == FREE
    done = await server.s.usage.SpendBatch(batch, metadata=auth(user), timeout=10)
    assert all(r.HasField("response") for r in done.results)
    assert await credits(server, user) == FREE - sum(r.amount_millicredits for r in batch.requests)
