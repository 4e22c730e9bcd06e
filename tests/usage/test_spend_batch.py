"""UsageService/SpendBatch on SQLite and PostgreSQL: each item is the same
request as a unary Spend (same result, same error code, reason and metadata,
same idempotency, revenue share, holds and refill trigger), items succeed or fail on their own, a retried batch
replays what was applied and applies the rest, concurrent batches on one hot
account never overdraft, and the batch goes through the group commit."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from flownexus.billing.v1 import admin_pb2, common_pb2, usage_pb2
from google.rpc import code_pb2

from tests.calls import FREE, credits, reserve, spend
from tests.harness import Running, auth, error_info, expect_error
from tests.refill.test_refill import (
    charges,
    configure,
    in_flight_jobs,
    refill_grants,
    rserver,
    run_worker,
    save_card,
)
from tests.stripe_fake import StripeFake

__all__ = ["rserver"]  # the fixture, shared with tests/refill/test_refill.py

SERVICE = auth("metering", "service")


def req(amount: int, rid: str, **fields: Any) -> usage_pb2.SpendRequest:
    return usage_pb2.SpendRequest(amount_millicredits=amount, request_id=rid, **{"category": "batch", **fields})


async def batch(server: Running, items: list[usage_pb2.SpendRequest], md: Any = SERVICE) -> list[usage_pb2.SpendBatchResult]:
    r = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=md)
    assert len(r.results) == len(items)
    return list(r.results)


async def unary_outcome(server: Running, item: usage_pb2.SpendRequest, md: Any) -> usage_pb2.SpendBatchResult:
    """What a unary Spend answers for the same request, in a batch result's shape."""
    try:
        return usage_pb2.SpendBatchResult(response=await server.s.usage.Spend(item, metadata=md))
    except grpc.aio.AioRpcError as exc:
        info = error_info(exc)
        return usage_pb2.SpendBatchResult(error=common_pb2.BatchItemError(
            code=exc.code().value[0], message=exc.details() or "", reason=info.reason, domain=info.domain,
            metadata=dict(info.metadata),
        ))


async def test_mixed_batch_answers_each_item_as_its_unary_spend(server: Running) -> None:
    user = auth("ann")
    first = await spend(server, "ann", 7, "done-before", category="batch")  # applied by a unary Spend
    await spend(server, "ann", 5, "used-before", category="batch")
    await reserve(server, "ann", 50_000, "hold-1")  # held credits cannot be spent
    items = [
        req(1_000, "good-1"),
        req(2_000, "shared", app_id="app-x", publisher_user_id="pub"),  # a user token may not pay a share
        req(7, "done-before"),  # a retry: replayed, not applied again
        req(6, "used-before"),  # same id, other parameters
        req(0, "zero"),  # bad amount
        req(1, "bad-cat", category="NOT VALID"),
        req(1, ""),  # no request_id
        req(1, "other", user_id="bob"),  # a user token reaches only its own account
        req(1, "self-share", app_id="a", publisher_user_id="ann"),
        req(3_000, "good-2", metadata={"job": "j1"}),
        req(FREE, "short"),  # more than what is left (last: the unary retry sees the same balance)
    ]
    results = await batch(server, items, user)
    kinds = [r.WhichOneof("result") for r in results]
    assert kinds == ["response", "error", "response", "error", "error", "error", "error", "error", "error", "response", "error"]
    reasons = [r.error.reason for r in results if r.HasField("error")]
    assert reasons == [
        "REVENUE_SHARE_NOT_ALLOWED", "REQUEST_ID_REUSED", "INVALID_AMOUNT", "INVALID_CATEGORY", "MISSING_REQUEST_ID",
        "NOT_YOUR_ACCOUNT", "SELF_REVENUE_SHARE", "INSUFFICIENT_CREDITS",
    ]
    assert [r.error.code for r in results if r.HasField("error")] == [
        code_pb2.PERMISSION_DENIED, code_pb2.FAILED_PRECONDITION, *[code_pb2.INVALID_ARGUMENT] * 3,
        code_pb2.PERMISSION_DENIED, code_pb2.INVALID_ARGUMENT, code_pb2.FAILED_PRECONDITION,
    ]
    assert results[2].response == first
    left = FREE - 12 - 50_000 - 1_000 - 3_000
    assert results[9].response.credits_millicredits == left
    assert results[9].response.transaction.metadata["job"] == "j1"
    short = results[10].error.metadata
    assert (short["balance_millicredits"], short["shortfall_millicredits"]) == (str(left), str(FREE - left))
    assert await credits(server, "ann") == left
    assert await credits(server, "pub") == FREE
    # Every item, sent again as a unary Spend: the same answer (replays for the
    # applied ones, the same error for the refused ones, nothing applied twice).
    for item, result in zip(items, results, strict=True):
        assert await unary_outcome(server, item, user) == result, item.request_id
    assert await credits(server, "ann") == left
    # The platform service that runs the app pays the share, as with a unary Spend.
    (shared,) = await batch(server, [req(2_000, "shared", user_id="ann", app_id="app-x", publisher_user_id="pub")])
    assert shared.response.credits_millicredits == left - 2_000
    assert await credits(server, "pub") == FREE + 2_000 * 70 // 100


async def test_short_item_reports_what_unary_reports(server: Running) -> None:
    (r,) = await batch(server, [req(FREE + 1, "big", user_id="carol")])
    assert r.error.code == code_pb2.FAILED_PRECONDITION and r.error.reason == "INSUFFICIENT_CREDITS"
    assert r.error.domain == "billing.flownexus.dev"
    assert (r.error.metadata["balance_millicredits"], r.error.metadata["shortfall_millicredits"]) == (str(FREE), "1")
    assert await unary_outcome(server, req(FREE + 1, "big", user_id="carol"), SERVICE) == r


async def test_a_batch_is_refused_whole_when_too_large_empty_or_with_duplicate_ids(server: Running) -> None:
    too_many = [req(1, f"t{i}", user_id="dan") for i in range(1_001)]
    info = await expect_error(
        server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=too_many), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE",
    )
    assert info.metadata["max"] == "1000"
    await expect_error(
        server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT, "BATCH_EMPTY",
    )
    dup = [req(1, "a", user_id="dan"), req(2, "b", user_id="dan"), req(3, "a", user_id="eve")]
    info = await expect_error(
        server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=dup), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_REQUEST_ID",
    )
    assert info.metadata["request_id"] == "a"
    await expect_error(
        server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=dup[:1])),
        grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN",
    )
    # Nothing of the refused batches was applied: the ids are still free.
    results = await batch(server, too_many[:1000])
    assert all(r.HasField("response") for r in results)
    assert await credits(server, "dan") == FREE - 1_000
    assert await credits(server, "eve") == FREE


async def test_a_retried_batch_replays_what_was_applied_and_applies_the_rest(server: Running) -> None:
    items = [req(100 + i, f"r{i}", user_id=f"u{i % 3}") for i in range(40)]
    partial = await batch(server, items[:25])  # as if the first attempt got through in part
    await server.restart()  # the replays come from the database
    full = await batch(server, items)
    assert full[:25] == partial
    assert all(r.HasField("response") for r in full)
    again = await batch(server, items)
    assert again == full
    for u in range(3):
        assert await credits(server, f"u{u}") == FREE - sum(100 + i for i in range(40) if i % 3 == u)
    ids = [r.response.transaction.id for r in full]
    assert len(set(ids)) == 40


async def test_concurrent_batches_on_one_hot_account_never_overdraft(server: Running) -> None:
    assert server.app is not None
    stats = server.writer_stats
    batches_before, ops_before = stats.batches, stats.operations
    calls = [
        [req(150, f"h{c}-{i}", user_id="hot", **({"app_id": "app", "publisher_user_id": "dev"} if i % 5 == 0 else {}))
         for i in range(100)]
        for c in range(10)
    ]
    out = await asyncio.gather(*(batch(server, items) for items in calls))
    results = [r for rs in out for r in rs]
    ok = [r for r in results if r.HasField("response")]
    refused = [r for r in results if r.HasField("error")]
    assert len(ok) == FREE // 150
    assert {r.error.reason for r in refused} == {"INSUFFICIENT_CREDITS"}
    assert all(r.response.credits_millicredits >= 0 for r in ok)
    assert sorted(r.response.credits_millicredits for r in ok) == [FREE - 150 * n for n in range(len(ok), 0, -1)]
    assert await credits(server, "hot") == FREE - 150 * len(ok)
    shared = sum(1 for rs, items in zip(out, calls, strict=True) for r, it in zip(rs, items, strict=True) if it.app_id and r.HasField("response"))
    assert await credits(server, "dev") == FREE + shared * (150 * 70 // 100)
    # One durable commit covered many items (group commit, not one per item).
    assert stats.operations - ops_before >= 1_000
    assert stats.batches - batches_before <= 100


async def test_a_batch_crossing_the_refill_threshold_enqueues_one_refill(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "fay"
    await save_card(server, stripe_fake, user)
    await configure(server, user)  # below 50 credits: refill 100
    before = len(charges(stripe_fake))
    # Twenty spends of 3 credits in one batch cross the threshold once, inside it.
    results = await batch(server, [req(3_000, f"f{i}") for i in range(20)], auth(user))
    assert all(r.HasField("response") for r in results)
    assert len(charges(stripe_fake)) == before  # spending never waits on Stripe
    assert await in_flight_jobs(server, user) == 1
    await run_worker(server)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 1
    assert await refill_grants(server, user) == 1
    assert await credits(server, user) == FREE - 60_000 + 100_000


async def test_a_callers_backlog_does_not_hold_up_other_callers(server: Running) -> None:
    """Callers take turns in the writer: while one service has 3,000 spends
    queued, a user's Spend and an admin's AdjustBalance (an operation that
    needs a batch of its own) are applied within a batch or two, not after
    the backlog. Counted in transfer ids, not in time."""
    assert server.app is not None
    stats = server.writer_stats
    before = stats.operations
    bulk = auth("bulk-meter", "service")
    calls = [[req(1, f"b{c}-{i}", user_id=f"m{i}") for i in range(1_000)] for c in range(3)]
    flood = [asyncio.ensure_future(batch(server, items, bulk)) for items in calls]
    while stats.operations - before < 256:  # noqa: ASYNC110 - the backlog is being applied
        await asyncio.sleep(0.001)
    user_spend = spend(server, "ann", 7, "ann-1")
    adjust = server.s.admin.AdjustBalance(
        admin_pb2.AdjustBalanceRequest(
            user_id="ann", amount_millicredits=1_000, reason="goodwill", lot=common_pb2.LOT_KIND_EARNED, request_id="adj-1"
        ),
        metadata=auth("ops", "admin"),
    )
    mine, adjusted = await asyncio.gather(user_spend, adjust)
    out = await asyncio.gather(*flood)
    # Transaction ids are decimal strings: compared as numbers, not as text.
    bulk_ids = [int(r.response.transaction.id) for rs in out for r in rs]
    assert len(bulk_ids) == 3_000
    for tid in (int(mine.transaction.id), int(adjusted.transaction.id)):
        # First come, first served would put both after all 3,000.
        assert sum(1 for b in bulk_ids if b > tid) >= 1_500
    assert await credits(server, "ann") == FREE - 7 + 1_000
