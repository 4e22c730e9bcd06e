"""Auto-refill triggers besides Spend: a Capture, a refund clawback (signed
charge.refunded webhook) and the end of a monthly allowance (ManualClock across
the month boundary) each enqueue exactly one refill when they leave the balance
below the threshold, and the worker charges it exactly once. Also: the card a
payment-mode Checkout saved (setup_future_usage=off_session) is the one refills charge,
and an account flagged by a dispute is never refilled until the dispute is won.

Real server on loopback, localstripe behind the Checkout fake, SQLite and
PostgreSQL; the ledger audit runs after each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from flownexus.billing.v1 import payments_pb2, refill_pb2, usage_pb2

from server.ledger.ops import Call
from server.platform.clock import ManualClock, to_us
from server.refill import repository as refill_repo
from server.refill.models import ConfigState
from tests.harness import Running, auth, expect_error, serving
from tests.refill.test_refill import (
    _pi_of,
    balance,
    charges,
    configure,
    get,
    in_flight_jobs,
    refill_grants,
    refill_payments,
    run_worker,
    save_card,
    spend,
)
from tests.stripe_fake import StripeFake, event
from tests.stripe_fixtures import stripe_settings
from tests.tiers.test_tiers import invoice

FREE = 100_000
PRO = 1_000_000
TEN = 1_000  # $10 buys 100 credits
S = refill_pb2


@pytest.fixture
async def tserver(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    # refill_max_attempts=1: one decline pauses (the Capture test needs a paused refill)
    async with serving(db_url, clock, **stripe_settings(stripe_fake), refill_max_attempts=1) as running:
        assert running.app is not None
        stripe_fake.webhook_url = f"{running.http_base}/webhooks/stripe"
        yield running
        await stripe_fake.settled()


async def charges_after(server: Running, fake: StripeFake, before: int, runs: int = 3) -> int:
    """Run the worker a few times; the number of PaymentIntents created since `before`."""
    for _ in range(runs):
        await run_worker(server)
    return len(charges(fake)) - before


async def test_capture_below_threshold_enqueues_one_refill(tserver: Running, stripe_fake: StripeFake) -> None:
    server, user = tserver, "cal"
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")
    await configure(server, user)  # below 50 credits, $10
    before = len(charges(stripe_fake))
    held = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=60_000, request_id="r1", category="sandbox"), metadata=auth(user)
    )
    # The Reserve took the balance to 40: its refill is declined once and auto-refill pauses.
    assert await charges_after(server, stripe_fake, before) == 1
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_PAUSED
    # The user saves a good card: auto-refill is active again, nothing is queued yet.
    await save_card(server, stripe_fake, user, "pm_card_visa")
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IDLE
    assert await in_flight_jobs(server, user) == 0

    # The Capture settles the hold and leaves the balance below the threshold: one job, durable, no charge yet.
    captured = await server.s.usage.Capture(
        usage_pb2.CaptureRequest(hold_id=held.hold.id, amount_millicredits=60_000, request_id="c1"), metadata=auth(user)
    )
    assert captured.credits_millicredits == FREE - 60_000
    assert await in_flight_jobs(server, user) == 1
    assert len(charges(stripe_fake)) == before + 1
    assert await charges_after(server, stripe_fake, before) == 2  # the declined one + exactly one more
    assert await refill_grants(server, user) == 1
    assert (await balance(server, user)).credits_millicredits == FREE - 60_000 + 100_000
    assert await in_flight_jobs(server, user) == 0


async def test_refund_clawback_below_threshold_enqueues_one_refill(tserver: Running, stripe_fake: StripeFake) -> None:
    server, user = tserver, "rae"
    # A $10 purchase through Checkout (the fake sends charge/payment_intent/checkout events like Stripe).
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="buy-1"), metadata=auth(user)
    )
    done = await stripe_fake.complete(link.payment_url.rsplit("/", 1)[-1])
    assert set(done["statuses"].values()) == {200}
    pi = done["payment_intent"]
    assert (await balance(server, user)).credits_millicredits == FREE + 100_000
    # setup_future_usage=off_session: the card is attached to the customer, as Stripe does.
    customer = done["session"]["customer"]
    saved = await stripe_fake.api("GET", f"/v1/payment_methods?customer={customer}&type=card")
    assert [pm["id"] for pm in saved["data"]] == [pi["payment_method"]]
    cfg = await configure(server, user, threshold=150_000)
    assert cfg.state == S.AUTO_REFILL_STATE_IDLE and cfg.payment_method.last4 == "4242"
    before = len(charges(stripe_fake))

    # A full refund claws back the 100 credits: 100 < 150, one job; the webhook does not wait on Stripe.
    charge = await stripe_fake.refund(pi)
    assert await stripe_fake.deliver(event("charge.refunded", charge, event_id="evt_refund")) == 200
    assert (await balance(server, user)).credits_millicredits == FREE
    assert await in_flight_jobs(server, user) == 1
    assert len(charges(stripe_fake)) == before
    assert await charges_after(server, stripe_fake, before) == 1
    [refill] = await refill_payments(server, user)
    assert refill.status == payments_pb2.PAYMENT_STATUS_PAID
    charged = await stripe_fake.api("GET", f"/v1/payment_intents/{await _pi_of(server, refill.id)}")
    assert charged["payment_method"] == pi["payment_method"] and charged["customer"] == customer  # the saved card
    assert (await balance(server, user)).credits_millicredits == FREE + 100_000
    # The refund replayed (and under a new event id): no clawback, no refill.
    assert await stripe_fake.deliver(event("charge.refunded", charge, event_id="evt_refund")) == 200
    assert await stripe_fake.deliver(event("charge.refunded", charge)) == 200
    assert await charges_after(server, stripe_fake, before) == 1
    assert await refill_grants(server, user) == 1
    assert await in_flight_jobs(server, user) == 0


async def test_disputed_account_never_auto_refills_until_the_dispute_is_won(
    tserver: Running, stripe_fake: StripeFake
) -> None:
    """A dispute flags the account: the clawback that takes the balance below
    the threshold queues nothing, re-enabling is refused, a card saved since
    does not get charged either; the won dispute lifts the pause."""
    server, user = tserver, "dee"
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="buy-1"), metadata=auth(user)
    )
    done = await stripe_fake.complete(link.payment_url.rsplit("/", 1)[-1])
    pi = done["payment_intent"]
    assert (await configure(server, user, threshold=150_000)).state == S.AUTO_REFILL_STATE_IDLE
    before = len(charges(stripe_fake))

    charge = await stripe_fake.charge_of(pi)
    dispute = {"id": "dp_refill", "object": "dispute", "charge": charge["id"], "payment_intent": pi["id"],
               "amount": TEN, "currency": "usd", "status": "needs_response"}
    assert await stripe_fake.deliver(event("charge.dispute.created", dispute)) == 200
    assert (await balance(server, user)).credits_millicredits == FREE  # 100 < 150 credits, yet:
    assert await in_flight_jobs(server, user) == 0
    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "ACCOUNT_FLAGGED"
    assert "dispute" in cfg.next_charge
    assert (await balance(server, user)).auto_refill_paused_reason == "ACCOUNT_FLAGGED"
    await spend(server, user, 10_000)
    assert await charges_after(server, stripe_fake, before) == 0
    await expect_error(configure(server, user, threshold=150_000), grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FLAGGED")

    # A new card is remembered but does not lift the pause.
    await save_card(server, stripe_fake, user, "pm_card_visa")
    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "ACCOUNT_FLAGGED"

    # An account flagged before this rule existed kept an active config: the worker's own gate
    # refuses to charge it and pauses it.
    assert server.app is not None
    await server.submit(Call(fn=lambda tx: refill_repo.set_config(
        tx, user, state=ConfigState.ACTIVE, paused_reason="")))
    await spend(server, user, 10_000)
    assert await in_flight_jobs(server, user) == 1
    assert await charges_after(server, stripe_fake, before) == 0
    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "ACCOUNT_FLAGGED"
    assert await in_flight_jobs(server, user) == 0

    # Won: the credits come back, the pause lifts, and the next drop below the threshold refills once.
    assert await stripe_fake.deliver(event("charge.dispute.closed", {**dispute, "status": "won"})) == 200
    assert (await balance(server, user)).credits_millicredits == FREE - 20_000 + 100_000
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IDLE
    await spend(server, user, 50_000)
    assert await charges_after(server, stripe_fake, before) == 1
    assert await refill_grants(server, user) == 1
    assert (await balance(server, user)).credits_millicredits == FREE - 70_000 + 100_000 + 100_000


async def test_purchase_card_recorded_from_the_session_alone(tserver: Running, stripe_fake: StripeFake) -> None:
    """Only checkout.session.completed arrives (payment_intent.succeeded lost):
    the card Checkout attached to the customer still enables auto-refill."""
    server, user = tserver, "sol"
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="buy-1"), metadata=auth(user)
    )
    session_id = link.payment_url.rsplit("/", 1)[-1]
    await stripe_fake.pay(session_id)
    assert await stripe_fake.deliver(event("checkout.session.completed", dict(stripe_fake.sessions[session_id]))) == 200
    cfg = await configure(server, user, threshold=150_000)
    assert cfg.enabled and cfg.payment_method.last4 == "4242"
    before = len(charges(stripe_fake))
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=60_000, request_id=uuid.uuid4().hex), metadata=auth(user)
    )
    assert await charges_after(server, stripe_fake, before) == 1
    assert (await balance(server, user)).credits_millicredits == FREE + 100_000 - 60_000 + 100_000


async def test_allowance_end_at_the_month_boundary_enqueues_one_refill(
    tserver: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    server, user = tserver, "mia"
    assert server.app is not None
    clock.set(datetime(2031, 1, 5, tzinfo=UTC))
    await save_card(server, stripe_fake, user)
    # Pro for January (a paid invoice for Jan 1 - Feb 1): 100 free + 1,000 Pro credits, all allowance.
    jan, feb = to_us(datetime(2031, 1, 1, tzinfo=UTC)) // 10**6, to_us(datetime(2031, 2, 1, tzinfo=UTC)) // 10**6
    assert await stripe_fake.deliver(event("invoice.paid", invoice("in_mia_1", user, "sub_mia", jan, feb))) == 200
    assert (await balance(server, user)).credits_millicredits == FREE + PRO
    await configure(server, user)  # below 50 credits, $10
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="s1"), metadata=auth(user)
    )
    before = len(charges(stripe_fake))
    assert await charges_after(server, stripe_fake, before) == 0
    assert await in_flight_jobs(server, user) == 0

    # February: January's allowance expires and the renewal invoice has not come yet: balance 0 < 50.
    clock.set(datetime(2031, 2, 1, 0, 0, 30, tzinfo=UTC))
    assert await server.run_job("roll_over_allowances") >= 1
    assert (await balance(server, user)).credits_millicredits == 0
    assert await in_flight_jobs(server, user) == 1
    assert len(charges(stripe_fake)) == before
    assert await charges_after(server, stripe_fake, before) == 1
    assert await refill_grants(server, user) == 1
    assert (await balance(server, user)).credits_millicredits == 100_000
    assert await in_flight_jobs(server, user) == 0
