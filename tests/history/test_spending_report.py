"""HistoryService.GetSpendingReport: spend by category over a window and the
days of credit left at the current burn rate (the seed's cost analysis)."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import history_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from tests.harness import auth, expect_error

DAY = 86_400
FREE = 100_000


def ts(us: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(us)
    return t


async def spend(server, user: str, amount: int, category: str, rid: str) -> None:  # type: ignore[no-untyped-def]
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=amount, request_id=rid, category=category), metadata=auth(user)
    )


async def report(server, user: str, caller: str | None = None, **kw) -> history_pb2.GetSpendingReportResponse:  # type: ignore[no-untyped-def]
    req = history_pb2.GetSpendingReportRequest(user_id=user if caller else "", **kw)
    return await server.s.history.GetSpendingReport(req, metadata=auth(caller or user) if not caller else auth(caller, "admin"))


async def test_by_category_over_a_window_with_forecast(server, clock) -> None:  # type: ignore[no-untyped-def]
    u = "ana"
    t0 = clock.now_us()
    await spend(server, u, 4_000, "sandbox", "a1")
    await spend(server, u, 1_000, "", "a2")  # no category: "other"
    clock.advance(DAY)
    await spend(server, u, 6_000, "sandbox", "a3")
    await spend(server, u, 2_000, "training", "a4")
    # A hold captured counts as spend of its category; a released one does not.
    hold = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=3_000, request_id="h1", category="training"), metadata=auth(u)
    )
    await server.s.usage.Capture(
        usage_pb2.CaptureRequest(hold_id=hold.hold.id, amount_millicredits=2_500, request_id="c1"), metadata=auth(u)
    )
    held = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=1_000, request_id="h2", category="storage"), metadata=auth(u)
    )
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=held.hold.id, request_id="r2"), metadata=auth(u))
    clock.advance(DAY)

    r = await report(server, u)  # default window: the last 30 days
    assert [(c.category, c.spent_millicredits, c.operations) for c in r.categories] == [
        ("sandbox", 10_000, 2), ("training", 4_500, 2), ("other", 1_000, 1),
    ]
    assert r.total_spent_millicredits == 15_500
    assert r.credits_millicredits == FREE - 15_500
    assert r.end_time.ToMicroseconds() == clock.now_us() + 1  # the window includes this instant
    assert r.start_time.ToMicroseconds() == r.end_time.ToMicroseconds() - 30 * DAY * 1_000_000
    assert r.burn_rate_millicredits_per_day == 15_500 // 30
    assert r.days_left == round((FREE - 15_500) / (15_500 // 30), 1)

    # Only the second day: [t0 + 1 day, t0 + 2 days).
    day2 = await report(server, u, start_time=ts(t0 + DAY * 1_000_000), end_time=ts(t0 + 2 * DAY * 1_000_000))
    assert [(c.category, c.spent_millicredits) for c in day2.categories] == [("sandbox", 6_000), ("training", 4_500)]
    assert day2.total_spent_millicredits == 10_500
    assert day2.burn_rate_millicredits_per_day == 10_500
    assert day2.days_left == round((FREE - 15_500) / 10_500, 1)

    # An admin asks about ana; the first day only.
    day1 = await report(server, u, caller="ops", start_time=ts(t0), end_time=ts(t0 + DAY * 1_000_000))
    assert day1.total_spent_millicredits == 5_000
    assert {c.category for c in day1.categories} == {"sandbox", "other"}


async def test_window_reaching_into_the_future_uses_elapsed_time(server, clock) -> None:  # type: ignore[no-untyped-def]
    u = "ben"
    t0 = clock.now_us()
    clock.advance(DAY)
    await spend(server, u, 10_000, "sandbox", "b1")
    # A 10-day window of which 1 day has passed: the burn rate is per elapsed day.
    r = await report(server, u, start_time=ts(t0), end_time=ts(t0 + 10 * DAY * 1_000_000))
    assert r.total_spent_millicredits == 10_000
    assert r.burn_rate_millicredits_per_day == 10_000
    assert r.days_left == 9.0


async def test_nothing_spent_and_bad_windows(server, clock) -> None:  # type: ignore[no-untyped-def]
    r = await report(server, "cy")
    assert list(r.categories) == [] and r.total_spent_millicredits == 0
    assert r.burn_rate_millicredits_per_day == 0 and r.days_left == -1.0
    assert r.credits_millicredits == FREE
    now = clock.now_us()
    await expect_error(
        report(server, "cy", start_time=ts(now), end_time=ts(now - 1)),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIME_RANGE",
    )
    await expect_error(
        server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(user_id="ana"), metadata=auth("cy")),
        grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT",
    )
    # A window wholly in the future has no elapsed time: nothing to forecast from.
    future = await report(server, "cy", start_time=ts(now + DAY * 1_000_000), end_time=ts(now + 2 * DAY * 1_000_000))
    assert future.total_spent_millicredits == 0 and future.days_left == -1.0
