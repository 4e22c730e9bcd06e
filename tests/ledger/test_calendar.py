"""Calendar edges of the ledger's period rules, in UTC: the instant just before a
boundary, the boundary itself, and the instant just after it.

Every test sets its own start instant; nothing here depends on today's date.
The boundary table in docs/reliability.md lists each case with its test.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from flownexus.billing.v1 import common_pb2, earnings_pb2

from server.platform.clock import from_us, month_bounds, to_us
from tests.calls import (
    DAY_S,
    FREE,
    balance,
    capture,
    credits,
    release,
    reserve,
    spend,
    transactions,
    utc,
)
from tests.harness import auth, expect_error

T = common_pb2
US = timedelta(microseconds=1)
FEB_1 = utc(2027, 2, 1)

# The three instants around a boundary, and whether each is already past it.
EDGES = [pytest.param(-US, False, id="before"), pytest.param(timedelta(0), True, id="at"), pytest.param(US, True, id="after")]


def expiries(txs: list[common_pb2.Transaction]) -> list[int]:
    return [-t.amount_millicredits for t in txs if t.type == T.TRANSACTION_TYPE_ALLOWANCE_EXPIRY]


# ---- a hold's credits belong to the hold ------------------------------------------------


async def test_capture_across_month_end_pays_once(server) -> None:
    """Reserve January's allowance, spend February's, then capture the hold in full:
    the user pays 100 credits for each, once, and the wallet never goes negative."""
    server.clock.set(utc(2027, 1, 31, 18))
    hold = await reserve(server, "jan", FREE, "h", ttl_s=3 * DAY_S)
    server.clock.set(FEB_1)
    assert (await spend(server, "jan", FREE, "s")).credits_millicredits == 0
    done = await capture(server, "jan", hold.id, FREE, "c")
    assert done.credits_millicredits == 0
    b = await balance(server, "jan")
    assert (b.credits_millicredits, b.pending_millicredits, b.spent_total_millicredits) == (0, 0, 2 * FREE)
    # January's reserved credits paid the capture; nothing expired, nothing was charged twice.
    assert expiries(await transactions(server, "jan")) == []


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_full_capture_at_the_month_boundary(server, offset: timedelta, past: bool) -> None:
    server.clock.set(utc(2027, 1, 31, 12))
    hold = await reserve(server, "cap", FREE, "h", ttl_s=3 * DAY_S)
    server.clock.set(FEB_1 + offset)
    done = await capture(server, "cap", hold.id, FREE, "c")
    # Past the boundary, February's allowance is the whole balance; before it, nothing is left.
    assert done.credits_millicredits == (FREE if past else 0)
    b = await balance(server, "cap")
    assert (b.pending_millicredits, b.spent_total_millicredits) == (0, FREE)
    assert expiries(await transactions(server, "cap")) == []


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_partial_capture_at_the_month_boundary_expires_the_rest_once(
    server, offset: timedelta, past: bool
) -> None:
    server.clock.set(utc(2027, 1, 31, 12))
    hold = await reserve(server, "part", 60_000, "h", ttl_s=3 * DAY_S)
    server.clock.set(FEB_1 + offset)
    await capture(server, "part", hold.id, 20_000, "c")
    txs = await transactions(server, "part")
    if past:
        # The uncaptured 40 credits went back to January's lot, which has ended:
        # they expire with the 40 never reserved, and nothing else does.
        assert sum(expiries(txs)) == 80_000
        assert await credits(server, "part") == FREE
    else:
        assert expiries(txs) == []
        assert await credits(server, "part") == FREE - 20_000
    assert (await balance(server, "part")).spent_total_millicredits == 20_000


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_release_at_the_month_boundary(server, offset: timedelta, past: bool) -> None:
    server.clock.set(utc(2027, 1, 31, 12))
    hold = await reserve(server, "rel", FREE, "h", ttl_s=3 * DAY_S)
    server.clock.set(FEB_1 + offset)
    done = await release(server, "rel", hold.id, "r")
    assert done.credits_millicredits == FREE  # January's back before the end; February's after it
    assert expiries(await transactions(server, "rel")) == ([FREE] if past else [])
    await spend(server, "rel", FREE, "s")  # the whole balance is spendable, and no more
    await expect_error(spend(server, "rel", 1, "s2"), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_hold_expiring_at_the_month_boundary(server, offset: timedelta, past: bool) -> None:
    """A hold whose TTL ends exactly at the period end: the worker releases it
    at its expiry, and January's credits expire with January's lot."""
    start = FEB_1 - timedelta(days=2)
    server.clock.set(start)
    await reserve(server, "ttl", 30_000, "h", ttl_s=2 * DAY_S)
    server.clock.set(FEB_1 + offset)
    done = await server.run_jobs()
    assert done["expire_holds"] == (1 if past else 0)
    b = await balance(server, "ttl")
    if past:
        assert (b.credits_millicredits, b.pending_millicredits) == (FREE, 0)
        # January's 70 unreserved credits and the 30 released ones, each once.
        assert sum(expiries(await transactions(server, "ttl"))) == FREE
    else:
        assert (b.credits_millicredits, b.pending_millicredits) == (FREE - 30_000, 30_000)


# ---- monthly allowance and roll-over ------------------------------------------------------


MONTH_ENDS = [
    pytest.param(utc(2026, 12, 1), utc(2027, 1, 1), id="year-end"),
    pytest.param(utc(2028, 2, 1), utc(2028, 3, 1), id="leap-february"),
    pytest.param(utc(2027, 2, 1), utc(2027, 3, 1), id="february"),
    pytest.param(utc(2027, 4, 1), utc(2027, 5, 1), id="30-day-month"),
]


def next_month(d):  # type: ignore[no-untyped-def]
    return utc(d.year + (d.month == 12), d.month % 12 + 1, 1)


@pytest.mark.parametrize(("offset", "past"), EDGES)
@pytest.mark.parametrize(("month_start", "boundary"), MONTH_ENDS)
async def test_free_allowance_rolls_over_at_the_boundary(
    server, month_start, boundary, offset: timedelta, past: bool
) -> None:
    server.clock.set(month_start + timedelta(days=3))
    await spend(server, "roll", 25_000, "s1")
    server.clock.set(boundary + offset)
    b = await balance(server, "roll")
    assert b.credits_millicredits == (FREE if past else FREE - 25_000)
    assert [lot.kind for lot in b.lots] == [T.LOT_KIND_ALLOWANCE]
    assert b.lots[0].expires_at.ToDatetime() == (next_month(boundary) if past else boundary).replace(tzinfo=None)
    assert expiries(await transactions(server, "roll")) == ([FREE - 25_000] if past else [])


@pytest.mark.parametrize(
    ("when", "period_end"),
    [
        pytest.param(utc(2027, 12, 31, 23, 59, 59, 999_999), utc(2028, 1, 1), id="year-end-before"),
        pytest.param(utc(2028, 1, 1), utc(2028, 2, 1), id="year-end-at"),
        pytest.param(utc(2028, 2, 29, 12), utc(2028, 3, 1), id="leap-day"),
        pytest.param(utc(2028, 2, 29, 23, 59, 59, 999_999), utc(2028, 3, 1), id="leap-day-last-instant"),
        pytest.param(utc(2028, 3, 1), utc(2028, 4, 1), id="after-leap-day"),
    ],
)
async def test_a_new_wallet_belongs_to_the_month_of_its_first_instant(server, when, period_end) -> None:
    server.clock.set(when)
    b = await balance(server, "new")
    assert b.credits_millicredits == FREE
    assert b.lots[0].expires_at.ToDatetime() == period_end.replace(tzinfo=None)


async def test_concurrent_spends_across_midnight_of_the_month_end(server) -> None:
    """Spends queued on both sides of 00:00:00 on the 1st: each is charged to the
    period its batch runs in, January's rest expires exactly once, and February's
    allowance is granted exactly once."""
    server.clock.set(utc(2027, 1, 31, 23, 59, 59))
    await spend(server, "mid", 10_000, "warm")
    await asyncio.gather(*(spend(server, "mid", 1_000, f"jan-{i}") for i in range(20)))
    server.clock.set(FEB_1)
    await asyncio.gather(*(spend(server, "mid", 1_000, f"feb-{i}") for i in range(20)))
    txs = await transactions(server, "mid")
    grants = [t for t in txs if t.type == T.TRANSACTION_TYPE_ALLOWANCE_GRANT]
    assert [g.amount_millicredits for g in grants] == [FREE, FREE]
    assert expiries(txs) == [FREE - 30_000]
    assert await credits(server, "mid") == FREE - 20_000
    assert (await balance(server, "mid")).spent_total_millicredits == 50_000


# ---- award daily limits at UTC midnight ---------------------------------------------------


@pytest.mark.parametrize(("offset", "past"), EDGES)
@pytest.mark.parametrize("midnight", [utc(2031, 3, 11), utc(2028, 2, 29), utc(2028, 3, 1), utc(2029, 1, 1)],
                         ids=["day", "leap-day", "after-leap-day", "year-end"])
async def test_award_daily_limit_opens_at_utc_midnight(server, midnight, offset: timedelta, past: bool) -> None:
    svc = auth("engine", "service")
    cap = server.settings.award_daily_limit_challenge * 1000

    def award(ref: str, amount: int) -> earnings_pb2.AwardCreditsRequest:
        return earnings_pb2.AwardCreditsRequest(
            user_id="earner", amount_millicredits=amount, source=common_pb2.EARNING_SOURCE_CHALLENGE,
            source_ref=ref, request_id=ref, reason="Challenge",
        )

    # The whole cap is used in the last second of the day before.
    server.clock.set(midnight - timedelta(seconds=1))
    await server.s.earnings.AwardCredits(award("late", cap), metadata=svc)
    server.clock.set(midnight + offset)
    if past:
        await server.s.earnings.AwardCredits(award("next-day", cap), metadata=svc)
        info = await expect_error(
            server.s.earnings.AwardCredits(award("over", 1), metadata=svc),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_AWARD_LIMIT",
        )
        assert info.metadata["awarded_today_millicredits"] == str(cap)
    else:
        await expect_error(
            server.s.earnings.AwardCredits(award("too-early", 1), metadata=svc),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_AWARD_LIMIT",
        )


# ---- the clock's arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [utc(2027, 12, 31, 23, 59, 59, 999_999), utc(2028, 2, 29, 23, 59, 59, 999_999), utc(9999, 12, 31, 23, 59, 59, 999_999),
     utc(1970, 1, 1), utc(2028, 3, 1)],
)
def test_microseconds_are_exact_at_every_instant(when) -> None:
    # A float timestamp is a microsecond off this far from 1970 (year 9999).
    assert from_us(to_us(when)) == when


@pytest.mark.parametrize(
    ("when", "bounds"),
    [
        (utc(2028, 2, 29, 23, 59, 59, 999_999), (utc(2028, 2, 1), utc(2028, 3, 1))),
        (utc(2028, 3, 1), (utc(2028, 3, 1), utc(2028, 4, 1))),
        (utc(2027, 12, 31, 23, 59, 59, 999_999), (utc(2027, 12, 1), utc(2028, 1, 1))),
        (utc(2028, 1, 1), (utc(2028, 1, 1), utc(2028, 2, 1))),
    ],
)
def test_month_bounds_at_the_edges(when, bounds) -> None:
    assert month_bounds(to_us(when)) == tuple(to_us(b) for b in bounds)
