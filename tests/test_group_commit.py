"""The batched write path: operations sharing one transaction succeed or fail
on their own, and everything acknowledged survives a restart."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import balance_pb2, usage_pb2

from server import errors
from server.ledger.ops import Idempotency, Spend
from tests.harness import auth

FREE = 100_000


async def credits(server, user: str) -> int:
    r = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id=user), metadata=auth(user))
    return r.credits_millicredits


def spend(user: str, amount: int, rid: str) -> Spend:
    return Spend(user_id=user, amount=amount, category="test", idempotency=Idempotency(f"user/{user}:Spend:{rid}", f"fp-{amount}"))


async def test_one_batch_refusals_do_not_fail_neighbours(server) -> None:
    writer = server.app.writer
    await credits(server, "gc")  # wallet with the free allowance
    await writer.submit(spend("gc", 1_000, "orig"))
    before = writer.stats.batches
    ops = []
    for i in range(30):
        ops.append(("ok", spend("gc", 1_000, f"ok-{i}")))
        ops.append(("short", spend("gc", 500_000, f"big-{i}")))  # INSUFFICIENT_CREDITS
        ops.append(("reused", spend("gc", 7, "orig")))  # same request_id, other parameters
        ops.append(("replay", spend("gc", 1_000, "orig")))  # same request_id and parameters
    # Queued in one loop turn, so the writer takes them as one batch.
    results = await asyncio.gather(*(writer.submit(op) for _, op in ops), return_exceptions=True)
    assert writer.stats.batches - before == 1, "expected a single batch"
    assert max(writer.stats.batch_sizes) >= len(ops)
    first = None
    for (kind, _), res in zip(ops, results, strict=True):
        if kind == "ok":
            assert not isinstance(res, BaseException), res
        elif kind == "short":
            assert isinstance(res, errors.InsufficientCredits), res
        elif kind == "reused":
            assert isinstance(res, errors.RequestIdReused), res
        else:
            assert not isinstance(res, BaseException), res
            first = first or res
            assert res == first
    assert await credits(server, "gc") == FREE - 31 * 1_000
    # Nothing of the refused operations leaked into the ledger; the audit runs at teardown.
    await server.restart()
    assert await credits(server, "gc") == FREE - 31 * 1_000
    again = await server.app.writer.submit(spend("gc", 1_000, "ok-7"))  # a replay after the restart
    assert again == results[7 * 4]
    assert await credits(server, "gc") == FREE - 31 * 1_000


async def test_concurrent_grpc_spends_batch_and_never_overdraft(server) -> None:
    user = "gc2"
    await credits(server, user)
    md = auth(user)

    async def one(i: int) -> str:
        amount = 3_000 if i % 3 else 150_000  # every third one can never fit
        try:
            await server.s.usage.Spend(
                usage_pb2.SpendRequest(amount_millicredits=amount, request_id=f"r{i}", category="t"), metadata=md
            )
            return "ok"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            return "refused"

    out = await asyncio.gather(*(one(i) for i in range(90)))
    ok = out.count("ok")
    assert ok == FREE // 3_000  # 33 fit, the rest are refused alone
    assert await credits(server, user) == FREE - ok * 3_000
    assert max(server.app.writer.stats.batch_sizes) > 1, server.app.writer.stats
    await server.restart()
    assert await credits(server, user) == FREE - ok * 3_000
    # A retry of an acknowledged spend after the restart is a replay, not a second debit.
    for i in range(1, 90):
        if i % 3:
            try:
                await server.s.usage.Spend(
                    usage_pb2.SpendRequest(amount_millicredits=3_000, request_id=f"r{i}", category="t"), metadata=md
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await credits(server, user) == FREE - ok * 3_000
