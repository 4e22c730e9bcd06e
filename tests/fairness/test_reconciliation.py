"""Reconciliation with a budget (docs/fairness.md): each pending payment is
read from Stripe on its back-off schedule, in turn across users, under a
global rate; one user's many unpaid links delay no other user's credit, and
an expired unpaid session stops being polled."""

from __future__ import annotations

import time
from typing import Any

from flownexus.billing.v1 import balance_pb2, payments_pb2

from tests.harness import auth, gather_limited, serving
from tests.stripe_fake import StripeFake
from tests.stripe_fixtures import stripe_settings

RATE = 40.0
AFTER = 300.0


async def _link(server: Any, user: str, n: int) -> payments_pb2.CreatePaymentLinkResponse:
    return await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=1_000, request_id=f"{user}-{n}"), metadata=auth(user))


def _polls(fake: StripeFake) -> int:
    return sum(1 for r in fake.requests if r["method"] == "GET" and r["path"].startswith("/v1/checkout/sessions/"))


async def _run(server: Any, fake: StripeFake) -> tuple[int, float]:
    """One run of the jobs: the Stripe reads it made, and how fast (per second)."""
    fake.requests.clear()
    began = time.monotonic()
    await server.run_job("reconcile_payments")
    took = time.monotonic() - began
    n = _polls(fake)
    # Under the configured rate: its burst at once, then RATE a second.
    assert n <= RATE * took + RATE, (n, took)
    return n, took


async def test_unpaid_links_of_one_user_delay_no_other_users_credit(
    db_url: str, clock: Any, stripe_fake: StripeFake
) -> None:
    async with serving(
        db_url, clock, **stripe_settings(stripe_fake), payment_link_rate_per_second=10_000, payment_link_burst=10_000,
        stripe_poll_rate_per_second=RATE, payment_reconcile_after_seconds=AFTER,
    ) as server:
        stripe_fake.clock = lambda: clock.now_us() / 1_000_000  # sessions expire a day after, by the service's clock
        hoarded = await gather_limited([_link(server, "hoarder", i) for i in range(100)], limit=8)
        bought = await _link(server, "buyer", 0)
        await stripe_fake.pay(bought.payment_url.rsplit("/", 1)[-1])  # paid; its webhook is lost

        # The first point of the schedule: every one of them once, the buyer's
        # in the first turn, whatever the hoarder's count.
        clock.advance(AFTER + 1)
        n, _ = await _run(server, stripe_fake)
        assert n == 101
        r = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("buyer"))
        assert r.credits_millicredits > 100_000

        # Until twice that age, nothing is read again; then each unpaid one once.
        clock.advance(AFTER / 2)
        assert (await _run(server, stripe_fake))[0] == 0
        clock.advance(AFTER / 2)
        assert (await _run(server, stripe_fake))[0] == 100

        # Expired (the webhook lost too): read once just after expiry, marked
        # expired, never polled again.
        for link in hoarded:
            stripe_fake.expire(link.payment_url.rsplit("/", 1)[-1])
        expires = max(link.expires_at.ToMicroseconds() for link in hoarded)
        clock.advance((expires - clock.now_us()) / 1e6 + 120)  # a minute's grace, and one more
        assert (await _run(server, stripe_fake))[0] == 100
        clock.advance(86_400)
        assert (await _run(server, stripe_fake))[0] == 0
        p = await server.s.payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=hoarded[0].payment_id), metadata=auth("hoarder"))
        assert p.payment.status == payments_pb2.PAYMENT_STATUS_EXPIRED

