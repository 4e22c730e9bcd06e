"""One Stripe customer per user, whoever asks first: purchases, Pro upgrades and
card setups all get it from one place, under one Stripe idempotency key."""

from __future__ import annotations

import asyncio

from flownexus.billing.v1 import common_pb2, payments_pb2, refill_pb2, tier_pb2

from server.ledger import keys
from tests.harness import auth
from tests.stripe_fake import StripeFake


async def test_buying_and_upgrading_at_once_make_one_customer(stripe_server, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "both"
    md = auth(user)
    link, upgrade, setup = await asyncio.gather(
        server.s.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(amount_cents=2_000, request_id="buy"),
                                            metadata=md),
        server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="pro"), metadata=md),
        server.s.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(request_id="card"), metadata=md),
    )
    assert link.payment_url and upgrade.payment_url and setup.setup_url
    creates = [r for r in stripe_fake.requests if r["method"] == "POST" and r["path"] == "/v1/customers"]
    assert creates and {r["idempotency_key"] for r in creates} == {keys.stripe_customer(user)}
    customers = {s["customer"] for s in stripe_fake.sessions.values()}
    assert len(stripe_fake.sessions) == 3 and len(customers) == 1
    assert server.app is not None
    assert await server.app.payments.customers.known(user) == customers.pop()
