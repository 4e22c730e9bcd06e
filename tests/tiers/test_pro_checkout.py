"""The Pro upgrade through a subscription-mode Checkout, end to end: UpgradeTier
without a saved card -> PAYMENT_REQUIRED link -> the customer pays it in the
Checkout fake, which creates the real subscription and its first invoice in
localstripe and delivers the signed events as Stripe would -> the user is on
Pro with the month's 1,000 credits, once, whatever the order and the replays.

Real server on loopback, SQLite and PostgreSQL, ledger audit after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from flownexus.billing.v1 import common_pb2, history_pb2, refill_pb2, tier_pb2
from sqlalchemy import text

from server.platform.clock import ManualClock
from tests.calls import credits
from tests.harness import Running, auth, expect_error, serving
from tests.stripe_fake import StripeFake, event
from tests.stripe_fixtures import stripe_settings

FREE = 100_000
PRO = 1_000_000


@pytest.fixture
async def pro_server(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **stripe_settings(stripe_fake)) as running:
        assert running.app is not None
        # The fake sends Stripe's webhooks to this server itself.
        stripe_fake.webhook_url = f"{running.http_base}/webhooks/stripe"
        yield running
        await stripe_fake.settled()


async def upgrade(server: Running, user: str, rid: str) -> tier_pb2.UpgradeTierResponse:
    req = tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id=rid)
    return await server.s.tier.UpgradeTier(req, metadata=auth(user))


async def get_tier(server: Running, user: str) -> tier_pb2.GetTierResponse:
    return await server.s.tier.GetTier(tier_pb2.GetTierRequest(), metadata=auth(user))


async def pro_grants(server: Running, user: str) -> list[int]:
    req = history_pb2.ListTransactionsRequest(types=[common_pb2.TRANSACTION_TYPE_ALLOWANCE_GRANT], page_size=100)
    r = await server.s.history.ListTransactions(req, metadata=auth(user))
    return [t.amount_millicredits for t in r.transactions if t.amount_millicredits == PRO]


async def outcomes(server: Running, etype: str) -> list[str]:
    """How the server handled each stored event of this type."""
    assert server.app is not None
    async with server.read() as conn:
        q = text("SELECT outcome FROM webhook_events WHERE type = :t ORDER BY received_at_us, id")
        return [str(o) for o in (await conn.execute(q, {"t": etype})).scalars()]


async def stored_subscription(server: Running, user: str) -> tuple[str, str, str]:
    assert server.app is not None
    async with server.read() as conn:
        q = text("SELECT stripe_subscription_id, stripe_customer_id, status FROM tier_subscriptions WHERE user_id = :u")
        row = (await conn.execute(q, {"u": user})).one()
    return str(row[0]), str(row[1]), str(row[2])


@pytest.mark.parametrize("invoice_first", [False, True], ids=["session-then-invoice", "invoice-then-session"])
async def test_pro_through_subscription_checkout(pro_server: Running, stripe_fake: StripeFake, invoice_first: bool) -> None:
    server, user = pro_server, "pia"
    # No saved card: a Checkout link in subscription mode; the tier does not change yet.
    r = await upgrade(server, user, "up-1")
    assert r.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED and r.payment_url.startswith(stripe_fake.url)
    assert r.new_tier == common_pb2.TIER_PRO and r.monthly_credits_millicredits == PRO
    session_id = r.payment_url.rsplit("/", 1)[-1]
    assert stripe_fake.sessions[session_id]["mode"] == "subscription"
    t = await get_tier(server, user)
    assert t.tier == common_pb2.TIER_FREE and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_INCOMPLETE
    # Using Pro before paying: refused, and the error carries the link.
    info = await expect_error(upgrade(server, user, "up-2"), grpc.StatusCode.FAILED_PRECONDITION, "TIER_UPGRADE_FAILED")
    assert info.metadata["payment_url"] == r.payment_url

    # The customer pays: a real subscription and a paid invoice in localstripe, signed events to us.
    done = await stripe_fake.complete(session_id, invoice_first=invoice_first)
    sub, invoice = done["subscription"], done["invoice"]
    assert sub["status"] == "active" and sub["metadata"] == {"user_id": user, "tier": "pro"}
    assert invoice["status"] == "paid" and invoice["amount_paid"] == 2900 and invoice["subscription"] == sub["id"]
    assert done["statuses"] == {"checkout.session.completed": 200, "invoice.paid": 200, "invoice.payment_succeeded": 200}

    t = await get_tier(server, user)
    assert t.tier == common_pb2.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert t.monthly_credits_millicredits == PRO and not t.payment_url
    assert t.allowance_remaining_millicredits == FREE + PRO  # this month's free allowance stays
    assert await credits(server, user) == FREE + PRO
    assert await pro_grants(server, user) == [PRO]
    sub_id, customer, status = await stored_subscription(server, user)
    assert (sub_id, customer, status) == (sub["id"], sub["customer"], "active")
    # The completed session was handled (not "unmatched"): the subscription is recorded for the user.
    assert await outcomes(server, "checkout.session.completed") == ["subscription_recorded"]
    assert await outcomes(server, "invoice.paid") == ["allowance_granted"]
    assert await outcomes(server, "invoice.payment_succeeded") == ["duplicate_invoice"]

    # Replays: the same events again, and the same invoice under new event ids: nothing more.
    for ev in done["events"]:
        assert await stripe_fake.deliver(ev) == 200
    for kind in ("invoice.paid", "invoice.payment_succeeded", "checkout.session.completed"):
        obj = invoice if kind.startswith("invoice.") else done["session"]
        assert await stripe_fake.deliver(event(kind, obj)) == 200
    assert await credits(server, user) == FREE + PRO
    assert await pro_grants(server, user) == [PRO]
    assert (await get_tier(server, user)).tier == common_pb2.TIER_PRO
    await expect_error(upgrade(server, user, "up-3"), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ON_TIER")
    assert await upgrade(server, user, "up-1") == r  # the first request still answers the same

    # The card Checkout saved is the customer's: auto-refill can use it.
    cfg = await server.s.refill.ConfigureAutoRefill(
        refill_pb2.ConfigureAutoRefillRequest(enabled=True, threshold_millicredits=50_000, amount_cents=1_000,
                                              request_id="cfg"),
        metadata=auth(user),
    )
    assert cfg.auto_refill.enabled and cfg.auto_refill.payment_method.last4 == "4242"


async def test_declined_subscription_checkout_leaves_the_user_on_free(pro_server: Running, stripe_fake: StripeFake) -> None:
    server, user = pro_server, "dora"
    r = await upgrade(server, user, "up-1")
    done = await stripe_fake.complete(r.payment_url.rsplit("/", 1)[-1], "pm_card_chargeCustomerFail")
    assert done["statuses"] == {"invoice.payment_failed": 200}
    assert done["session"]["status"] == "open"
    t = await get_tier(server, user)
    assert t.tier == common_pb2.TIER_FREE and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_INCOMPLETE
    assert t.payment_url == r.payment_url  # the link is still the way to pay
    assert await credits(server, user) == FREE


async def test_expired_upgrade_checkout_can_be_started_again(pro_server: Running, stripe_fake: StripeFake) -> None:
    server, user = pro_server, "eli"
    first = await upgrade(server, user, "up-1")
    session = stripe_fake.expire(first.payment_url.rsplit("/", 1)[-1])
    assert await stripe_fake.deliver(event("checkout.session.expired", dict(session))) == 200
    t = await get_tier(server, user)
    assert t.tier == common_pb2.TIER_FREE and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_NONE
    assert not t.payment_url
    # Not stuck behind a dead link: a new request gets a new Checkout, which works.
    second = await upgrade(server, user, "up-2")
    assert second.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED and second.payment_url != first.payment_url
    done = await stripe_fake.complete(second.payment_url.rsplit("/", 1)[-1])
    assert set(done["statuses"].values()) == {200}
    assert (await get_tier(server, user)).tier == common_pb2.TIER_PRO
    assert await credits(server, user) == FREE + PRO
