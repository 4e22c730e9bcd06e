"""PricingService through the real server on both databases: the default
card's meters, estimates and their rounding, publishing versions (scheduled,
idempotent, admin only, audited) and bad cards refused whole."""

from __future__ import annotations

import json

import grpc
from flownexus.billing.v1 import admin_pb2, admin_pb2_grpc, pricing_pb2

from server.ledger.model import MAX_AMOUNT
from tests.harness import Running, expect_error
from tests.pricing.helpers import (
    ADMIN,
    DEFAULT,
    SERVICE,
    USER,
    ceil_div,
    doubled_default,
    estimate,
    meter,
    publish,
    stub,
    ts,
    us,
    usage,
)

LEAD_US = 5_000_000  # BILLING_RATE_CARD_LEAD_SECONDS' default
HOUR_US = 3_600_000_000


async def test_the_default_card_prices_the_five_uses_of_credits(server: Running) -> None:
    s = stub(server)
    listed = await s.ListMeters(pricing_pb2.ListMetersRequest(), metadata=USER)
    assert listed.version == 1
    assert [m.name for m in listed.meters] == sorted(DEFAULT)
    for m in listed.meters:
        per, prices = DEFAULT[m.name]
        assert m.per_units == per and m.unit and m.description
        got = {tuple(sorted(p.dimensions.items())): p.unit_price_millicredits for p in m.prices}
        assert got == prices, m.name
    card = (await s.GetRateCard(pricing_pb2.GetRateCardRequest(), metadata=SERVICE)).rate_card
    # The file's first version prices every instant, the oldest included.
    assert (card.version, us(card.effective_time), card.published_by) == (1, 0, "config")
    assert list(card.meters) == list(listed.meters)
    old = await s.GetRateCard(pricing_pb2.GetRateCardRequest(as_of_time=ts(1)), metadata=USER)
    assert old.rate_card.version == 1


async def test_each_meter_and_dimension_value_is_priced_by_the_rule(server: Running) -> None:
    for name, (per, prices) in DEFAULT.items():
        for combo, price in prices.items():
            for quantity in (1, 7, 999, 1000, 1001, 3600):
                got = await estimate(server, usage(name, quantity, **dict(combo)))
                assert (got.amount_millicredits, got.version, got.unit_price_millicredits, got.per_units) == (
                    ceil_div(quantity * price, per), 1, price, per), (name, combo, quantity)


async def test_rounding_is_up_once_per_spend_and_never_below_one_millicredit(server: Running) -> None:
    calls = [(1, 1), (9, 1), (10, 1), (11, 2), (999, 100), (1000, 100), (1001, 101), (10_000, 1000)]
    for quantity, amount in calls:
        got = await estimate(server, usage("api.calls", quantity))
        assert got.amount_millicredits == amount, quantity
    # The largest quantity prices exactly, in integers (no float would keep the last digit).
    big = await estimate(server, usage("api.calls", 10**12 - 1))
    assert big.amount_millicredits == ceil_div((10**12 - 1) * 100, 1000) == 100_000_000_000
    # A price per large batches: 1 millicredit per 7 units rounds each spend up.
    await publish(server, [meter("odd.units", "unit", 1, per_units=7)], "odd", effective_us=server.clock.now_us())
    server.clock.advance(LEAD_US / 1e6)
    for quantity, amount in [(1, 1), (7, 1), (8, 2), (14, 2), (15, 3)]:
        assert (await estimate(server, usage("odd.units", quantity))).amount_millicredits == amount


async def test_usage_the_card_cannot_price_is_refused_with_its_reason(server: Running) -> None:
    cases = [
        (usage("sandbox.hours", 1, size="small"), "UNKNOWN_METER"),
        (usage("", 1), "UNKNOWN_METER"),
        (usage("Sandbox Seconds", 1), "UNKNOWN_METER"),
        (usage("sandbox.seconds", 1), "MISSING_DIMENSION"),
        (usage("sandbox.seconds", 1, size="huge"), "INVALID_DIMENSION_VALUE"),
        (usage("sandbox.seconds", 1, size="small", region="eu"), "UNKNOWN_DIMENSION"),
        (usage("api.calls", 1, size="small"), "UNKNOWN_DIMENSION"),
        (usage("api.calls", 0), "INVALID_QUANTITY"),
        (usage("api.calls", -5), "INVALID_QUANTITY"),
        (usage("api.calls", 10**12 + 1), "INVALID_QUANTITY"),
        (usage("sandbox.seconds", 1, size="SMALL"), "INVALID_DIMENSION_VALUE"),
    ]
    for u, reason in cases:
        info = await expect_error(estimate(server, u), grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert info.metadata["field"].startswith("usage."), (u, info)
    # A usage whose price passes the largest amount one spend may cost.
    await publish(server, [meter("gpu.hours", "hour", 1_000_000)], "dear", effective_us=server.clock.now_us())
    server.clock.advance(LEAD_US / 1e6)
    assert (await estimate(server, usage("gpu.hours", 10**9))).amount_millicredits == MAX_AMOUNT
    await expect_error(estimate(server, usage("gpu.hours", 10**9 + 1)), grpc.StatusCode.INVALID_ARGUMENT,
                       "INVALID_QUANTITY")


async def test_a_scheduled_change_prices_each_side_of_its_instant(server: Running) -> None:
    s = stub(server)
    now = server.clock.now_us()
    change = now + 24 * HOUR_US
    v2 = await publish(server, doubled_default(), "double", effective_us=change)
    assert (v2.version, us(v2.effective_time), v2.published_by, us(v2.publish_time)) == (2, change, "ops", now)
    # Nothing changes before the instant, to the microsecond; everything after it.
    for at, version, factor in [(now, 1, 1), (change - 1, 1, 1), (change, 2, 2), (change + HOUR_US, 2, 2)]:
        card = (await s.GetRateCard(pricing_pb2.GetRateCardRequest(as_of_time=ts(at)), metadata=USER)).rate_card
        assert card.version == version, at
        got = await estimate(server, usage("sandbox.seconds", 3600, size="large"), at)
        assert (got.version, got.amount_millicredits) == (version, 3600 * 4 * factor), at
    assert (await s.ListMeters(pricing_pb2.ListMetersRequest(), metadata=USER)).version == 1
    assert (await estimate(server, usage("agent.deployments", 1))).amount_millicredits == 2000
    server.clock.set_us(change)
    assert (await s.ListMeters(pricing_pb2.ListMetersRequest(), metadata=USER)).version == 2
    assert (await estimate(server, usage("agent.deployments", 1))).amount_millicredits == 4000
    # A later publish for an earlier instant takes over from that instant, until the scheduled one.
    server.clock.set_us(now)
    v3 = await publish(server, doubled_default()[:1], "sandbox-only")
    assert us(v3.effective_time) == now + LEAD_US  # "now" is after the lead time
    got = await estimate(server, usage("sandbox.seconds", 1, size="small"), now + LEAD_US)
    assert got.version == 3
    await expect_error(estimate(server, usage("api.calls", 1), now + LEAD_US), grpc.StatusCode.INVALID_ARGUMENT,
                       "UNKNOWN_METER")
    assert (await estimate(server, usage("api.calls", 1), change)).version == 2
    # By number, whatever the instant.
    got_v1 = await s.GetRateCard(pricing_pb2.GetRateCardRequest(version=1), metadata=USER)
    assert got_v1.rate_card.version == 1 and len(got_v1.rate_card.meters) == 5
    listed = await s.ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(), metadata=USER)
    assert [v.version for v in listed.versions] == [3, 2, 1] and not listed.next_page_token
    assert all(not v.meters for v in listed.versions)
    assert [v.card_sha256 for v in listed.versions][1] == v2.card_sha256


async def test_versions_survive_a_restart_and_page_newest_first(server: Running) -> None:
    s = stub(server)
    for n in range(4):
        await publish(server, [meter("api.calls", "call", 100 + n, per_units=1000)], f"p{n}",
                      effective_us=server.clock.now_us() + (n + 1) * HOUR_US)
    await server.restart()
    s = stub(server)
    seen, token = [], ""
    while True:
        page = await s.ListRateCardVersions(
            pricing_pb2.ListRateCardVersionsRequest(page_size=2, page_token=token), metadata=USER)
        assert len(page.versions) <= 2
        seen += [v.version for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    got = await estimate(server, usage("api.calls", 1000), server.clock.now_us() + 4 * HOUR_US)
    assert (got.version, got.amount_millicredits) == (5, 103)
    await expect_error(s.ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(page_token="garbage"),
                                              metadata=USER), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    await expect_error(s.GetRateCard(pricing_pb2.GetRateCardRequest(version=9), metadata=USER),
                       grpc.StatusCode.NOT_FOUND, "RATE_CARD_VERSION_NOT_FOUND")
    await expect_error(s.GetRateCard(pricing_pb2.GetRateCardRequest(version=1, as_of_time=ts(5)), metadata=USER),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERSION")


async def test_publishing_is_admin_only_idempotent_and_audited(server: Running) -> None:
    card = doubled_default()
    at = server.clock.now_us() + HOUR_US
    for md in (USER, SERVICE):
        await expect_error(publish(server, card, "x", effective_us=at, md=md), grpc.StatusCode.PERMISSION_DENIED,
                           "ROLE_REQUIRED")
    first = await publish(server, card, "change-1", effective_us=at)
    again = await publish(server, card, "change-1", effective_us=at)
    assert again == first and first.version == 2
    await expect_error(publish(server, card[:2], "change-1", effective_us=at), grpc.StatusCode.FAILED_PRECONDITION,
                       "REQUEST_ID_REUSED")
    await expect_error(publish(server, card, "change-1", effective_us=at + 1), grpc.StatusCode.FAILED_PRECONDITION,
                       "REQUEST_ID_REUSED")
    listed = await stub(server).ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(), metadata=USER)
    assert [v.version for v in listed.versions] == [2, 1]
    actions = await admin_pb2_grpc.AdminServiceStub(server.s.channel).ListAdminActions(
        admin_pb2.ListAdminActionsRequest(action="PublishRateCard"), metadata=ADMIN)
    assert [(a.actor, a.request_id) for a in actions.actions] == [("ops", "change-1")]
    # It changed no wallet: no user, and the details name the version it made and from when.
    assert actions.actions[0].user_id == ""
    assert json.loads(actions.actions[0].details_json) == {
        "service_call": "PublishRateCard", "rate_card_version": 2, "effective_at_us": at}
    # The past is never repriced.
    await expect_error(publish(server, card, "late", effective_us=server.clock.now_us() - 1),
                       grpc.StatusCode.INVALID_ARGUMENT, "EFFECTIVE_TIME_IN_PAST")


def _dims(**values: list[str]) -> dict[str, list[str]]:
    return values


BAD_CARDS: list[tuple[str, list[pricing_pb2.Meter], str]] = [
    ("no meters", [], "meters"),
    ("a price of zero", [meter("api.calls", "call", 0)], "meters.api.calls.price"),
    ("a negative price", [meter("api.calls", "call", -1)], "meters.api.calls.price"),
    ("a price above the bound", [meter("api.calls", "call", 1_000_001)], "meters.api.calls.price"),
    ("a negative per_units", [meter("api.calls", "call", 1, per_units=-1)], "meters.api.calls.per_units"),
    ("per_units above the bound", [meter("api.calls", "call", 1, per_units=10**9 + 1)],
     "meters.api.calls.per_units"),
    ("a bad meter name", [meter("API calls", "call", 1)], "meters.API calls"),
    ("a meter name with an empty word", [meter("api..calls", "call", 1)], "meters.api..calls"),
    ("a missing unit", [meter("api.calls", "", 1)], "meters.api.calls.unit"),
    ("a bad unit", [meter("api.calls", "Call", 1)], "meters.api.calls.unit"),
    ("a meter twice", [meter("api.calls", "call", 1), meter("api.calls", "call", 2)], "meters[1].name"),
    ("an unpriced value", [meter("sandbox.seconds", "second", {(("size", "small"),): 1},
                                 dims=_dims(size=["small", "large"]))], "meters.sandbox.seconds.prices.large"),
    ("a price for an unknown value", [meter("sandbox.seconds", "second",
                                            {(("size", "small"),): 1, (("size", "huge"),): 9},
                                            dims=_dims(size=["small"]))], "meters.sandbox.seconds.prices.huge"),
    ("a price naming another dimension", [meter("sandbox.seconds", "second", {(("region", "eu"),): 1},
                                                dims=_dims(size=["small"]))], "meters[0].prices[0].dimensions"),
    ("a dimension without values", [meter("sandbox.seconds", "second", {}, dims=_dims(size=[]))],
     "meters.sandbox.seconds.dimensions.size"),
    ("a value twice", [meter("sandbox.seconds", "second", {(("size", "small"),): 1},
                             dims=_dims(size=["small", "small"]))], "meters.sandbox.seconds.dimensions.size"),
    ("a bad value", [meter("sandbox.seconds", "second", {(("size", "Small!"),): 1}, dims=_dims(size=["Small!"]))],
     "meters.sandbox.seconds.dimensions.size[0]"),
    ("a meter without dimensions priced twice", [pricing_pb2.Meter(name="api.calls", unit="call", prices=[
        pricing_pb2.MeterPrice(unit_price_millicredits=1), pricing_pb2.MeterPrice(unit_price_millicredits=2)])],
     "meters[0].prices"),
    ("a combination priced twice", [meter("sandbox.seconds", "second", {(("size", "small"),): 1},
                                          dims=_dims(size=["small"]))], ""),
    ("a long description", [meter("api.calls", "call", 1, description="x" * 201)], "meters.api.calls.description"),
    ("a control character", [meter("api.calls", "call", 1, description="a\x07b")], "meters.api.calls.description"),
    ("too many meters", [meter(f"m.n{i}", "unit", 1) for i in range(65)], "meters"),
    ("too many dimensions", [meter("x.y", "unit", {(("a", "v"), ("b", "v"), ("c", "v"), ("d", "v")): 1},
                                   dims=_dims(a=["v"], b=["v"], c=["v"], d=["v"]))], "meters.x.y.dimensions"),
]


async def test_a_bad_card_is_refused_whole_naming_the_field(server: Running) -> None:
    good = doubled_default()
    for i, (what, bad, path) in enumerate(BAD_CARDS):
        meters = bad
        if what == "a combination priced twice":
            meters = [pricing_pb2.Meter(name="sandbox.seconds", unit="second", dimensions=bad[0].dimensions,
                                        prices=[bad[0].prices[0], bad[0].prices[0]])]
            path = "meters[0].prices[1]"
        # The good meters beside the bad one are refused with it: nothing is published.
        info = await expect_error(publish(server, list(meters) + good[2:4] if what not in (
            "no meters", "too many meters") else meters, f"bad-{i}"),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RATE_CARD")
        assert info.metadata["field"] == path, (what, info.metadata)
    listed = await stub(server).ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(), metadata=USER)
    assert [v.version for v in listed.versions] == [1]


async def test_a_process_that_cannot_read_the_versions_stops_pricing_until_it_can(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    """PRICES_STALE: past the lead time without a good read of the versions, a
    process refuses to price (it could miss a version about to take effect),
    and prices again at its next good read."""
    import asyncio

    from sqlalchemy import text

    from tests.harness import serving, until

    async with serving(db_url, clock, rate_card_lead_seconds=1.0) as server:
        u = usage("api.calls", 1000)
        assert (await estimate(server, u)).amount_millicredits == 100
        async with server.started.db.writer.begin() as conn:  # the versions cannot be read
            await conn.execute(text("ALTER TABLE rate_card_versions RENAME TO rate_card_versions_away"))
        try:
            await asyncio.sleep(1.5)
            await expect_error(estimate(server, u), grpc.StatusCode.UNAVAILABLE, "PRICES_STALE")
        finally:
            async with server.started.db.writer.begin() as conn:
                await conn.execute(text("ALTER TABLE rate_card_versions_away RENAME TO rate_card_versions"))

        async def priced() -> bool:
            try:
                assert (await estimate(server, u)).amount_millicredits == 100
                return True
            except grpc.aio.AioRpcError:
                return False

        await until(priced, "pricing did not resume after the versions could be read again", every=0.1)
