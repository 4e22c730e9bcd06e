"""The outbox: an event exists exactly when its change does; ListEvents by
cursor, type and wallet; WatchEvents resumes from a cursor with no gap and
no duplicate."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import grpc
import pytest
from flownexus.billing.v1 import events_pb2

from server.platform.clock import ManualClock
from tests.calls import spend
from tests.events.receiver import list_events, payload
from tests.harness import WAIT, Running, auth, expect_error

pytestmark = pytest.mark.asyncio


async def alerts_at(server: Running, user: str, credits: list[int]) -> None:
    await server.s.events.SetBalanceAlerts(
        events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[c * 1000 for c in credits], request_id="a"),
        metadata=auth(user),
    )


async def test_a_refused_change_leaves_no_event(server: Running) -> None:
    await alerts_at(server, "ann", [50])
    await expect_error(spend(server, "ann", 150_000, "too-much"), grpc.StatusCode.FAILED_PRECONDITION,
                       "INSUFFICIENT_CREDITS")
    assert await list_events(server, "ann") == []
    await spend(server, "ann", 60_000, "ok")
    assert [e.type for e in await list_events(server, "ann")] == ["balance.low"]


async def test_list_events_scope_types_and_cursor(server: Running) -> None:
    for user in ("u1", "u2"):
        await alerts_at(server, user, [90, 80, 70])
    await spend(server, "u1", 35_000, "s")  # three lows for u1
    await spend(server, "u2", 25_000, "s")  # two lows for u2
    everyone = await list_events(server)
    assert [e.user_id for e in everyone] == ["u1"] * 3 + ["u2"] * 2
    ids = [int(e.id.removeprefix("evt_")) for e in everyone]
    assert ids == sorted(ids)
    # A user reads its own wallet only.
    mine = await server.s.events.ListEvents(events_pb2.ListEventsRequest(page_size=2), metadata=auth("u2"))
    assert [e.user_id for e in mine.events] == ["u2", "u2"]
    more = await server.s.events.ListEvents(
        events_pb2.ListEventsRequest(page_token=mine.next_page_token), metadata=auth("u2")
    )
    assert list(more.events) == [] and more.next_page_token == mine.next_page_token
    await expect_error(
        server.s.events.ListEvents(events_pb2.ListEventsRequest(user_id="u1"), metadata=auth("u2")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Paged by cursor, and filtered by type.
    page = await server.s.events.ListEvents(events_pb2.ListEventsRequest(page_size=2),
                                            metadata=auth("svc", "service"))
    rest = await list_events(server, after=page.next_page_token)
    assert [e.id for e in (*page.events, *rest)] == [e.id for e in everyone]
    assert await list_events(server, types=["balance.recovered"]) == []
    await expect_error(
        server.s.events.ListEvents(events_pb2.ListEventsRequest(types=["balance.lo"]), metadata=auth("u1")),
        grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_EVENT_TYPE",
    )
    await expect_error(
        server.s.events.ListEvents(events_pb2.ListEventsRequest(page_token="nope"), metadata=auth("u1")),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID",
    )


async def test_watch_events_resumes_from_its_cursor(server: Running) -> None:
    """A consumer disconnects mid-stream; events commit meanwhile; it resumes
    from the last id it received and gets every later event once, in order."""
    svc = auth("watcher", "service")
    await alerts_at(server, "wu", [95, 90, 85, 80, 75, 70, 65, 60, 55, 50])
    stream = server.s.events.WatchEvents(events_pb2.WatchEventsRequest(cursor="evt_0"), metadata=svc)
    got: list[events_pb2.Event] = []
    await spend(server, "wu", 12_000, "s1")  # 100 -> 88: two events
    for _ in range(2):
        got.append((await asyncio.wait_for(stream.read(), WAIT)).event)
    stream.cancel()
    await spend(server, "wu", 10_000, "s2")  # 88 -> 78: two more while disconnected
    resumed = server.s.events.WatchEvents(events_pb2.WatchEventsRequest(cursor=got[-1].id), metadata=svc)
    for _ in range(2):
        got.append((await asyncio.wait_for(resumed.read(), WAIT)).event)
    await spend(server, "wu", 20_000, "s3")  # 78 -> 58: four more, live
    for _ in range(4):
        got.append((await asyncio.wait_for(resumed.read(), WAIT)).event)
    resumed.cancel()
    assert [payload(e)["threshold_millicredits"] // 1000 for e in got] == [95, 90, 85, 80, 75, 70, 65, 60]
    assert [e.id for e in got] == [e.id for e in await list_events(server, "wu")]

    # Without a cursor: only what commits from now on.
    live = server.s.events.WatchEvents(events_pb2.WatchEventsRequest(user_id="wu"), metadata=svc)
    await asyncio.sleep(0.2)
    await spend(server, "wu", 5_000, "s4")  # 58 -> 53: below 55
    first = (await asyncio.wait_for(live.read(), WAIT)).event
    live.cancel()
    assert payload(first)["threshold_millicredits"] == 55_000


async def test_retention_and_metrics(server: Running, clock: ManualClock) -> None:
    """/metrics counts committed events by type (balance.low: the low-balance
    alerts) and shows the auto-refill success ratio; events older than
    BILLING_EVENTS_RETENTION (30 days) are pruned by the job, newer ones kept."""
    await alerts_at(server, "old", [50])
    await spend(server, "old", 60_000, "s")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_base}/metrics") as r:
            text = await r.text()
    assert re.search(r'^billing_events_total\{type="balance.low"\} [1-9]', text, re.M)
    assert re.search(r"^billing_auto_refill_success_ratio [0-9.]+$", text, re.M)
    clock.advance(29 * 86_400)
    await alerts_at(server, "new", [50])
    await spend(server, "new", 60_000, "s")
    assert await server.run_job("prune_events") == 0
    clock.advance(2 * 86_400)
    assert await server.run_job("prune_events") == 1
    assert [e.user_id for e in await list_events(server)] == ["new"]
