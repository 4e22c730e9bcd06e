"""Purchases and auto-refill for an org: owners and admins buy for the org's
wallet, which is credited exactly once whatever the webhook order; the saved
card is the org's and auto-refill charges it; members and strangers cannot
buy, list payments or change auto-refill (the role matrix)."""

from __future__ import annotations

import asyncio
import copy
import uuid

import grpc
from flownexus.billing.v1 import balance_pb2, payments_pb2, refill_pb2

from tests.calls import deliver
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import ADMIN_ROLE, add_member, create_org
from tests.orgs.test_org_wallet import fund_org, spend_req
from tests.stripe_fake import StripeFake, event

TEN = 1_000  # cents: $10 buys 100 credits
CREDITS_10 = 100_000
FREE = 100_000
PD = grpc.StatusCode.PERMISSION_DENIED


async def org_balance(server: Running, org: str) -> int:
    got = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=auth("olga"))
    return got.credits_millicredits


async def test_an_org_buys_once_whatever_the_webhook_order(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await add_member(server, org, "adam", ADMIN_ROLE, by="olga")
    # The role matrix: a member neither buys nor changes auto-refill; a stranger reads nothing.
    link_req = payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="l0", org_id=org)
    await expect_error(server.s.payments.CreatePaymentLink(link_req, metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.payments.TopUp(payments_pb2.TopUpRequest(
        amount_cents=TEN, request_id="t0", org_id=org), metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.refill.ConfigureAutoRefill(refill_pb2.ConfigureAutoRefillRequest(
        enabled=True, threshold_millicredits=10_000, amount_cents=TEN, request_id="r0", org_id=org),
        metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(
        request_id="s0", org_id=org), metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(org_id=org),
                                                      metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(org_id=org),
                                                     metadata=auth("eve")), PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.payments.CreatePaymentLink(link_req, metadata=auth("eve")), PD, "NOT_ORG_MEMBER")

    # An admin buys for the org: the org's wallet is credited once, whatever the order.
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="l1", org_id=org), metadata=auth("adam"))
    session = stripe_fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    pi = await stripe_fake.pay(session["id"])
    completed = event("checkout.session.completed", copy.deepcopy(session))
    succeeded = event("payment_intent.succeeded", pi)
    statuses = await asyncio.gather(
        deliver(server, succeeded), *(deliver(server, completed) for _ in range(3)), deliver(server, succeeded))
    assert statuses == [200] * 5
    assert await org_balance(server, org) == CREDITS_10
    own = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("adam"))
    assert own.credits_millicredits == FREE  # the buyer's own wallet got nothing
    listed = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(org_id=org), metadata=auth("olga"))
    assert [(p.id, p.user_id, p.status) for p in listed.payments] == [
        (link.payment_id, org, payments_pb2.PAYMENT_STATUS_PAID)]
    got = await server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=link.payment_id),
                                             metadata=auth("olga"))
    assert got.payment.credits_millicredits == CREDITS_10
    await expect_error(server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=link.payment_id),
                                                    metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    mine = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth("adam"))
    assert not mine.payments


async def test_the_orgs_saved_card_pays_its_auto_refill(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    link = await server.s.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(
        request_id="s1", org_id=org), metadata=auth("olga"))
    session = await stripe_fake.complete_setup(link.setup_url.rsplit("/", 1)[-1], "pm_card_visa")
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    cfg = (await server.s.refill.ConfigureAutoRefill(refill_pb2.ConfigureAutoRefillRequest(
        enabled=True, threshold_millicredits=50_000, amount_cents=TEN, request_id=uuid.uuid4().hex, org_id=org),
        metadata=auth("olga"))).auto_refill
    assert cfg.enabled and cfg.payment_method.last4 == "4242"
    # The card is the org's: the owner's own wallet has none.
    own = (await server.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=auth("olga"))).auto_refill
    assert not own.payment_method.last4
    await fund_org(server, org, 60_000)
    await server.s.usage.Spend(spend_req(20_000, "m1", org), metadata=auth("mia"))  # crosses 50 credits
    await server.run_jobs()
    await server.run_jobs()
    assert await org_balance(server, org) == 40_000 + CREDITS_10
    paid = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(org_id=org), metadata=auth("olga"))
    refills = [p for p in paid.payments if p.kind == payments_pb2.PAYMENT_KIND_AUTO_REFILL]
    assert [(p.status, p.amount_cents, p.user_id) for p in refills] == [(payments_pb2.PAYMENT_STATUS_PAID, TEN, org)]
