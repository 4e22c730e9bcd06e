"""Calendar edges of the auto-refill rules, in UTC: the instant just before a
boundary, the boundary itself, and the instant just after it.

- Monthly cap (BILLING_REFILL_MONTHLY_CAP_CENTS): a month is [start, end). Once
  the month's refills hit the cap, no refill happens before `end`, the first
  instant of the next UTC month; at `end` the new month's cap is free again.
- 30-day decline window (BILLING_REFILL_MAX_DECLINES_30D): declines in
  (now - 30 days, now] count. A decline exactly 30 days old no longer counts.

Real server on loopback, localstripe behind the Checkout fake, SQLite and
PostgreSQL; the ledger audit runs after each test. Every test sets its own
instants; nothing here depends on today's date.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flownexus.billing.v1 import refill_pb2

from server.platform.clock import ManualClock
from tests.harness import Running, serving
from tests.refill.test_refill import (
    CAP_CENTS,
    TEN,
    charges,
    configure,
    get,
    run_worker,
    save_card,
    spend,
)
from tests.stripe_fake import StripeFake
from tests.stripe_fixtures import stripe_settings

S = refill_pb2
US = timedelta(microseconds=1)
DECLINING = "pm_card_chargeCustomerFail"

# The three instants around a boundary, and whether each is already past it.
EDGES = [pytest.param(-US, False, id="before"), pytest.param(timedelta(0), True, id="at"), pytest.param(US, True, id="after")]

# First instants of a month: after a 30-day month, after Feb 29 of a leap year, after a year's end.
MONTH_STARTS = [
    pytest.param(datetime(2027, 5, 1, tzinfo=UTC), id="apr30-may1"),
    pytest.param(datetime(2028, 3, 1, tzinfo=UTC), id="feb29-mar1-leap"),
    pytest.param(datetime(2029, 1, 1, tzinfo=UTC), id="dec31-jan1"),
]

# A decline at T0 is exactly 30 days old at T0 + 30 days; both instants are in
# January 2031, so no new month's allowance changes the balances.
T0 = datetime(2031, 1, 1, 6, tzinfo=UTC)
WINDOW = timedelta(days=30)


@asynccontextmanager
async def refill_server(db_url: str, clock: ManualClock, fake: StripeFake, **overrides: Any) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **stripe_settings(fake), refill_monthly_cap_cents=CAP_CENTS, **overrides) as running:
        yield running


def cap_note(boundary: datetime) -> str:
    """What GetAutoRefill's next_charge says while the month's cap blocks refills."""
    return f"no refill before {boundary.isoformat()}"


async def hit_the_cap(server: Running, fake: StripeFake, user: str) -> int:
    """Two $10 refills (the $25 cap's worth), then a third that the cap skips.
    Returns the number of PaymentIntents before the first refill."""
    await save_card(server, fake, user)
    before = len(charges(fake))
    # Threshold 150 credits: 100 free credits are below it, so enabling refills at once (100 -> 200).
    await configure(server, user, threshold=150_000)
    await run_worker(server)
    await spend(server, user, 60_000)  # 140 -> refill: 240
    await run_worker(server)
    await spend(server, user, 100_000)  # 140: a third $10 would make $30 > $25
    await run_worker(server)
    assert len(charges(fake)) == before + 2
    return before


# ---- the monthly cap ----------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
@pytest.mark.parametrize("boundary", MONTH_STARTS)
async def test_monthly_cap_blocks_until_the_first_instant_of_the_next_month(
    db_url: str, clock: ManualClock, stripe_fake: StripeFake, boundary: datetime, offset: timedelta, past: bool
) -> None:
    clock.set(boundary - timedelta(hours=36))  # the cap is hit the day before the month's last day
    async with refill_server(db_url, clock, stripe_fake) as server:
        user = "cap"
        before = await hit_the_cap(server, stripe_fake, user)
        cfg = await get(server, user)
        assert (cfg.monthly_used_cents, cfg.monthly_cap_cents) == (2 * TEN, CAP_CENTS)
        assert cfg.last_failure_reason == "MONTHLY_CAP_REACHED" and cap_note(boundary) in cfg.next_charge

        clock.set(boundary + offset)
        cfg = await get(server, user)
        assert cfg.state == S.AUTO_REFILL_STATE_IDLE
        assert cfg.monthly_used_cents == (0 if past else 2 * TEN)
        assert (cap_note(boundary) in cfg.next_charge) is not past

        # 140 credits (before) or 140 + the new month's 100 (at/after): below 150 either way.
        await spend(server, user, 100_000)
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + 2 + int(past)
        cfg = await get(server, user)
        assert cfg.monthly_used_cents == (TEN if past else 2 * TEN)
        assert ("cap" in cfg.next_charge) is not past
        assert cfg.state == S.AUTO_REFILL_STATE_IDLE


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_monthly_cap_used_counts_only_the_month_of_the_instant(
    db_url: str, clock: ManualClock, stripe_fake: StripeFake, offset: timedelta, past: bool
) -> None:
    """Refills on both sides of Feb 29 -> Mar 1, 2028; GetAutoRefill asked at
    each edge reports the month that holds the instant. Before the boundary
    (a replica whose clock lags) March's charge is not February's."""
    boundary = datetime(2028, 3, 1, tzinfo=UTC)
    clock.set(boundary - timedelta(days=1))
    async with refill_server(db_url, clock, stripe_fake) as server:
        user = "used"
        await save_card(server, stripe_fake, user)
        before = len(charges(stripe_fake))
        await configure(server, user, threshold=150_000)  # 100 free credits: refills at once
        await run_worker(server)
        await spend(server, user, 60_000)  # 140 -> refill
        await run_worker(server)
        clock.set(boundary + timedelta(hours=1))
        await spend(server, user, 200_000)  # Feb's 40 expire, March's 100 arrive: 300 -> 100 -> refill
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + 3

        clock.set(boundary + offset)
        cfg = await get(server, user)
        assert cfg.monthly_used_cents == (TEN if past else 2 * TEN)
        assert (cap_note(boundary) in cfg.next_charge) is not past  # $20 + $10 > $25 only in February


# ---- the 30-day decline window ----------------------------------------------------------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_decline_30_days_old_no_longer_blocks_a_new_attempt(
    db_url: str, clock: ManualClock, stripe_fake: StripeFake, offset: timedelta, past: bool
) -> None:
    """At most 1 decline in 30 days: the gate before a new attempt counts the
    decline made at T0 until T0 + 30 days, not at it."""
    clock.set(T0)
    async with refill_server(db_url, clock, stripe_fake, refill_max_declines_30d=1) as server:
        user = "gate"
        await save_card(server, stripe_fake, user, DECLINING)
        await configure(server, user)
        before = len(charges(stripe_fake))
        await spend(server, user, 60_000)  # 40 credits < 50
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + 1
        cfg = await get(server, user)
        assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "AUTO_REFILL_FAILED"

        clock.set(T0 + WINDOW + offset)
        await save_card(server, stripe_fake, user, "pm_card_visa")  # the user fixes the card: resumed
        assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IDLE
        await spend(server, user, 1_000)
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + 1 + int(past)
        cfg = await get(server, user)
        if past:
            assert cfg.state == S.AUTO_REFILL_STATE_IDLE and not cfg.paused_reason
            assert cfg.monthly_used_cents == TEN
        else:
            assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "AUTO_REFILL_FAILED"


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_decline_30_days_old_no_longer_counts_after_the_next_decline(
    db_url: str, clock: ManualClock, stripe_fake: StripeFake, offset: timedelta, past: bool
) -> None:
    """At most 2 declines in 30 days: the retry declined at T0 + 30 days pauses
    only while the first decline (T0) is still inside the window."""
    clock.set(T0)
    async with refill_server(db_url, clock, stripe_fake, refill_max_declines_30d=2, refill_max_attempts=10) as server:
        user = "retry"
        await save_card(server, stripe_fake, user, DECLINING)
        await configure(server, user)
        before = len(charges(stripe_fake))
        await spend(server, user, 60_000)
        await run_worker(server)
        assert (await get(server, user)).state == S.AUTO_REFILL_STATE_RETRY_SCHEDULED

        clock.set(T0 + WINDOW + offset)  # the retry is long due
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + 2
        cfg = await get(server, user)
        assert cfg.last_failure_reason == "card_declined"
        if past:
            assert cfg.state == S.AUTO_REFILL_STATE_RETRY_SCHEDULED and not cfg.paused_reason
        else:
            assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "AUTO_REFILL_FAILED"
