"""Calendar edges of the tier rules, in UTC: for each rule the instant just before
its boundary, the boundary itself, and the instant just after it.

Real server through the stubs, on SQLite and PostgreSQL (ledger audit after each
test). Every test sets its own instants; nothing depends on today's date.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import common_pb2, history_pb2, tier_pb2, usage_pb2
from sqlalchemy import text

from server.platform.clock import to_us
from server.tiers.rules import add_month, prorate
from tests.harness import Running, auth, expect_error
from tests.tiers.test_tiers import DAY, FREE, PRO, balance, deliver, event, get_tier, invoice, lots

T = common_pb2
US = timedelta(microseconds=1)
ADMIN = auth("root", "admin")
EDGES = [pytest.param(-US, False, id="before"), pytest.param(timedelta(0), True, id="at"),
         pytest.param(US, True, id="after")]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def at(server: Running, when: datetime) -> None:
    server.clock.set(when)
    assert server.clock.now_us() == to_us(when)  # exact to the microsecond


async def run_jobs(server: Running) -> dict[str, int]:
    assert server.app is not None
    return await server.run_jobs()


def us(ts: Any) -> int:
    return int(ts.ToMicroseconds())


async def grants(server: Running, user: str) -> list[int]:
    req = history_pb2.ListTransactionsRequest(types=[T.TRANSACTION_TYPE_ALLOWANCE_GRANT], page_size=100)
    r = await server.s.history.ListTransactions(req, metadata=auth(user))
    return sorted(t.amount_millicredits for t in r.transactions)


async def expiries(server: Running, user: str) -> list[int]:
    req = history_pb2.ListTransactionsRequest(types=[T.TRANSACTION_TYPE_ALLOWANCE_EXPIRY], page_size=100)
    r = await server.s.history.ListTransactions(req, metadata=auth(user))
    return sorted(-t.amount_millicredits for t in r.transactions)


async def allowance_lots(server: Running, user: str) -> list[tuple[int, int]]:
    """(remaining, expires_at_us) of the user's allowance lots."""
    b = await balance(server, user)
    return [(lot.remaining_millicredits, us(lot.expires_at)) for lot in b.lots if lot.kind == T.LOT_KIND_ALLOWANCE]


async def enterprise(server: Running, user: str, monthly: int, rid: str = "ent") -> tier_pb2.UpgradeTierResponse:
    req = tier_pb2.UpgradeTierRequest(user_id=user, tier=T.TIER_ENTERPRISE, request_id=rid,
                                      monthly_credits_millicredits=monthly)
    return await server.s.tier.UpgradeTier(req, metadata=ADMIN)


# ---- Enterprise: the monthly allowance renews at the first instant of each UTC month -----

ENTERPRISE_MONTHLY = 3_000_000
MONTH_STARTS = [
    # boundary, the month after it starts... ends, what an upgrade 10 days before it got
    pytest.param(utc(2031, 7, 1), utc(2031, 8, 1), ENTERPRISE_MONTHLY * 10 // 30, id="june-july"),
    pytest.param(utc(2032, 1, 1), utc(2032, 2, 1), ENTERPRISE_MONTHLY * 10 // 31, id="year-end"),
    pytest.param(utc(2028, 3, 1), utc(2028, 4, 1), ENTERPRISE_MONTHLY * 10 // 29, id="after-feb-29-2028"),
]


@pytest.mark.parametrize(("offset", "past"), EDGES)
@pytest.mark.parametrize(("boundary", "next_end", "prorated"), MONTH_STARTS)
async def test_enterprise_allowance_renews_at_the_first_instant_of_the_month(
    server: Running, boundary: datetime, next_end: datetime, prorated: int, offset: timedelta, past: bool
) -> None:
    at(server, boundary - timedelta(days=10))
    await enterprise(server, "eve", ENTERPRISE_MONTHLY)
    assert (await get_tier(server, "eve")).allowance_remaining_millicredits == FREE + prorated
    at(server, boundary + offset)
    assert (await run_jobs(server))["roll_over_allowances"] == (1 if past else 0)
    t = await get_tier(server, "eve")
    assert t.tier == T.TIER_ENTERPRISE and t.monthly_credits_millicredits == ENTERPRISE_MONTHLY
    if past:
        assert (us(t.period_start), us(t.period_end)) == (to_us(boundary), to_us(next_end))
        assert await allowance_lots(server, "eve") == [(ENTERPRISE_MONTHLY, to_us(next_end))]
        assert await expiries(server, "eve") == [FREE + prorated]
    else:
        assert us(t.period_end) == to_us(boundary)
        assert await allowance_lots(server, "eve") == [(FREE + prorated, to_us(boundary))]
        assert await expiries(server, "eve") == []
    # Reads and replays never renew twice.
    await run_jobs(server)
    assert (await get_tier(server, "eve")).allowance_remaining_millicredits == (
        ENTERPRISE_MONTHLY if past else FREE + prorated
    )


# ---- Enterprise: proration (integer math, microseconds) -----------------------------------

D_US = DAY * 1_000_000
BIG = 10**15  # the largest monthly allowance the API takes: float math would drift here
PRORATIONS = [
    # boundary, monthly, grant just before / at / just after it
    pytest.param(utc(2031, 5, 1), BIG, (BIG // (30 * D_US), BIG, BIG * (31 * D_US - 1) // (31 * D_US)),
                 id="may-2031"),
    pytest.param(utc(2028, 3, 1), BIG, (BIG // (29 * D_US), BIG, BIG * (31 * D_US - 1) // (31 * D_US)),
                 id="march-after-feb-29-2028"),
    # Feb 29, 2028: the month has 29 days, so its last day is 1/29 of the allowance
    # (just before it: one day and 1 us left, rounded down to the same).
    pytest.param(utc(2028, 2, 29), 2_900_000, (100_000, 100_000, 99_999), id="feb-29-2028"),
    pytest.param(utc(2028, 2, 15), 2_900_000, (1_500_000, 1_500_000, 1_499_999), id="feb-15-2028"),
]


@pytest.mark.parametrize("edge", [0, 1, 2], ids=["before", "at", "after"])
@pytest.mark.parametrize(("boundary", "monthly", "expected"), PRORATIONS)
async def test_enterprise_upgrade_is_prorated_to_the_microsecond(
    server: Running, boundary: datetime, monthly: int, expected: tuple[int, int, int], edge: int
) -> None:
    at(server, boundary + (-US, timedelta(0), US)[edge])
    grant = expected[edge]
    r = await enterprise(server, "eve", monthly)
    assert r.status == tier_pb2.UPGRADE_STATUS_COMPLETED and r.effective_date.ToMicroseconds() == server.clock.now_us()
    assert (await get_tier(server, "eve")).allowance_remaining_millicredits == FREE + grant
    assert await grants(server, "eve") == sorted([FREE, grant])
    # Once per user and month, whatever the request.
    await enterprise(server, "eve", monthly, rid="again")
    assert (await balance(server, "eve")).credits_millicredits == FREE + grant


def test_prorate_is_exact_integer_math() -> None:
    for start, end in ((utc(2031, 4, 1), utc(2031, 5, 1)), (utc(2028, 2, 1), utc(2028, 3, 1))):
        s, e = to_us(start), to_us(end)
        for now in (s - 1, s, s + 1, s + (e - s) // 2, e - 1, e, e + 1):
            for monthly in (0, 1, 2_900_000, BIG):
                left = max(0, e - max(now, s))
                assert prorate(monthly, s, e, now) == int(Fraction(monthly * left, e - s))


# ---- Pro: the allowance of a paid invoice lives for the invoice period --------------------

P_START, P_END = utc(2031, 5, 10, 8), utc(2031, 6, 10, 8)  # the first invoice's period
P_NEXT = utc(2031, 7, 10, 8)


async def stored_subscription(server: Running, user: str) -> tuple[str, bool]:
    """(status, cancel_in_stripe) of the user's subscription row."""
    assert server.app is not None
    async with server.read() as conn:
        q = text("SELECT status, cancel_in_stripe FROM tier_subscriptions WHERE user_id = :u")
        row = (await conn.execute(q, {"u": user})).one()
    return str(row[0]), bool(row[1])


def s_(when: datetime) -> int:
    return int(when.timestamp())


async def pro_user(server: Running, user: str = "pam") -> None:
    """A Pro user since P_START whose May free allowance is spent (only the Pro lot is in play)."""
    at(server, P_START)
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=FREE, request_id="free"), metadata=auth(user))
    paid = invoice("in_1", user, f"sub_{user}", s_(P_START), s_(P_END))
    assert await deliver(server, event("invoice.paid", paid)) == 200
    t = await get_tier(server, user)
    assert t.tier == T.TIER_PRO and (us(t.period_start), us(t.period_end)) == (to_us(P_START), to_us(P_END))
    assert await allowance_lots(server, user) == [(PRO, to_us(P_END))]


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_pro_renewal_paid_at_the_invoice_period_end_replaces_the_allowance(
    stripe_server: Running, offset: timedelta, past: bool
) -> None:
    server = stripe_server
    await pro_user(server)
    at(server, P_END + offset)
    renewal = invoice("in_2", "pam", "sub_pam", s_(P_END), s_(P_NEXT))
    assert await deliver(server, event("invoice.paid", renewal)) == 200
    t = await get_tier(server, "pam")
    assert t.tier == T.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert us(t.period_end) == to_us(P_NEXT)
    if past:
        # The first invoice's allowance expired at its period end; the renewal's replaces it.
        assert await allowance_lots(server, "pam") == [(PRO, to_us(P_NEXT))]
        assert await expiries(server, "pam") == [PRO]
        assert us(t.period_start) == to_us(P_END)
    else:
        # Paid early: the first invoice's allowance is still there until its end.
        assert await allowance_lots(server, "pam") == [(PRO, to_us(P_END)), (PRO, to_us(P_NEXT))]
        at(server, P_END)
        assert (await get_tier(server, "pam")).allowance_remaining_millicredits == PRO
        assert await allowance_lots(server, "pam") == [(PRO, to_us(P_NEXT))]
    # Replays of the renewal grant nothing more.
    assert await deliver(server, event("invoice.payment_succeeded", renewal)) == 200
    assert (await get_tier(server, "pam")).allowance_remaining_millicredits == PRO
    assert await grants(server, "pam") == [FREE, PRO, PRO]


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_unpaid_pro_renewal_at_the_invoice_period_end_starts_the_grace_period(
    stripe_server: Running, offset: timedelta, past: bool
) -> None:
    server = stripe_server
    await pro_user(server)
    grace_end = to_us(P_END) + server.settings.tier_grace_seconds * 1_000_000
    at(server, P_END + offset)
    # No renewal yet: before the end the allowance is there; from the end, grace without it.
    t = await get_tier(server, "pam")
    assert t.tier == T.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert t.allowance_remaining_millicredits == (0 if past else PRO)
    assert us(t.period_end) == (grace_end if past else to_us(P_END))
    # Stripe reports the failed renewal: past due, Pro until the grace end.
    failed = {**invoice("in_2", "pam", "sub_pam", s_(P_END), s_(P_NEXT)), "status": "open"}
    assert await deliver(server, event("invoice.payment_failed", failed)) == 200
    t = await get_tier(server, "pam")
    assert t.tier == T.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_PAST_DUE
    assert t.allowance_remaining_millicredits == (0 if past else PRO)
    assert await expiries(server, "pam") == ([PRO] if past else [])
    at(server, P_END)
    t = await get_tier(server, "pam")
    assert (t.tier, t.allowance_remaining_millicredits, us(t.period_end)) == (T.TIER_PRO, 0, grace_end)


# ---- Pro: the free month's allowance stays until the calendar month's end -----------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_free_allowance_of_a_pro_user_expires_at_the_calendar_month_end(
    stripe_server: Running, offset: timedelta, past: bool
) -> None:
    server = stripe_server
    at(server, P_START)
    await get_tier(server, "pam")
    paid = invoice("in_1", "pam", "sub_pam", s_(P_START), s_(P_END))
    assert await deliver(server, event("invoice.paid", paid)) == 200
    at(server, utc(2031, 6, 1) + offset)
    t = await get_tier(server, "pam")
    assert t.tier == T.TIER_PRO and us(t.period_end) == to_us(P_END)
    assert t.allowance_remaining_millicredits == (PRO if past else FREE + PRO)
    assert await expiries(server, "pam") == ([FREE] if past else [])
    assert (await balance(server, "pam")).credits_millicredits == (PRO if past else FREE + PRO)


# ---- the tier grace period ------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_pro_stays_until_exactly_the_grace_end(stripe_server: Running, offset: timedelta, past: bool) -> None:
    server = stripe_server
    await pro_user(server)
    at(server, P_END + timedelta(seconds=60))
    failed = {**invoice("in_2", "pam", "sub_pam", s_(P_END), s_(P_NEXT)), "status": "open"}
    assert await deliver(server, event("invoice.payment_failed", failed)) == 200
    grace_end = P_END + timedelta(seconds=server.settings.tier_grace_seconds)
    assert us((await get_tier(server, "pam")).period_end) == to_us(grace_end)
    at(server, grace_end + offset)
    assert (await run_jobs(server))["roll_over_allowances"] == (1 if past else 0)
    t = await get_tier(server, "pam")
    if past:
        assert t.tier == T.TIER_FREE and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_CANCELED
        # June's free allowance (May's was granted and spent before the upgrade).
        assert t.allowance_remaining_millicredits == FREE
        assert (us(t.period_start), us(t.period_end)) == (to_us(utc(2031, 6, 1)), to_us(utc(2031, 7, 1)))
    else:
        assert t.tier == T.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_PAST_DUE
        assert t.allowance_remaining_millicredits == 0 and us(t.period_end) == to_us(grace_end)
    # Stripe retries the renewal and it fails again: the grace end does not move, and a
    # lapsed subscription stays lapsed (not an unpaid first upgrade that blocks UpgradeTier).
    assert await deliver(server, event("invoice.payment_failed", failed)) == 200
    t = await get_tier(server, "pam")
    if past:
        assert (t.tier, t.subscription_status) == (T.TIER_FREE, tier_pb2.SUBSCRIPTION_STATUS_CANCELED)
        assert await stored_subscription(server, "pam") == ("canceled", True)
    else:
        assert (t.tier, t.subscription_status) == (T.TIER_PRO, tier_pb2.SUBSCRIPTION_STATUS_PAST_DUE)
        assert us(t.period_end) == to_us(grace_end)


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_renewal_paid_around_the_grace_end(stripe_server: Running, offset: timedelta, past: bool) -> None:
    """Stripe's retry succeeds just before, at or after the grace end: the paid invoice
    period is Pro, and the subscription the customer just paid is not cancelled."""
    server = stripe_server
    await pro_user(server)
    at(server, P_END + timedelta(seconds=60))
    failed = {**invoice("in_2", "pam", "sub_pam", s_(P_END), s_(P_NEXT)), "status": "open"}
    assert await deliver(server, event("invoice.payment_failed", failed)) == 200
    grace_end = P_END + timedelta(seconds=server.settings.tier_grace_seconds)
    at(server, grace_end + offset)
    await run_jobs(server)
    assert (await get_tier(server, "pam")).tier == (T.TIER_FREE if past else T.TIER_PRO)
    paid = invoice("in_2", "pam", "sub_pam", s_(P_END), s_(P_NEXT))
    assert await deliver(server, event("invoice.paid", paid)) == 200
    t = await get_tier(server, "pam")
    assert t.tier == T.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert (us(t.period_start), us(t.period_end)) == (to_us(P_END), to_us(P_NEXT))
    # June's free allowance (granted at the lapse) stays until June's end.
    assert t.allowance_remaining_millicredits == PRO + (FREE if past else 0)
    assert await stored_subscription(server, "pam") == ("active", False)


# ---- scheduled downgrades take effect exactly at the period end ------------------------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_scheduled_enterprise_downgrade_at_the_month_end(server: Running, offset: timedelta, past: bool) -> None:
    at(server, utc(2031, 6, 10))
    await enterprise(server, "dan", ENTERPRISE_MONTHLY)
    r = await server.s.tier.DowngradeTier(
        tier_pb2.DowngradeTierRequest(user_id="dan", tier=T.TIER_FREE, request_id="d"), metadata=ADMIN
    )
    july = utc(2031, 7, 1)
    assert r.effective_date.ToMicroseconds() == to_us(july)
    at(server, july + offset)
    await run_jobs(server)
    t = await get_tier(server, "dan")
    if past:
        assert t.tier == T.TIER_FREE and t.pending_tier == T.TIER_UNSPECIFIED
        assert t.allowance_remaining_millicredits == FREE
        assert (us(t.period_start), us(t.period_end)) == (to_us(july), to_us(utc(2031, 8, 1)))
        # No more overdraft.
        await expect_error(
            server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=FREE + 1, request_id="no"),
                                 metadata=auth("dan")),
            grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
        )
    else:
        assert t.tier == T.TIER_ENTERPRISE and t.pending_tier == T.TIER_FREE
        assert t.pending_change_at.ToMicroseconds() == to_us(july)
        assert t.allowance_remaining_millicredits == FREE + ENTERPRISE_MONTHLY * 21 // 30


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_scheduled_pro_downgrade_at_the_invoice_period_end(
    stripe_server: Running, offset: timedelta, past: bool
) -> None:
    server = stripe_server
    await pro_user(server)
    at(server, utc(2031, 5, 20))
    sub = {"id": "sub_pam", "object": "subscription", "customer": "cus_pam", "status": "active",
           "cancel_at_period_end": True, "metadata": {"user_id": "pam"}}
    assert await deliver(server, event("customer.subscription.updated", sub)) == 200
    t = await get_tier(server, "pam")
    assert t.pending_tier == T.TIER_FREE and t.pending_change_at.ToMicroseconds() == to_us(P_END)
    at(server, P_END + offset)
    await run_jobs(server)
    t = await get_tier(server, "pam")
    if past:
        assert t.tier == T.TIER_FREE and t.pending_tier == T.TIER_UNSPECIFIED
        assert t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_CANCELED
        assert lots(await balance(server, "pam")) == [(T.LOT_KIND_ALLOWANCE, FREE)]  # June's free allowance
        assert (us(t.period_start), us(t.period_end)) == (to_us(utc(2031, 6, 1)), to_us(utc(2031, 7, 1)))
    else:
        assert t.tier == T.TIER_PRO and t.pending_tier == T.TIER_FREE
        assert t.allowance_remaining_millicredits == PRO


# ---- add_month -------------------------------------------------------------------------------

ADD_MONTH = [
    # the last instant of a month, the first of the next, the one after (day clamped to the month end)
    pytest.param(utc(2031, 1, 31, 23, 59, 59, 999999), utc(2031, 2, 28, 23, 59, 59, 999999), id="jan-31-2031-before"),
    pytest.param(utc(2031, 2, 1), utc(2031, 3, 1), id="jan-31-2031-at"),
    pytest.param(utc(2031, 1, 31, 0, 0, 0, 1), utc(2031, 2, 28, 0, 0, 0, 1), id="jan-31-2031-after"),
    pytest.param(utc(2028, 1, 31, 23, 59, 59, 999999), utc(2028, 2, 29, 23, 59, 59, 999999), id="jan-31-2028-before"),
    pytest.param(utc(2028, 2, 1), utc(2028, 3, 1), id="jan-31-2028-at"),
    pytest.param(utc(2028, 1, 31, 0, 0, 0, 1), utc(2028, 2, 29, 0, 0, 0, 1), id="jan-31-2028-after"),
    pytest.param(utc(2031, 12, 31, 23, 59, 59, 999999), utc(2032, 1, 31, 23, 59, 59, 999999), id="dec-31-before"),
    pytest.param(utc(2032, 1, 1), utc(2032, 2, 1), id="dec-31-at"),
    pytest.param(utc(2031, 12, 31, 0, 0, 0, 1), utc(2032, 1, 31, 0, 0, 0, 1), id="dec-31-after"),
    pytest.param(utc(2028, 2, 29, 23, 59, 59, 999999), utc(2028, 3, 29, 23, 59, 59, 999999), id="feb-29-2028-before"),
    pytest.param(utc(2028, 3, 1), utc(2028, 4, 1), id="feb-29-2028-at"),
    pytest.param(utc(2028, 2, 29, 0, 0, 0, 1), utc(2028, 3, 29, 0, 0, 0, 1), id="feb-29-2028-after"),
    pytest.param(utc(2031, 2, 28, 12), utc(2031, 3, 28, 12), id="feb-28-2031"),
]


@pytest.mark.parametrize(("when", "expected"), ADD_MONTH)
def test_add_month(when: datetime, expected: datetime) -> None:
    assert add_month(to_us(when)) == to_us(expected)
