"""UsageService: Spend, Reserve, Capture, Release, with the ledger audit after each."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import common_pb2, earnings_pb2, usage_pb2
from google.protobuf.duration_pb2 import Duration

from tests.calls import balance
from tests.harness import auth, expect_error

FREE = 100_000  # the free tier's 100 credits, in millicredits


async def test_new_user_gets_free_allowance_once(server) -> None:
    first = await balance(server, "alice")
    again = await balance(server, "alice")
    assert first.credits_millicredits == FREE == again.credits_millicredits
    assert first.tier == common_pb2.TIER_FREE
    assert [lot.kind for lot in first.lots] == [common_pb2.LOT_KIND_ALLOWANCE]


async def test_spend_debits_and_records(server) -> None:
    r = await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=2_500, request_id="s1", category="sandbox"), metadata=auth("bob")
    )
    assert r.credits_millicredits == FREE - 2_500
    assert r.transaction.amount_millicredits == -2_500
    assert r.transaction.type == common_pb2.TRANSACTION_TYPE_SPEND
    assert r.transaction.balance_after_millicredits == FREE - 2_500
    b = await balance(server, "bob")
    assert b.spent_total_millicredits == 2_500
    assert b.credits_millicredits == FREE - 2_500


async def test_insufficient_credits_reports_balance_and_shortfall(server) -> None:
    info = await expect_error(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=FREE + 1, request_id="big"), metadata=auth("carol")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    )
    assert info.metadata["balance_millicredits"] == str(FREE)
    assert info.metadata["shortfall_millicredits"] == "1"
    assert (await balance(server, "carol")).credits_millicredits == FREE


async def test_same_request_id_concurrently_applies_once(server) -> None:
    req = usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="dup-1", category="api")
    results = await asyncio.gather(*(server.s.usage.Spend(req, metadata=auth("dave")) for _ in range(50)))
    assert len({r.SerializeToString(deterministic=True) for r in results}) == 1
    assert (await balance(server, "dave")).credits_millicredits == FREE - 1_000
    await server.restart()
    again = await server.s.usage.Spend(req, metadata=auth("dave"))
    assert again == results[0]
    assert (await balance(server, "dave")).credits_millicredits == FREE - 1_000


async def test_request_id_reused_with_other_parameters(server) -> None:
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id="x"), metadata=auth("erin"))
    await expect_error(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=11, request_id="x"), metadata=auth("erin")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "REQUEST_ID_REUSED",
    )
    assert (await balance(server, "erin")).credits_millicredits == FREE - 10


async def test_request_ids_are_scoped_to_the_caller(server) -> None:
    req = usage_pb2.SpendRequest(amount_millicredits=10, request_id="same")
    await server.s.usage.Spend(req, metadata=auth("u1"))
    await server.s.usage.Spend(req, metadata=auth("u2"))
    assert (await balance(server, "u1")).credits_millicredits == FREE - 10
    assert (await balance(server, "u2")).credits_millicredits == FREE - 10


async def test_no_overdraft_under_concurrency(server) -> None:
    # 200 concurrent spends of 1 credit against a balance that covers 100.
    reqs = [usage_pb2.SpendRequest(amount_millicredits=1_000, request_id=f"c{i}") for i in range(200)]
    results = await asyncio.gather(*(server.s.usage.Spend(r, metadata=auth("frank")) for r in reqs), return_exceptions=True)
    ok = [r for r in results if isinstance(r, usage_pb2.SpendResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 100 and len(refused) == 100
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused)
    assert min(r.credits_millicredits for r in ok) == 0
    assert (await balance(server, "frank")).credits_millicredits == 0


async def test_reserve_capture_partial_releases_rest(server) -> None:
    r = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=30_000, request_id="h1", category="training"), metadata=auth("gina")
    )
    assert r.hold.status == usage_pb2.HOLD_STATUS_ACTIVE
    b = await balance(server, "gina")
    assert (b.credits_millicredits, b.pending_millicredits) == (FREE - 30_000, 30_000)
    c = await server.s.usage.Capture(
        usage_pb2.CaptureRequest(hold_id=r.hold.id, amount_millicredits=12_000, request_id="c1"), metadata=auth("gina")
    )
    assert c.hold.status == usage_pb2.HOLD_STATUS_CAPTURED
    assert c.hold.captured_millicredits == 12_000
    assert c.transaction.amount_millicredits == -12_000
    b = await balance(server, "gina")
    assert (b.credits_millicredits, b.pending_millicredits, b.spent_total_millicredits) == (FREE - 12_000, 0, 12_000)


async def test_capture_more_than_held_is_refused(server) -> None:
    r = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=5_000, request_id="h"), metadata=auth("hank"))
    await expect_error(
        server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=r.hold.id, amount_millicredits=5_001, request_id="c"), metadata=auth("hank")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_AMOUNT",
    )
    b = await balance(server, "hank")
    assert b.pending_millicredits == 5_000


async def test_release_and_double_release(server) -> None:
    r = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=5_000, request_id="h"), metadata=auth("ivy"))
    rel = await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=r.hold.id, request_id="r1"), metadata=auth("ivy"))
    assert rel.hold.status == usage_pb2.HOLD_STATUS_RELEASED
    assert rel.credits_millicredits == FREE
    await expect_error(
        server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=r.hold.id, request_id="r2"), metadata=auth("ivy")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_ACTIVE",
    )


async def test_hold_of_another_user_is_not_found(server) -> None:
    r = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=5_000, request_id="h"), metadata=auth("jack"))
    await expect_error(
        server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=r.hold.id, request_id="r"), metadata=auth("mallory")),
        grpc.StatusCode.NOT_FOUND,
        "HOLD_NOT_FOUND",
    )


async def test_hold_expires_and_releases_itself(server) -> None:
    r = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=7_000, request_id="h", ttl=Duration(seconds=60)), metadata=auth("kim")
    )
    server.clock.advance(61)
    done = await server.run_jobs()
    assert done["expire_holds"] == 1
    b = await balance(server, "kim")
    assert (b.credits_millicredits, b.pending_millicredits) == (FREE, 0)
    await expect_error(
        server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=r.hold.id, amount_millicredits=1, request_id="c"), metadata=auth("kim")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_ACTIVE",
    )


async def test_spend_draws_allowance_then_earned_then_purchased(server) -> None:
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id="lee", amount_millicredits=50_000, source=common_pb2.EARNING_SOURCE_CHALLENGE,
            source_ref="ch-1", request_id="a1", reason="Challenge",
        ),
        metadata=auth("engine", "service"),
    )
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=120_000, request_id="s"), metadata=auth("lee"))
    lots = {lot.kind: lot.remaining_millicredits for lot in (await balance(server, "lee")).lots}
    assert lots == {common_pb2.LOT_KIND_EARNED: 30_000}
