"""Every seed error comes back from an RPC, in the situation docs/api.md's error
table names, and the client package turns each reason into its typed
exception (flownexus_billing_client): INSUFFICIENT_CREDITS, INVALID_AMOUNT,
TIER_UPGRADE_FAILED, PAYMENT_FAILED (a declined top-up, a Pro upgrade whose
saved card declines) and AUTO_REFILL_FAILED (auto-refill enabled below its
threshold, and the first charge declines). Black-box: the real server on
loopback, the test Stripe, SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import uuid

import grpc
import pytest
from flownexus.billing.v1 import common_pb2, payments_pb2, refill_pb2, tier_pb2, usage_pb2
from flownexus_billing_client import (
    AutoRefillFailed,
    BillingClient,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    PaymentFailed,
    TierUpgradeFailed,
)

from tests.calls import FREE, credits, deliver
from tests.harness import Running, free_port, token
from tests.stripe_fake import StripeFake, event


def client(server: Running, user: str) -> BillingClient:
    assert server.app is not None
    return BillingClient(server.target, token(user), max_attempts=1)


async def save_card(server: Running, fake: StripeFake, user: str, card: str) -> None:
    async with client(server, user) as c:
        link = await c.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(request_id=uuid.uuid4().hex))
    session = await fake.complete_setup(link.setup_url.rsplit("/", 1)[-1], card)
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200


async def test_insufficient_credits_invalid_amount_and_not_found(stripe_server: Running) -> None:
    async with client(stripe_server, "seed-a") as c:
        with pytest.raises(InsufficientCredits) as e:
            await c.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=FREE + 1, request_id="too-much"))
        assert e.value.shortfall_millicredits == 1
        with pytest.raises(InvalidAmount) as bad:
            await c.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(amount_cents=999, request_id="x"))
        assert bad.value.reason == "INVALID_AMOUNT" and bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidArgument) as arg:
            await c.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=-1))
        assert not isinstance(arg.value, InvalidAmount)
        with pytest.raises(NotFound):
            await c.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id="pay_nothing"))


async def test_tier_upgrade_failed_while_the_first_pro_payment_is_open(stripe_server: Running) -> None:
    async with client(stripe_server, "seed-t") as c:
        up = tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="pro-1")
        first = await c.tier.UpgradeTier(up)
        assert first.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED
        with pytest.raises(TierUpgradeFailed) as e:
            await c.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="pro-2"))
        assert e.value.metadata["payment_url"] == first.payment_url


async def test_payment_failed_from_a_declined_top_up(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "seed-p"
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")
    async with client(server, user) as c:
        with pytest.raises(PaymentFailed) as e:
            await c.payments.TopUp(payments_pb2.TopUpRequest(amount_cents=1_000, request_id="top"))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.metadata["decline_code"] == "card_declined" and e.value.metadata["payment_url"]
    assert await credits(server, user) == FREE


async def test_payment_failed_from_a_pro_upgrade_on_a_declining_saved_card(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "seed-pro"
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")
    async with client(server, user) as c:
        with pytest.raises(PaymentFailed) as e:
            await c.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="pro"))
        assert e.value.metadata["decline_code"]
        # The way on: a Checkout link to pay with another card, also on GetTier.
        assert e.value.metadata["payment_url"].startswith(f"{stripe_fake.url}/pay/cs_")
        t = await c.tier.GetTier(tier_pb2.GetTierRequest())
        assert t.tier == common_pb2.TIER_FREE and t.payment_url == e.value.metadata["payment_url"]


async def test_auto_refill_failed_when_enabled_below_the_threshold_and_the_charge_declines(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "seed-r"
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")
    req = refill_pb2.ConfigureAutoRefillRequest(
        enabled=True, threshold_millicredits=FREE + 50_000, amount_cents=1_000, request_id="on"
    )
    async with client(server, user) as c:
        with pytest.raises(AutoRefillFailed) as e:
            await c.refill.ConfigureAutoRefill(req)  # 100 credits, below a 150-credit threshold
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.metadata["decline_code"] == "card_declined" and e.value.metadata["state"] == "paused"
        assert e.value.metadata["payment_url"].startswith(f"{stripe_fake.url}/pay/cs_")
        # The settings are saved and paused: nothing charges the declined card again on its own.
        r = (await c.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest())).auto_refill
        assert r.enabled and r.state == refill_pb2.AUTO_REFILL_STATE_PAUSED
        assert r.paused_reason == "AUTO_REFILL_FAILED" and r.last_failure_reason == "card_declined"
    charges = len([q for q in stripe_fake.requests if q["path"] == "/v1/payment_intents"])
    assert charges == 1
    assert server.app is not None
    await server.run_jobs()
    assert len([q for q in stripe_fake.requests if q["path"] == "/v1/payment_intents"]) == charges
    assert await credits(server, user) == FREE


async def test_enabling_below_the_threshold_with_a_good_card_refills_at_once(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "seed-ok"
    await save_card(server, stripe_fake, user, "pm_card_visa")
    req = refill_pb2.ConfigureAutoRefillRequest(
        enabled=True, threshold_millicredits=FREE + 50_000, amount_cents=1_000, request_id="on"
    )
    async with client(server, user) as c:
        r = (await c.refill.ConfigureAutoRefill(req)).auto_refill
    assert r.enabled and r.state != refill_pb2.AUTO_REFILL_STATE_PAUSED
    assert await credits(server, user) == FREE + 100_000  # charged during the call, not later


async def test_an_rpc_the_server_lacks_is_not_implemented_yet() -> None:
    bare = grpc.aio.server()
    port = bare.add_insecure_port(f"127.0.0.1:{free_port()}")
    await bare.start()
    try:
        async with BillingClient(f"127.0.0.1:{port}", "tok", max_attempts=1) as c:
            with pytest.raises(NotImplementedYet):
                await c.payments.TopUp(payments_pb2.TopUpRequest(amount_cents=1_000, request_id="t"))
    finally:
        await bare.stop(0)
