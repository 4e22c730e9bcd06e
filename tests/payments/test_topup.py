"""PaymentsService/TopUp: the saved card charged off-session, now. Credits come
once whichever of the synchronous confirmation and the webhook comes first;
retries and lost responses never charge twice (the Stripe idempotency key is
derived from the request); a decline is PAYMENT_FAILED with the decline code
and a recovery link; authentication_required answers with a link that
completes the same payment; no card is PAYMENT_METHOD_REQUIRED.

localstripe behind the Checkout fake (tests/stripe_fake.py), which also keeps
Stripe's idempotency for PaymentIntents and makes the declines localstripe
cannot; SQLite and PostgreSQL; ledger audit after each test."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import payments_pb2, refill_pb2

from server.platform.clock import ManualClock
from tests.calls import FREE, credits, deliver
from tests.harness import Running, auth, expect_error, serving
from tests.stripe_fake import StripeFake, event
from tests.stripe_fixtures import stripe_settings

TEN = 100_000  # $10 of credits, millicredits


async def top_up(server: Running, user: str, cents: int, rid: str) -> payments_pb2.TopUpResponse:
    req = payments_pb2.TopUpRequest(amount_cents=cents, request_id=rid)
    return await server.s.payments.TopUp(req, metadata=auth(user))


async def buy(server: Running, fake: StripeFake, user: str, cents: int = 1_000) -> None:
    """A Checkout purchase: the card is saved on the customer for off-session use."""
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=uuid.uuid4().hex), metadata=auth(user)
    )
    session = fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    await fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200


async def save_card(server: Running, fake: StripeFake, user: str, card: str) -> None:
    link = await server.s.refill.CreateSetupLink(
        refill_pb2.CreateSetupLinkRequest(request_id=uuid.uuid4().hex), metadata=auth(user)
    )
    session = await fake.complete_setup(link.setup_url.rsplit("/", 1)[-1], card)
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200


def created_intents(fake: StripeFake) -> list[dict[str, Any]]:
    return [json.loads(body) for status, body in fake.intents_by_key.values() if status == 200]


async def test_top_up_charges_the_saved_card_once(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "topper"
    await buy(server, stripe_fake, user)
    r = await top_up(server, user, 2_000, "t-1")
    p = r.payment
    assert p.kind == payments_pb2.PAYMENT_KIND_TOP_UP and p.status == payments_pb2.PAYMENT_STATUS_PAID
    assert (p.amount_cents, p.credits_millicredits) == (2_000, 2 * TEN)
    assert r.balance_millicredits == FREE + 3 * TEN == await credits(server, user)
    assert not r.payment_url
    # The charge carried a Stripe idempotency key derived from the request.
    [posted] = [q for q in stripe_fake.requests if q["method"] == "POST" and q["path"] == "/v1/payment_intents"]
    assert posted["idempotency_key"]
    # A retry answers the same and charges nothing; the webhook after it credits nothing more.
    again = await top_up(server, user, 2_000, "t-1")
    assert again.payment == p and again.balance_millicredits == r.balance_millicredits
    assert stripe_fake.intents_created == 1
    [pi] = created_intents(stripe_fake)
    assert pi["status"] == "succeeded" and pi["metadata"]["payment_id"] == p.id
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    assert await credits(server, user) == FREE + 3 * TEN
    # The same request_id with another amount is refused, before any charge.
    await expect_error(top_up(server, user, 3_000, "t-1"), grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    assert stripe_fake.intents_created == 1
    listed = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth(user))
    assert [x.kind for x in listed.payments] == [payments_pb2.PAYMENT_KIND_TOP_UP, payments_pb2.PAYMENT_KIND_CHECKOUT]


async def test_lost_response_then_webhook_first_credits_once(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "lost-answer"
    await buy(server, stripe_fake, user)
    # Stripe charges, but every answer is lost (the SDK's own retries included).
    stripe_fake.lose_next = 3
    await expect_error(top_up(server, user, 1_500, "t-lost"), grpc.StatusCode.UNAVAILABLE, "STRIPE_UNAVAILABLE")
    assert stripe_fake.intents_created == 1
    [pi] = created_intents(stripe_fake)
    # The webhook is first to tell: the credits come with it.
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    assert await credits(server, user) == FREE + TEN + 150_000
    # The client retries the same request: the same PaymentIntent, no second charge, no second grant.
    r = await top_up(server, user, 1_500, "t-lost")
    assert r.payment.status == payments_pb2.PAYMENT_STATUS_PAID
    assert r.balance_millicredits == FREE + TEN + 150_000 == await credits(server, user)
    assert stripe_fake.intents_created == 1


async def test_a_retry_after_a_lost_response_reaches_the_same_charge(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "retry-topper"
    await buy(server, stripe_fake, user)
    stripe_fake.lose_next = 3  # charged, but no answer reaches the server
    await expect_error(top_up(server, user, 1_000, "t-r"), grpc.StatusCode.UNAVAILABLE, "STRIPE_UNAVAILABLE")
    assert await credits(server, user) == FREE + TEN
    # No webhook yet: the retry sends the same idempotency key and gets the first charge back.
    r = await top_up(server, user, 1_000, "t-r")
    assert r.payment.status == payments_pb2.PAYMENT_STATUS_PAID
    assert stripe_fake.intents_created == 1
    keys = {q["idempotency_key"] for q in stripe_fake.requests if q["path"] == "/v1/payment_intents"}
    assert len(keys) == 1
    [pi] = created_intents(stripe_fake)
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    assert r.balance_millicredits == FREE + 2 * TEN == await credits(server, user)


async def test_a_declined_top_up_is_payment_failed_with_a_recovery_link(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "declined-topper"
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")  # localstripe declines it
    info = await expect_error(top_up(server, user, 1_000, "t-d"), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_FAILED")
    assert info.metadata["decline_code"] == "card_declined"
    assert info.metadata["payment_url"].startswith(f"{stripe_fake.url}/pay/cs_")
    # The retry answers the same error and the same link, without charging again.
    calls = len(stripe_fake.requests)
    again = await expect_error(top_up(server, user, 1_000, "t-d"), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_FAILED")
    assert dict(again.metadata) == dict(info.metadata)
    assert not [q for q in stripe_fake.requests[calls:] if q["path"] == "/v1/payment_intents"]
    assert await credits(server, user) == FREE
    got = await server.s.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=info.metadata["payment_id"]), metadata=auth(user)
    )
    assert got.payment.status == payments_pb2.PAYMENT_STATUS_FAILED and got.payment.failure_reason == "card_declined"


async def test_authentication_required_answers_a_link_that_completes_the_payment(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "sca-topper"
    await buy(server, stripe_fake, user)
    stripe_fake.decline_next = [("authentication_required", "authentication_required")]
    r = await top_up(server, user, 2_500, "t-sca")
    assert r.payment.status == payments_pb2.PAYMENT_STATUS_PENDING
    assert r.payment_url.startswith(f"{stripe_fake.url}/pay/cs_") and r.balance_millicredits == 0
    assert await top_up(server, user, 2_500, "t-sca") == r  # the retry: the same link
    assert await credits(server, user) == FREE + TEN
    # The cardholder confirms on the link: this same payment is credited, once.
    session = stripe_fake.sessions[r.payment_url.rsplit("/", 1)[-1]]
    assert session["metadata"]["payment_id"] == r.payment.id and session["amount_total"] == 2_500
    await stripe_fake.pay(session["id"])
    for _ in range(2):
        assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    done = await top_up(server, user, 2_500, "t-sca")
    assert done.payment.status == payments_pb2.PAYMENT_STATUS_PAID and done.payment.id == r.payment.id
    assert done.balance_millicredits == FREE + TEN + 250_000 == await credits(server, user)


async def test_top_up_needs_a_card_and_a_valid_amount(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    await expect_error(top_up(server, "no-card", 1_000, "t-n"), grpc.StatusCode.FAILED_PRECONDITION,
                       "PAYMENT_METHOD_REQUIRED")
    for cents in (999, 1_000_001, -5):
        await expect_error(top_up(server, "no-card", cents, f"t-{cents}"), grpc.StatusCode.INVALID_ARGUMENT,
                           "INVALID_AMOUNT")
    assert stripe_fake.intents_created == 0


@pytest.fixture
async def limited_server(tmp_path: Any, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    from tests.harness import database

    async with database("sqlite", tmp_path) as url, serving(
        url, clock, payment_link_rate_per_second=0.5, payment_link_burst=2, **stripe_settings(stripe_fake)
    ) as running:
        yield running


async def test_top_up_is_rate_limited_like_payment_links(limited_server: Running) -> None:
    server = limited_server
    for i in range(2):
        await expect_error(top_up(server, "eager", 5, f"r{i}"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    await expect_error(top_up(server, "eager", 5, "r3"), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # Payment links have their own budget, and other users theirs.
    await expect_error(top_up(server, "calm", 5, "r4"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
