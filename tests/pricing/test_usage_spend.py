"""Spending by usage: Spend, SpendBatch and Reserve give what was used instead of
an amount, and the service prices it from the rate card version in effect at
the spend's instant (the ledger batch's instant, the transfer's date). The
default rate card (server/pricing/default_rate_card.toml) prices:
sandbox.seconds small/medium/large 1/2/4 millicredits a second,
training.steps 10/25/100 a step, agent.deployments 2,000, template.deployments
1,000, api.calls 100 per 1,000 calls (rounded up per spend)."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import common_pb2, history_pb2, usage_pb2

from tests.calls import FREE, balance, credits, transactions
from tests.harness import auth, expect_error
from tests.pricing.usage_calls import SVC, capture_quantity, reserve_usage, spend_usage, used


async def test_spend_by_usage_is_priced_and_recorded(server) -> None:
    r = await spend_usage(server, "ann", used("sandbox.seconds", 300, size="medium"), "u1", category="sandbox")
    assert r.transaction.amount_millicredits == -600  # 300 s x 2 millicredits
    assert r.credits_millicredits == FREE - 600
    u = r.transaction.usage
    assert (u.meter, u.quantity, dict(u.dimensions)) == ("sandbox.seconds", 300, {"size": "medium"})
    assert (u.rate_card_version, u.unit_price_millicredits, u.per_units, u.amount_millicredits) == (1, 2, 1, 600)
    # Priced at the ledger's instant: the transfer's own date.
    assert u.priced_at == r.transaction.date
    # History carries the same usage; a spend by amount carries none.
    await server.s.usage.Spend(usage_pb2.SpendRequest(user_id="ann", amount_millicredits=5, request_id="a1"), metadata=SVC)
    spends = await transactions(server, "ann", common_pb2.TRANSACTION_TYPE_SPEND)
    assert [t.usage.meter for t in spends] == ["sandbox.seconds", ""]
    assert spends[0].usage == u and not spends[1].HasField("usage")
    assert (await balance(server, "ann")).spent_total_millicredits == 605


async def test_rounding_is_up_per_spend(server) -> None:
    # 100 millicredits per 1,000 calls: one call costs 1 millicredit, 1,001 calls 101.
    one = await spend_usage(server, "rob", used("api.calls", 1), "r1")
    many = await spend_usage(server, "rob", used("api.calls", 1_001), "r2")
    exact = await spend_usage(server, "rob", used("api.calls", 20_000), "r3")
    assert [-x.transaction.amount_millicredits for x in (one, many, exact)] == [1, 101, 2_000]
    assert one.transaction.usage.per_units == 1_000 and one.transaction.usage.unit_price_millicredits == 100
    assert await credits(server, "rob") == FREE - 2_102


async def test_bad_usage_is_refused_with_its_reason(server) -> None:
    cases = [
        (used("sandbox.hours", 1, size="small"), "UNKNOWN_METER"),
        (used("sandbox.seconds", 10), "MISSING_DIMENSION"),
        (used("sandbox.seconds", 10, size="huge"), "INVALID_DIMENSION_VALUE"),
        (used("sandbox.seconds", 10, size="small", gpu="a100"), "UNKNOWN_DIMENSION"),
        (used("agent.deployments", 1, size="small"), "UNKNOWN_DIMENSION"),
        (used("api.calls", 0), "INVALID_QUANTITY"),
        (used("api.calls", -5), "INVALID_QUANTITY"),
        (used("api.calls", 2**62), "INVALID_QUANTITY"),
    ]
    for i, (usage, reason) in enumerate(cases):
        info = await expect_error(spend_usage(server, "bad", usage, f"b{i}"), grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert "Traceback" not in info.reason
        # Reserve refuses the same usage alike.
        await expect_error(reserve_usage(server, "bad", usage, f"h{i}"), grpc.StatusCode.INVALID_ARGUMENT, reason)
    both = usage_pb2.SpendRequest(user_id="bad", amount_millicredits=5, usage=used("api.calls", 5), request_id="both")
    await expect_error(server.s.usage.Spend(both, metadata=SVC), grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_OR_USAGE")
    both_r = usage_pb2.ReserveRequest(user_id="bad", amount_millicredits=5, usage=used("api.calls", 5), request_id="bh")
    await expect_error(server.s.usage.Reserve(both_r, metadata=SVC), grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_OR_USAGE")
    neither = usage_pb2.SpendRequest(user_id="bad", request_id="neither")
    await expect_error(server.s.usage.Spend(neither, metadata=SVC), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    # Nothing was charged, nothing held.
    b = await balance(server, "bad")
    assert (b.credits_millicredits, b.pending_millicredits, b.spent_total_millicredits) == (FREE, 0, 0)


async def test_usage_is_part_of_the_request_for_idempotency(server) -> None:
    first = await spend_usage(server, "ida", used("training.steps", 40, model="base"), "t1")
    assert first.transaction.amount_millicredits == -1_000
    # The same request again: the same answer, once.
    again = await spend_usage(server, "ida", used("training.steps", 40, model="base"), "t1")
    assert again == first
    # The same request_id with another quantity, dimension or meter: refused.
    for other in (used("training.steps", 41, model="base"), used("training.steps", 40, model="large"),
                  used("sandbox.seconds", 40, size="small")):
        await expect_error(spend_usage(server, "ida", other, "t1"), grpc.StatusCode.FAILED_PRECONDITION,
                           "REQUEST_ID_REUSED")
    by_amount = usage_pb2.SpendRequest(user_id="ida", amount_millicredits=1_000, request_id="t1")
    await expect_error(server.s.usage.Spend(by_amount, metadata=SVC), grpc.StatusCode.FAILED_PRECONDITION,
                       "REQUEST_ID_REUSED")
    await server.restart()
    assert await spend_usage(server, "ida", used("training.steps", 40, model="base"), "t1") == first
    assert await credits(server, "ida") == FREE - 1_000


async def test_concurrent_duplicates_apply_once(server) -> None:
    results = await asyncio.gather(*(
        spend_usage(server, "dup", used("template.deployments", 3), "same") for _ in range(20)))
    assert len({r.SerializeToString(deterministic=True) for r in results}) == 1
    assert await credits(server, "dup") == FREE - 3_000


async def test_spend_batch_mixes_amounts_and_usage(server) -> None:
    items = [
        usage_pb2.SpendRequest(user_id="bat", amount_millicredits=7, request_id="i0"),
        usage_pb2.SpendRequest(user_id="bat", usage=used("sandbox.seconds", 10, size="large"), request_id="i1"),
        usage_pb2.SpendRequest(user_id="bat", usage=used("sandbox.seconds", 10), request_id="i2"),  # no size
        usage_pb2.SpendRequest(user_id="bat", usage=used("api.calls", 5), amount_millicredits=1, request_id="i3"),
        usage_pb2.SpendRequest(user_id="bat2", usage=used("agent.deployments", 1), request_id="i4"),
    ]
    r = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=SVC)
    ok = [x.response.transaction.amount_millicredits if x.HasField("response") else x.error.reason for x in r.results]
    assert ok == [-7, -40, "MISSING_DIMENSION", "AMOUNT_OR_USAGE", -2_000]
    assert not r.results[0].response.transaction.HasField("usage")
    assert r.results[1].response.transaction.usage.meter == "sandbox.seconds"
    assert r.results[4].response.transaction.usage.rate_card_version == 1
    # Each item is the same request as its unary Spend (method "Spend"): a replay is its answer.
    replay = await server.s.usage.Spend(items[1], metadata=SVC)
    assert replay == r.results[1].response
    assert (await credits(server, "bat"), await credits(server, "bat2")) == (FREE - 47, FREE - 2_000)


async def test_spend_batch_records_each_priced_item_shared_or_not(server) -> None:
    """Items of one batch with the same usage share a record, whose rows go out
    together (on SQLite one INSERT over their transfer ids), beside items with
    a usage of their own: every transfer gets its own usage row."""
    usages = [used("api.calls", 10)] * 3 + [used("sandbox.seconds", 5, size="small")] * 2 + [used("agent.deployments", 1)]
    items = [
        usage_pb2.SpendRequest(user_id=f"sh{i % 2}", usage=u, request_id=f"s{i}") for i, u in enumerate(usages)
    ] + [usage_pb2.SpendRequest(user_id="sh0", amount_millicredits=3, request_id="s9")]
    r = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=SVC)
    assert [x.response.transaction.amount_millicredits for x in r.results] == [-1, -1, -1, -5, -5, -2_000, -3]
    shown = {x.response.transaction.id: x.response.transaction.usage for x in r.results}
    for user in ("sh0", "sh1"):
        for t in await transactions(server, user, common_pb2.TRANSACTION_TYPE_SPEND):
            assert t.usage == shown[t.id]
    assert sum(x.response.transaction.HasField("usage") for x in r.results) == 6


async def test_reserve_by_usage_then_capture_the_final_quantity(server) -> None:
    held = await reserve_usage(server, "res", used("sandbox.seconds", 600, size="small"), "h1")
    assert held.hold.amount_millicredits == 600
    assert held.hold.usage.meter == "sandbox.seconds" and held.hold.usage.quantity == 600
    assert (await balance(server, "res")).pending_millicredits == 600
    # A hold by usage is not captured by amount.
    await expect_error(
        server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=held.hold.id, amount_millicredits=100, request_id="c0"),
                               metadata=SVC),
        grpc.StatusCode.INVALID_ARGUMENT, "USAGE_HOLD_NEEDS_QUANTITY")
    # More than was reserved costs more than the hold: refused.
    await expect_error(capture_quantity(server, held.hold.id, 601, "c1"), grpc.StatusCode.INVALID_ARGUMENT,
                       "INVALID_AMOUNT")
    done = await capture_quantity(server, held.hold.id, 451, "c2")
    assert done.hold.status == usage_pb2.HOLD_STATUS_CAPTURED and done.hold.captured_millicredits == 451
    assert done.transaction.amount_millicredits == -451
    u = done.transaction.usage
    assert (u.meter, u.quantity, dict(u.dimensions), u.rate_card_version, u.amount_millicredits) == (
        "sandbox.seconds", 451, {"size": "small"}, 1, 451)
    assert u.priced_at == held.hold.usage.priced_at  # the price agreed at Reserve
    assert done.hold.usage.quantity == 600
    assert await capture_quantity(server, held.hold.id, 451, "c2") == done
    b = await balance(server, "res")
    assert (b.credits_millicredits, b.pending_millicredits) == (FREE - 451, 0)


async def test_holds_by_amount_are_not_captured_by_quantity(server) -> None:
    h = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=500, request_id="h"), metadata=auth("amt"))
    await expect_error(
        server.s.usage.Capture(usage_pb2.CaptureRequest(hold_id=h.hold.id, quantity=5, request_id="c"), metadata=auth("amt")),
        grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_HOLD_NEEDS_AMOUNT")
    # Captured by 0 of its quantity, a hold by usage charges nothing.
    z = await reserve_usage(server, "amt", used("agent.deployments", 1), "hz")
    done = await capture_quantity(server, z.hold.id, 0, "cz")
    assert done.hold.captured_millicredits == 0 and not done.HasField("transaction")
    assert await credits(server, "amt") == FREE - 500


async def test_spending_report_groups_by_meter_and_dimension(server) -> None:
    for i, (q, size) in enumerate(((100, "small"), (50, "small"), (10, "large"))):
        await spend_usage(server, "rep", used("sandbox.seconds", q, size=size), f"s{i}", category="sandbox")
    await spend_usage(server, "rep", used("api.calls", 3), "a1")
    await server.s.usage.Spend(usage_pb2.SpendRequest(user_id="rep", amount_millicredits=9, request_id="x"), metadata=SVC)
    h = await reserve_usage(server, "rep", used("sandbox.seconds", 20, size="large"), "h")
    await capture_quantity(server, h.hold.id, 15, "c")
    r = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(), metadata=auth("rep"))
    assert r.total_spent_millicredits == 150 + 40 + 1 + 9 + 60
    meters = {m.meter: m for m in r.meters}
    assert set(meters) == {"api.calls", "sandbox.seconds"}
    sb = meters["sandbox.seconds"]
    assert (sb.quantity, sb.spent_millicredits, sb.operations) == (175, 250, 4)
    assert (sb.average_millicredits_per_unit.numerator, sb.average_millicredits_per_unit.denominator) == (10, 7)
    assert (sb.average_millicredits_per_operation.numerator, sb.average_millicredits_per_operation.denominator) == (125, 2)
    dims = {(d.dimension, d.value): (d.quantity, d.spent_millicredits, d.operations) for d in sb.dimensions}
    assert dims == {("size", "large"): (25, 100, 2), ("size", "small"): (150, 150, 2)}
    api = meters["api.calls"]
    assert (api.quantity, api.spent_millicredits, api.operations, list(api.dimensions)) == (3, 1, 1, [])
    assert (api.average_millicredits_per_unit.numerator, api.average_millicredits_per_unit.denominator) == (1, 3)
