"""Budgets of scoped keys, enforced in the ledger's transaction: concurrent
spends through one key never pass its budget, holds count from Reserve."""

from __future__ import annotations

import asyncio
import gc

import grpc
from flownexus.billing.v1 import keys_pb2, usage_pb2
from google.protobuf.duration_pb2 import Duration

from server.keys import repository as keys_repo
from server.ledger.model import wallet_id
from server.ledger.ops import Idempotency, Join, Spend
from server.ledger.tx import LedgerTx
from tests.harness import Running, auth, error_info, expect_error
from tests.keys.helpers import CREDIT, DAY, SERVICE, bearer, create_key, fund, keys_stub, spend_req

ROUNDS = 20


async def _round(server: Running, user: str, n: int, *, batch: bool) -> tuple[int, int]:
    """20 spends of 75 credits through a new key with a daily budget of 500."""
    made = await create_key(server, user, [(DAY, 500 * CREDIT)], label=f"round-{n}")
    md = bearer(made.secret)
    if batch:
        reqs = [spend_req(75 * CREDIT, f"b{n}-{i}") for i in range(20)]
        resp = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=reqs), metadata=md)
        ok = sum(1 for r in resp.results if r.HasField("response"))
        refused = [r.error for r in resp.results if r.HasField("error")]
        assert all(e.reason == "BUDGET_EXCEEDED" for e in refused), refused
        return ok, len(refused)
    results = await asyncio.gather(
        *(server.s.usage.Spend(spend_req(75 * CREDIT, f"u{n}-{i}"), metadata=md) for i in range(20)),
        return_exceptions=True,
    )
    ok = refused = 0
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            assert r.code() == grpc.StatusCode.FAILED_PRECONDITION, r.details()
            assert error_info(r).reason == "BUDGET_EXCEEDED"
            refused += 1
        else:
            assert isinstance(r, usage_pb2.SpendResponse), r
            ok += 1
    return ok, refused


async def test_concurrent_spends_through_a_key_stop_at_its_budget(server: Running) -> None:
    await fund(server, "ann", 1_000_000 * CREDIT)
    for n in range(ROUNDS):
        assert await _round(server, "ann", n, batch=False) == (6, 14)


async def test_one_spend_batch_through_a_key_stops_at_its_budget(server: Running) -> None:
    await fund(server, "bob", 1_000_000 * CREDIT)
    for n in range(ROUNDS):
        assert await _round(server, "bob", n, batch=True) == (6, 14)


async def test_budget_exceeded_names_window_limit_use_and_reset(server: Running) -> None:
    await fund(server, "cy", 10_000 * CREDIT)
    made = await create_key(server, "cy", [(DAY, 100 * CREDIT)])
    await server.s.usage.Spend(spend_req(60 * CREDIT, "a"), metadata=bearer(made.secret))
    info = await expect_error(
        server.s.usage.Spend(spend_req(60 * CREDIT, "b"), metadata=bearer(made.secret)),
        grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED",
    )
    assert info.metadata["window"] == "day"
    assert info.metadata["limit_millicredits"] == str(100 * CREDIT)
    assert info.metadata["used_millicredits"] == str(60 * CREDIT)
    assert info.metadata["resets_at"] == "2031-03-15T00:00:00Z"  # the next UTC midnight of the pinned clock
    # The budget is not the balance: the wallet has plenty, and only 60 credits left it.
    got = await keys_stub(server).GetKey(keys_pb2.GetKeyRequest(key_id=made.key.id), metadata=auth("cy"))
    (budget,) = got.key.budgets
    assert (budget.used_millicredits, budget.remaining_millicredits) == (60 * CREDIT, 40 * CREDIT)
    assert budget.resets_at.ToJsonString() == "2031-03-15T00:00:00Z"


async def test_a_hold_counts_against_the_budget_until_released(server: Running) -> None:
    await fund(server, "dee", 10_000 * CREDIT)
    made = await create_key(server, "dee", [(DAY, 500 * CREDIT)])
    md = bearer(made.secret)
    hold = (await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=400 * CREDIT, request_id="h1", ttl=Duration(seconds=600)), metadata=md)).hold
    await expect_error(
        server.s.usage.Spend(spend_req(150 * CREDIT, "s1"), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED",
    )
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold.id, request_id="r1"), metadata=md)
    await server.s.usage.Spend(spend_req(150 * CREDIT, "s2"), metadata=md)


async def test_capture_settles_and_expiry_gives_back(server: Running) -> None:
    await fund(server, "eve", 10_000 * CREDIT)
    made = await create_key(server, "eve", [(DAY, 500 * CREDIT)])
    md = bearer(made.secret)
    hold = (await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=400 * CREDIT, request_id="h1", ttl=Duration(seconds=60)), metadata=md)).hold
    await server.s.usage.Capture(usage_pb2.CaptureRequest(
        hold_id=hold.id, amount_millicredits=100 * CREDIT, request_id="c1"), metadata=md)
    # Captured 100 of 400: 400 left of the budget.
    await server.s.usage.Spend(spend_req(400 * CREDIT, "s1"), metadata=md)
    await expect_error(
        server.s.usage.Spend(spend_req(1, "s2"), metadata=md), grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED"
    )
    # A hold that expires gives its amount back.
    other = await create_key(server, "eve", [(DAY, 500 * CREDIT)])
    md2 = bearer(other.secret)
    await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=500 * CREDIT, request_id="h2", ttl=Duration(seconds=60)), metadata=md2)
    await expect_error(
        server.s.usage.Spend(spend_req(1, "t1"), metadata=md2), grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED"
    )
    server.clock.advance(120)
    assert await server.run_job("expire_holds") == 1
    await server.s.usage.Spend(spend_req(500 * CREDIT, "t2"), metadata=md2)


async def test_a_service_spends_for_a_key_and_is_held_to_its_budget(server: Running) -> None:
    await fund(server, "fay", 10_000 * CREDIT)
    made = await create_key(server, "fay", [(DAY, 100 * CREDIT)])
    r = await server.s.usage.Spend(
        spend_req(80 * CREDIT, "x1", user_id="fay", key_id=made.key.id), metadata=SERVICE
    )
    assert r.transaction.key_id == made.key.id
    await expect_error(
        server.s.usage.Spend(spend_req(30 * CREDIT, "x2", user_id="fay", key_id=made.key.id), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED",
    )
    # The key belongs to fay's wallet: spending it on another wallet is refused.
    await fund(server, "gil", 10_000 * CREDIT)
    await expect_error(
        server.s.usage.Spend(spend_req(1 * CREDIT, "x3", user_id="gil", key_id=made.key.id), metadata=SERVICE),
        grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND",
    )


async def test_a_key_settles_only_the_holds_it_reserved(server: Running) -> None:
    await fund(server, "fay", 10_000 * CREDIT)
    mine = await create_key(server, "fay", [(DAY, 500 * CREDIT)], label="mine")
    other = await create_key(server, "fay", [(DAY, 500 * CREDIT)], label="other")

    async def reserve(md: object, rid: str) -> str:
        req = usage_pb2.ReserveRequest(amount_millicredits=10 * CREDIT, request_id=rid, ttl=Duration(seconds=600))
        return (await server.s.usage.Reserve(req, metadata=md)).hold.id  # type: ignore[arg-type]

    owners = await reserve(auth("fay"), "owner-hold")
    others = await reserve(bearer(other.secret), "other-hold")
    md = bearer(mine.secret)
    for hold_id in (owners, others):
        for n, call in enumerate((
            server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=hold_id, amount_millicredits=1, request_id=f"c-{hold_id}"), metadata=md),
            server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold_id, request_id=f"r-{hold_id}"), metadata=md),
        )):
            info = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "HOLD_NOT_YOURS")
            assert info.metadata["key_id"] == mine.key.id, n
    # The holds are untouched; their makers still settle them, and the key settles its own.
    await server.s.usage.Capture(usage_pb2.CaptureRequest(
        hold_id=others, amount_millicredits=CREDIT, request_id="c1"), metadata=bearer(other.secret))
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=owners, request_id="r1"), metadata=auth("fay"))
    own = await reserve(md, "own-hold")
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=own, request_id="r2"), metadata=md)


async def test_a_batch_with_staged_rows_leaves_no_cyclic_garbage(sqlite_server: Running) -> None:
    """A batch's staged rows (a key read through the keys repository, here)
    point back at the batch: unless it lets go of them once written, every
    such batch is freed only by the cyclic collector, whose passes over it
    cost a spend through a key more than the key's own work did."""
    server = sqlite_server
    await fund(server, "gc", 1_000_000 * CREDIT)
    made = await create_key(server, "gc", [(DAY, 500_000 * CREDIT)])
    key_id = made.key.id

    async def read_key(tx: LedgerTx) -> None:
        await keys_repo.locked_key(tx, key_id)

    gc.collect()
    gc.disable()
    try:
        for i in range(20):
            await server.submit(Join(fn=read_key, accounts={wallet_id("gc")}))
            await server.submit(Spend(user_id="gc", amount=CREDIT, category="gc", key_id=key_id, idempotency=(
                Idempotency.of("service", "sandbox-runner", "Spend", f"gc-{i}", "f" * 64))))
        left = gc.collect()
    finally:
        gc.enable()
    # Without letting go: the batch's whole graph, some dozens of objects per batch.
    assert left < 100, left
