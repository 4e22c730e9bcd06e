"""Balance alerts: thresholds crossed once per downward crossing, re-armed by
a recovery, one event however many concurrent spends cross together, the
defaults, and the low-balance story end to end through a signed webhook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from flownexus.billing.v1 import admin_pb2, balance_pb2, common_pb2, events_pb2

from server.platform.clock import ManualClock
from tests.calls import spend
from tests.events.receiver import WEBHOOK_SETTINGS, Receiver, create_endpoint, list_events, payload
from tests.harness import WAIT, Running, auth, expect_error, serving

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def hooked(db_url: str, clock: ManualClock) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **WEBHOOK_SETTINGS) as running:
        yield running


async def set_alerts(server: Running, user: str, credits: list[int], rid: str = "a1") -> events_pb2.BalanceAlerts:
    r = await server.s.events.SetBalanceAlerts(
        events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[c * 1000 for c in credits], request_id=rid),
        metadata=auth(user),
    )
    return r.alerts


async def top_up(server: Running, user: str, credits: int, rid: str) -> None:
    await server.s.admin.AdjustBalance(
        admin_pb2.AdjustBalanceRequest(user_id=user, amount_millicredits=credits * 1000, reason="top-up", request_id=rid,
                                  lot=common_pb2.LOT_KIND_PURCHASED),
        metadata=auth("ops", "admin"),
    )


def alerts(events: list[events_pb2.Event]) -> list[tuple[str, int]]:
    return [(e.type, payload(e)["threshold_millicredits"] // 1000) for e in events]


async def test_low_balance_story_end_to_end(hooked: Running) -> None:
    """Two thresholds, one spend crosses both: one balance.low each, delivered
    as signed webhooks that the standardwebhooks verifier accepts; a top-up
    re-arms them (balance.recovered), and the next crossing fires again."""
    server = hooked
    receiver = await Receiver().start()
    try:
        await create_endpoint(server, receiver, ["balance.low", "balance.recovered"])
        got = await set_alerts(server, "alice", [50, 30])
        assert list(got.thresholds_millicredits) == [50_000, 30_000] and not got.defaults
        watch = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth("alice"))
        assert (await watch.read()).type == balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT

        await spend(server, "alice", 75_000, "s1")  # 100 -> 25 credits: below 50 and 30 at once
        await spend(server, "alice", 1_000, "s2")  # still below both: nothing new
        assert alerts(await list_events(server, "alice")) == [("balance.low", 50), ("balance.low", 30)]
        first = (await list_events(server, "alice"))[0]
        assert payload(first) == {"threshold_millicredits": 50_000, "balance_millicredits": 25_000,
                                  "previous_balance_millicredits": 100_000}

        # Signed per Standard Webhooks; webhook-id is the event id.
        hooks = await receiver.wait_for(2)
        assert [h.type for h in hooks] == ["balance.low", "balance.low"]
        assert [h.id for h in hooks] == [e.id for e in await list_events(server, "alice")]
        assert hooks[0].body["data"]["threshold_millicredits"] == 50_000
        assert hooks[0].user_id == "alice"

        # The balance watch shows the alerts too.
        seen = []
        while len([m for m in seen if m.type == balance_pb2.BALANCE_EVENT_TYPE_BALANCE_LOW]) < 2:
            seen.append(await asyncio.wait_for(watch.read(), WAIT))
        watch.cancel()

        await top_up(server, "alice", 40, "t1")  # 24 -> 64: back above both
        await spend(server, "alice", 20_000, "s3")  # 64 -> 44: below 50 only
        assert alerts(await list_events(server, "alice")) == [
            ("balance.low", 50), ("balance.low", 30),
            ("balance.recovered", 50), ("balance.recovered", 30),
            ("balance.low", 50),
        ]
        await receiver.wait_for(5)
        assert [h.type for h in receiver.received][2:] == ["balance.recovered", "balance.recovered", "balance.low"]
    finally:
        await receiver.stop()


async def test_concurrent_spends_crossing_together_give_one_event(server: Running) -> None:
    await set_alerts(server, "bob", [75])
    results = await asyncio.gather(*(spend(server, "bob", 1_000, f"c{i}") for i in range(50)))
    assert results[0].credits_millicredits >= 0
    assert alerts(await list_events(server, "bob")) == [("balance.low", 75)]


async def test_defaults_and_settings(server: Running) -> None:
    r = await server.s.events.GetBalanceAlerts(events_pb2.GetBalanceAlertsRequest(), metadata=auth("cara"))
    # 10 % of the free tier's 100 credits; no auto-refill.
    assert list(r.alerts.thresholds_millicredits) == [10_000] and r.alerts.defaults
    await spend(server, "cara", 91_000, "s1")
    assert alerts(await list_events(server, "cara")) == [("balance.low", 10)]
    await expect_error(
        server.s.events.SetBalanceAlerts(
            events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[5, 5], request_id="x"), metadata=auth("cara")
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ALERTS",
    )
    # A user token reaches only its own wallet.
    await expect_error(
        server.s.events.GetBalanceAlerts(events_pb2.GetBalanceAlertsRequest(user_id="dan"), metadata=auth("cara")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Empty thresholds turn balance alerts off; a reset brings the defaults back.
    off = await set_alerts(server, "cara", [], rid="off")
    assert list(off.thresholds_millicredits) == [] and not off.defaults
    back = await server.s.events.SetBalanceAlerts(
        events_pb2.SetBalanceAlertsRequest(reset_to_defaults=True, request_id="reset"), metadata=auth("cara")
    )
    assert back.alerts.defaults and list(back.alerts.thresholds_millicredits) == [10_000]


async def test_credits_expiring_once_per_lot_and_forecast_once_per_day(server: Running, clock: ManualClock) -> None:
    """The scanning jobs run on the service clock: a promotional lot ending
    within the default 3 days is announced once, however often the job runs;
    a wallet whose 30-day spend rate empties it within 3 days gets one
    forecast.runs_out per UTC day."""
    ends = clock.now_us() + 2 * 86_400 * 1_000_000
    await server.s.admin.AdjustBalance(
        admin_pb2.AdjustBalanceRequest(
            user_id="eve", amount_millicredits=5_000, reason="promo", request_id="p1", lot=common_pb2.LOT_KIND_EARNED,
            expires_at={"seconds": ends // 1_000_000},
        ),
        metadata=auth("ops", "admin"),
    )
    assert await server.run_job("credits_expiring") == 1
    assert await server.run_job("credits_expiring") == 0
    expiring = await list_events(server, "eve", ["credits.expiring"])
    assert [(payload(e)["lot_kind"], payload(e)["remaining_millicredits"]) for e in expiring] == [("earned", 5_000)]

    await spend(server, "eve", 100_000, "burn")  # 105 -> 5 credits in a day: ~3.3 credits a day
    assert await server.run_job("forecast_runs_out") == 1
    clock.advance(3600)
    assert await server.run_job("forecast_runs_out") == 0  # the same UTC day
    forecast = await list_events(server, "eve", ["forecast.runs_out"])
    assert payload(forecast[0])["balance_millicredits"] == 5_000 and payload(forecast[0])["forecast_days"] == 3


async def test_a_lead_stored_beyond_a_year_is_read_as_a_year(server: Running, clock: ManualClock) -> None:
    """SetBalanceAlerts refuses a lead above 366 days (tests/grpc/test_hostile.py);
    one stored before that bound (int64's maximum: now + lead left int64 and
    the job failed for every wallet) is read as 366 days by the scan."""
    from server.events import repository as events_repo
    from server.events.service import Mutation

    ends = clock.now_us() + 30 * 86_400 * 1_000_000  # beyond the default 3 days, within a year
    await server.s.admin.AdjustBalance(
        admin_pb2.AdjustBalanceRequest(
            user_id="eve", amount_millicredits=5_000, reason="promo", request_id="p1", lot=common_pb2.LOT_KIND_EARNED,
            expires_at={"seconds": ends // 1_000_000},
        ),
        metadata=auth("ops", "admin"),
    )

    async def store(tx):  # type: ignore[no-untyped-def]
        row = await events_repo.alerts_in_batch(tx, "eve")
        events_repo.save_alerts(tx, row, "eve", thresholds="[]", expiry_lead_seconds=2**63 - 1, forecast_days=0)

    await server.submit(Mutation(fn=store, accounts={"wallet:eve"}))
    assert await server.run_job("credits_expiring") >= 1  # the monthly allowance's lot too
    expiring = await list_events(server, "eve", ["credits.expiring"])
    assert "earned" in [payload(e)["lot_kind"] for e in expiring]
