"""Pro invoices in payment history: every paid, failed or refunded subscription
invoice is one payment of kind SUBSCRIPTION (amount, status, invoice URL),
listed by ListPayments and GetPayment, recorded once whatever the number and
order of its events; a refund claws back like a purchase's.

Real subscriptions and invoices in localstripe (through the Checkout fake),
signed webhooks, SQLite and PostgreSQL, ledger audit after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flownexus.billing.v1 import common_pb2, payments_pb2, tier_pb2

from server.platform.clock import ManualClock
from tests.calls import FREE, credits, deliver
from tests.harness import Running, auth, serving
from tests.stripe_fake import StripeFake, event
from tests.stripe_fixtures import stripe_settings

PRO = 1_000_000


@pytest.fixture
async def pro_server(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **stripe_settings(stripe_fake)) as running:
        assert running.app is not None
        stripe_fake.webhook_url = f"{running.http_base}/webhooks/stripe"
        yield running
        await stripe_fake.settled()


async def payments(server: Running, user: str) -> list[payments_pb2.Payment]:
    r = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=50), metadata=auth(user))
    return list(r.payments)


async def subscribe(
    server: Running, fake: StripeFake, user: str, *, invoice_first: bool = False, card: str = "pm_card_visa"
) -> dict[str, Any]:
    r = await server.s.tier.UpgradeTier(
        tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id=f"up-{user}"), metadata=auth(user)
    )
    assert r.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED
    return await fake.complete(r.payment_url.rsplit("/", 1)[-1], card, invoice_first=invoice_first)


@pytest.mark.parametrize("invoice_first", [False, True], ids=["session-first", "invoice-first"])
async def test_a_paid_pro_invoice_is_one_subscription_payment(
    pro_server: Running, stripe_fake: StripeFake, invoice_first: bool
) -> None:
    server, user = pro_server, "pro-payer"
    done = await subscribe(server, stripe_fake, user, invoice_first=invoice_first)
    invoice = done["invoice"]
    [p] = await payments(server, user)
    assert p.kind == payments_pb2.PAYMENT_KIND_SUBSCRIPTION
    assert p.status == payments_pb2.PAYMENT_STATUS_PAID
    assert (p.amount_cents, p.currency, p.credits_millicredits) == (2_900, invoice["currency"], PRO)
    assert p.invoice_url == invoice["hosted_invoice_url"]
    assert p.id == f"pro_{invoice['id']}"
    got = await server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=p.id), metadata=auth(user))
    assert got.payment == p
    # Replays and the same invoice under new event ids: still one payment, one allowance.
    for ev in done["events"]:
        assert await stripe_fake.deliver(ev) == 200
    for kind in ("invoice.paid", "invoice.payment_succeeded"):
        assert await stripe_fake.deliver(event(kind, invoice)) == 200
    assert await payments(server, user) == [p]
    assert await credits(server, user) == FREE + PRO


async def test_a_declined_pro_invoice_is_a_failed_subscription_payment(
    pro_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = pro_server, "pro-declined"
    done = await subscribe(server, stripe_fake, user, card="pm_card_chargeCustomerFail")
    assert done["statuses"] == {"invoice.payment_failed": 200}
    [p] = await payments(server, user)
    assert p.kind == payments_pb2.PAYMENT_KIND_SUBSCRIPTION and p.status == payments_pb2.PAYMENT_STATUS_FAILED
    assert p.failure_reason == "card_declined" and p.amount_cents == 2_900
    assert p.invoice_url == done["invoice"]["hosted_invoice_url"]
    assert await credits(server, user) == FREE


async def test_failed_then_paid_invoice_in_any_order_is_one_payment(stripe_server: Running) -> None:
    server, user = stripe_server, "pro-retry"

    def inv(status: str) -> dict[str, Any]:
        now = server.clock.now_us() // 1_000_000
        return {
            "id": "in_retry1", "object": "invoice", "customer": "cus_retry", "status": status, "currency": "usd",
            "amount_due": 2_900, "amount_paid": 2_900 if status == "paid" else 0,
            "hosted_invoice_url": "https://invoice.stripe.test/in_retry1",
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": "sub_retry", "metadata": {"user_id": user}}},
            "lines": {"data": [{"period": {"start": now, "end": now + 30 * 86_400}}]},
        }

    await credits(server, user)
    assert await deliver(server, event("invoice.payment_failed", inv("open"))) == 200
    [p] = await payments(server, user)
    assert p.kind == payments_pb2.PAYMENT_KIND_SUBSCRIPTION and p.status == payments_pb2.PAYMENT_STATUS_FAILED
    assert p.failure_reason and p.invoice_url.endswith("in_retry1") and p.amount_cents == 2_900
    # Stripe's retry succeeds; then a stale failure arrives late: paid stays.
    assert await deliver(server, event("invoice.paid", inv("paid"))) == 200
    assert await deliver(server, event("invoice.payment_failed", inv("open"))) == 200
    [p] = await payments(server, user)
    assert p.status == payments_pb2.PAYMENT_STATUS_PAID and not p.failure_reason
    assert await credits(server, user) == FREE + PRO


async def test_a_refunded_pro_invoice_claws_back_like_a_purchase(pro_server: Running, stripe_fake: StripeFake) -> None:
    server, user = pro_server, "pro-refund"
    done = await subscribe(server, stripe_fake, user)
    pi = await stripe_fake.api("GET", f"/v1/payment_intents/{done['invoice']['payment_intent']}")
    # Half the invoice back: half its credits (the purchased lot first, then earned, then allowance).
    charge = await stripe_fake.refund(pi, 1_450)
    assert await stripe_fake.deliver(event("charge.refunded", charge)) == 200
    [p] = await payments(server, user)
    assert p.status == payments_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED and p.refunded_cents == 1_450
    assert await credits(server, user) == FREE + PRO // 2
    # The same event again claws nothing more; the rest of the refund takes the rest.
    assert await stripe_fake.deliver(event("charge.refunded", charge)) == 200
    assert await credits(server, user) == FREE + PRO // 2
    charge = await stripe_fake.refund(pi, 1_450)
    assert await stripe_fake.deliver(event("charge.refunded", charge)) == 200
    [p] = await payments(server, user)
    assert p.status == payments_pb2.PAYMENT_STATUS_REFUNDED and p.refunded_cents == 2_900
    assert await credits(server, user) == FREE
