"""Buying credits with Stripe: payment links, signed webhooks, exactly-once
crediting, reconciliation, refunds and disputes, payment history.

Real HTTP on loopback: the billing server talks to localstripe behind a small
Checkout Sessions fake (tests/stripe_fake.py); webhooks are signed with
Stripe's scheme and posted to the server's own HTTP listener.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, common_pb2, history_pb2, payments_pb2

from tests.calls import credits, deliver
from tests.calls import post_webhook as post
from tests.harness import WAIT, Running, auth, expect_error
from tests.stripe_fake import WEBHOOK_SECRET, StripeFake, encode, event, sign

FREE = 100_000  # the free tier's allowance, millicredits
TEN_DOLLARS = 1_000
CREDITS_10 = 100_000  # $10 at 10 credits/USD, in millicredits


async def create_link(server: Running, user: str, cents: int, rid: str | None = None) -> payments_pb2.CreatePaymentLinkResponse:
    req = payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=rid or uuid.uuid4().hex)
    return await server.s.payments.CreatePaymentLink(req, metadata=auth(user))


async def payment(server: Running, user: str, pid: str) -> payments_pb2.Payment:
    r = await server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=pid), metadata=auth(user))
    return r.payment


def session_of(fake: StripeFake, link: payments_pb2.CreatePaymentLinkResponse) -> dict[str, Any]:
    sid = link.payment_url.rsplit("/", 1)[-1]
    return fake.sessions[sid]


async def buy(server: Running, fake: StripeFake, user: str, cents: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Link -> customer pays -> signed checkout.session.completed. Returns (payment_id, session, pi)."""
    link = await create_link(server, user, cents)
    session = session_of(fake, link)
    pi = await fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    return link.payment_id, session, pi


# ---- the purchase path -----------------------------------------------------------------


async def test_full_purchase_path(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "alice"
    watch = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth(user))
    snapshot = await watch.read()
    assert snapshot.credits_millicredits == FREE

    link = await create_link(server, user, 2_500, "buy-1")
    assert link.credits_amount_millicredits == 250_000
    assert link.payment_id.startswith("pay_")
    assert link.expires_at.seconds > time.time()
    session = session_of(stripe_fake, link)
    # What the Checkout Session was asked for.
    assert session["mode"] == "payment"
    assert session["client_reference_id"] == user
    assert session["metadata"] == {"user_id": user, "credits": "250000", "payment_id": link.payment_id}
    assert session["payment_intent_data"]["setup_future_usage"] == "off_session"
    assert session["line_items_requested"][0]["price_data"]["currency"] == "usd"
    assert session["amount_total"] == 2_500
    assert session["customer"].startswith("cus_")
    created = [r for r in stripe_fake.requests if r["method"] == "POST"]
    assert created and all(r["idempotency_key"] for r in created), created
    assert all(r["stripe_version"] for r in stripe_fake.requests)

    p = await payment(server, user, link.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_PENDING and p.payment_url == link.payment_url
    assert await credits(server, user) == FREE  # nothing before the webhook

    pi = await stripe_fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    charge = await stripe_fake.charge_of(pi)
    assert await deliver(server, event("charge.succeeded", {**charge, "receipt_url": "https://pay.stripe.test/r/1"})) == 200

    assert await credits(server, user) == FREE + 250_000
    p = await payment(server, user, link.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_PAID
    assert (p.amount_cents, p.currency, p.credits_millicredits) == (2_500, "usd", 250_000)
    assert p.kind == payments_pb2.PAYMENT_KIND_CHECKOUT
    assert p.invoice_url == "https://pay.stripe.test/r/1"
    assert p.payment_url == ""

    hist = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=auth(user))
    purchase = [t for t in hist.transactions if t.type == common_pb2.TRANSACTION_TYPE_PURCHASE]
    assert len(purchase) == 1 and purchase[0].amount_millicredits == 250_000

    ev = await asyncio.wait_for(watch.read(), WAIT)
    assert ev.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER
    assert ev.credits_millicredits == FREE + 250_000
    assert ev.transaction.type == common_pb2.TRANSACTION_TYPE_PURCHASE
    watch.cancel()

    # The same request_id returns the same link; other parameters are refused.
    again = await create_link(server, user, 2_500, "buy-1")
    assert again == link
    await expect_error(create_link(server, user, 2_600, "buy-1"), grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    # Another user's identical request_id is another payment.
    other = await create_link(server, "bob", 2_500, "buy-1")
    assert other.payment_id != link.payment_id


async def test_customer_is_reused(stripe_server: Running, stripe_fake: StripeFake) -> None:
    a = session_of(stripe_fake, await create_link(stripe_server, "carol", 1_000))
    b = session_of(stripe_fake, await create_link(stripe_server, "carol", 1_500))
    assert a["customer"] == b["customer"]
    assert len([r for r in stripe_fake.requests if r["path"] == "/v1/customers" and r["method"] == "POST"]) == 1


async def test_concurrent_duplicate_link_requests_make_one_payment(stripe_server: Running, stripe_fake: StripeFake) -> None:
    links = await asyncio.gather(*(create_link(stripe_server, "dora", 5_000, "same") for _ in range(5)))
    assert len({lk.SerializeToString(deterministic=True) for lk in links}) == 1
    r = await stripe_server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth("dora"))
    assert len(r.payments) == 1


async def test_duplicate_and_out_of_order_deliveries_credit_once(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "erin"
    link = await create_link(server, user, 10_000)
    session = session_of(stripe_fake, link)
    pi = await stripe_fake.pay(session["id"])
    completed = event("checkout.session.completed", copy.deepcopy(session))
    succeeded = event("payment_intent.succeeded", pi)
    # payment_intent.succeeded first, then the same completed event 5 times at once.
    statuses = await asyncio.gather(
        deliver(server, succeeded), *(deliver(server, completed) for _ in range(5)), deliver(server, succeeded)
    )
    assert statuses == [200] * 7
    assert await credits(server, user) == FREE + 1_000_000
    # Distinct event ids for the same payment (Stripe retries re-send the same id,
    # but both event types must still grant once).
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await credits(server, user) == FREE + 1_000_000
    hist = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=auth(user))
    assert len([t for t in hist.transactions if t.type == common_pb2.TRANSACTION_TYPE_PURCHASE]) == 1


async def test_unpaid_completion_waits_for_async_success(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "fay"
    link = await create_link(server, user, 1_000)
    session = {**session_of(stripe_fake, link), "status": "complete", "payment_status": "unpaid"}
    assert await deliver(server, event("checkout.session.completed", session)) == 200
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    assert await credits(server, user) == FREE
    assert await deliver(server, event("checkout.session.async_payment_succeeded", {**session, "payment_status": "paid"})) == 200
    assert await credits(server, user) == FREE + CREDITS_10


async def test_failed_and_expired_payments_grant_nothing(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "gus"
    failed = await create_link(server, user, 1_000)
    s1 = session_of(stripe_fake, failed)
    assert await deliver(server, event("checkout.session.async_payment_failed", s1)) == 200
    p = await payment(server, user, failed.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_FAILED and p.failure_reason == "async_payment_failed"

    declined = await create_link(server, user, 1_000)
    pi = {"id": "pi_declined", "object": "payment_intent", "metadata": session_of(stripe_fake, declined)["metadata"],
          "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"}}
    assert await deliver(server, event("payment_intent.payment_failed", pi)) == 200
    assert (await payment(server, user, declined.payment_id)).failure_reason == "insufficient_funds"

    expired = await create_link(server, user, 1_000)
    assert await deliver(server, event("checkout.session.expired", stripe_fake.expire(session_of(stripe_fake, expired)["id"]))) == 200
    assert (await payment(server, user, expired.payment_id)).status == payments_pb2.PAYMENT_STATUS_EXPIRED
    assert await credits(server, user) == FREE


# ---- webhook authenticity ---------------------------------------------------------------


async def test_bad_signatures_are_refused_without_effect(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "hal"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    ev = event("checkout.session.completed", copy.deepcopy(session))
    body = encode(ev)
    tampered = body.replace(b'"amount_total": 1000', b'"amount_total": 9999')
    assert tampered != body
    assert await post(server, tampered, {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}) == 400
    assert await deliver(server, ev, secret="whsec_wrong") == 400
    assert await deliver(server, ev, t=int(time.time()) - 600) == 400
    assert await post(server, body, {}) == 400
    assert await post(server, body, {"Stripe-Signature": "garbage"}) == 400
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    # The genuine delivery of the very same event id still works afterwards.
    assert await deliver(server, ev) == 200
    assert await credits(server, user) == FREE + CREDITS_10


async def test_unknown_events_are_stored_and_acknowledged(stripe_server: Running, stripe_fake: StripeFake) -> None:
    assert await deliver(stripe_server, event("customer.updated", {"id": "cus_x", "object": "customer"})) == 200
    assert await deliver(stripe_server, event("payment_intent.succeeded", {"id": "pi_unknown", "metadata": {}})) == 200
    from sqlalchemy import text

    assert stripe_server.app is not None
    async with stripe_server.read() as conn:
        rows = (await conn.execute(text("SELECT type, outcome FROM webhook_events ORDER BY type"))).all()
    assert [tuple(r) for r in rows] == [("customer.updated", "ignored"), ("payment_intent.succeeded", "unmatched")]


async def test_handler_failure_returns_500_and_applies_nothing(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "ivy"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    ev = event("checkout.session.completed", copy.deepcopy(session))
    assert server.app is not None
    from server.payments import webhooks

    original = webhooks.repo.store_event

    async def broken(conn: Any, row: Any) -> None:
        raise RuntimeError("disk on fire")

    webhooks.repo.store_event = broken  # type: ignore[assignment]
    try:
        assert await deliver(server, ev) == 500
    finally:
        webhooks.repo.store_event = original  # type: ignore[assignment]
    assert await credits(server, user) == FREE  # the grant before the failure was rolled back
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    assert await deliver(server, ev) == 200  # Stripe's retry succeeds
    assert await credits(server, user) == FREE + CREDITS_10


async def test_webhook_without_secret_is_503(db_url: str, clock: Any, stripe_fake: StripeFake) -> None:
    running = Running(db_url, clock, stripe_api_key="sk_test_x", stripe_api_base=stripe_fake.url)
    await running.start()
    try:
        assert await deliver(running, event("customer.updated", {"id": "cus_x"})) == 503
    finally:
        await running.stop()


# ---- reconciliation -----------------------------------------------------------------------


async def test_lost_webhook_is_credited_by_reconciliation(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "jack"
    link = await create_link(server, user, 3_000)
    unpaid = await create_link(server, user, 1_000)
    await stripe_fake.pay(session_of(stripe_fake, link)["id"])
    assert server.app is not None
    await server.run_jobs()  # too young: not looked at yet
    assert await credits(server, user) == FREE
    server.clock.advance(server.settings.payment_reconcile_after_seconds + 1)
    done = await server.run_jobs()
    assert done["reconcile_payments"] == 1
    assert await credits(server, user) == FREE + 300_000
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_PAID
    assert (await payment(server, user, unpaid.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    # Running again, and the late webhook arriving after all, change nothing.
    await server.run_jobs()
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session_of(stripe_fake, link)))) == 200
    assert await credits(server, user) == FREE + 300_000
    # An expired session is settled as expired, at the next point of its
    # schedule: twice the age of the first (docs/fairness.md).
    stripe_fake.expire(session_of(stripe_fake, unpaid)["id"])
    await server.run_jobs()
    assert (await payment(server, user, unpaid.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    server.clock.advance(server.settings.payment_reconcile_after_seconds)
    await server.run_jobs()
    assert (await payment(server, user, unpaid.payment_id)).status == payments_pb2.PAYMENT_STATUS_EXPIRED


@pytest.mark.parametrize("linked_by", ["payment_intent.succeeded", "checkout.session.completed"])
async def test_receipt_of_a_charge_event_that_came_first(
    stripe_server: Running, stripe_fake: StripeFake, linked_by: str
) -> None:
    """Stripe often sends charge.succeeded before anything tells us which
    payment its PaymentIntent belongs to: the event is stored unmatched, and
    its receipt is picked up once the payment is linked."""
    server, user = stripe_server, "rita"
    link = await create_link(server, user, 1_500)
    session = session_of(stripe_fake, link)
    pi = await stripe_fake.pay(session["id"])
    charge = await stripe_fake.charge_of(pi)
    assert await deliver(server, event("charge.succeeded", charge)) == 200
    p = await payment(server, user, link.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_PENDING and p.invoice_url == ""
    linking = pi if linked_by == "payment_intent.succeeded" else copy.deepcopy(session)
    assert await deliver(server, event(linked_by, linking)) == 200
    p = await payment(server, user, link.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_PAID
    assert p.invoice_url == charge["receipt_url"] and charge["receipt_url"].endswith(charge["id"])
    assert await credits(server, user) == FREE + 150_000


# ---- refunds and disputes ------------------------------------------------------------------


async def test_partial_then_full_refund_claws_back_proportionally(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "kim"
    pid, _, pi = await buy(server, stripe_fake, user, 3_000)  # 300 credits
    assert await credits(server, user) == FREE + 300_000
    charge = await stripe_fake.refund(pi, 1_000)  # a third
    assert charge["amount_refunded"] == 1_000
    refunded = event("charge.refunded", charge)
    assert await deliver(server, refunded) == 200
    assert await deliver(server, refunded) == 200  # duplicate
    assert await credits(server, user) == FREE + 200_000
    p = await payment(server, user, pid)
    assert p.status == payments_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED and p.refunded_cents == 1_000
    # Spend down, then the rest is refunded: the balance goes negative.
    from flownexus.billing.v1 import usage_pb2

    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=250_000, request_id="s"), metadata=auth(user))
    full = await stripe_fake.refund(pi)  # localstripe refunds the full amount again; Stripe caps at the charge
    assert await deliver(server, event("charge.refunded", {**full, "amount_refunded": 3_000})) == 200
    assert await credits(server, user) == FREE + 300_000 - 250_000 - 300_000
    p = await payment(server, user, pid)
    assert p.status == payments_pb2.PAYMENT_STATUS_REFUNDED and p.refunded_cents == 3_000
    # A late, older partial-refund event changes nothing.
    assert await deliver(server, event("charge.refunded", charge)) == 200
    assert await credits(server, user) == FREE - 250_000
    hist = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=auth(user))
    claws = [t.amount_millicredits for t in hist.transactions if t.type == common_pb2.TRANSACTION_TYPE_REFUND_CLAWBACK]
    assert sorted(claws) == [-200_000, -100_000]


async def test_proportional_clawback_uses_integer_math(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "lee"
    _, _, pi = await buy(server, stripe_fake, user, 1_003)  # 100.3 credits
    charge = await stripe_fake.refund(pi, 1)
    assert await deliver(server, event("charge.refunded", charge)) == 200
    # 100_300 * 1 // 1_003 = 100 millicredits
    assert await credits(server, user) == FREE + 100_300 - 100


async def test_refund_before_completion_event_grants_then_claws_back(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "max"
    link = await create_link(server, user, 2_000)
    session = session_of(stripe_fake, link)
    pi = await stripe_fake.pay(session["id"])
    # The PaymentIntent id is learnt from the charge's metadata-free event? No: from the
    # PI event first, then the refund arrives before checkout.session.completed.
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    charge = await stripe_fake.refund(pi, 2_000)
    assert await deliver(server, event("charge.refunded", charge)) == 200
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_REFUNDED


async def test_dispute_claws_back_flags_and_won_dispute_restores(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "ned"
    pid, _, pi = await buy(server, stripe_fake, user, 2_000)
    charge = await stripe_fake.charge_of(pi)
    dispute = {"id": "dp_1", "object": "dispute", "charge": charge["id"], "payment_intent": pi["id"],
               "amount": 2_000, "currency": "usd", "status": "needs_response"}
    assert await deliver(server, event("charge.dispute.created", dispute)) == 200
    assert await deliver(server, event("charge.dispute.created", dispute)) == 200  # another event id, same dispute
    assert await credits(server, user) == FREE
    p = await payment(server, user, pid)
    assert p.status == payments_pb2.PAYMENT_STATUS_DISPUTED
    bal = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))
    assert server.app is not None
    state = await server.app.reader.wallet(user)
    assert state is not None and state.flagged_reason and "dp_1" in state.flagged_reason
    del bal
    won = {**dispute, "status": "won"}
    assert await deliver(server, event("charge.dispute.closed", won)) == 200
    assert await deliver(server, event("charge.dispute.closed", won)) == 200
    assert await credits(server, user) == FREE + 200_000
    assert (await payment(server, user, pid)).status == payments_pb2.PAYMENT_STATUS_PAID
    state = await server.app.reader.wallet(user)
    assert state is not None and not state.flagged_reason
    hist = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=auth(user))
    kinds = [t.type for t in hist.transactions]
    assert kinds.count(common_pb2.TRANSACTION_TYPE_DISPUTE_CLAWBACK) == 1
    assert kinds.count(common_pb2.TRANSACTION_TYPE_DISPUTE_RESTORE) == 1


async def test_lost_dispute_keeps_clawback_even_out_of_order(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "ola"
    pid, _, pi = await buy(server, stripe_fake, user, 1_000)
    charge = await stripe_fake.charge_of(pi)
    dispute = {"id": "dp_2", "object": "dispute", "charge": charge["id"], "payment_intent": pi["id"],
               "amount": 1_000, "currency": "usd", "status": "lost"}
    assert await deliver(server, event("charge.dispute.closed", dispute)) == 200  # closed before created
    assert await deliver(server, event("charge.dispute.created", {**dispute, "status": "needs_response"})) == 200
    assert await credits(server, user) == FREE
    assert (await payment(server, user, pid)).status == payments_pb2.PAYMENT_STATUS_DISPUTED


# ---- validation, visibility, configuration --------------------------------------------------


@pytest.mark.parametrize("cents", [999, 1_000_001, 0, -1_000])
async def test_amounts_outside_limits_are_refused(sqlite_stripe_server: Running, cents: int) -> None:
    info = await expect_error(
        create_link(sqlite_stripe_server, "pat", cents), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT"
    )
    assert (info.metadata["min_cents"], info.metadata["max_cents"]) == ("1000", "1000000")
    r = await sqlite_stripe_server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth("pat"))
    assert len(r.payments) == 0


async def test_limits_are_inclusive(stripe_server: Running, stripe_fake: StripeFake) -> None:
    assert (await create_link(stripe_server, "quinn", 1_000)).credits_amount_millicredits == 100_000
    assert (await create_link(stripe_server, "quinn", 1_000_000)).credits_amount_millicredits == 100_000_000


async def test_users_see_only_their_own_payments(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    mine = await create_link(server, "rae", 1_000)
    await expect_error(
        server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=mine.payment_id), metadata=auth("sam")),
        grpc.StatusCode.NOT_FOUND,
        "PAYMENT_NOT_FOUND",
    )
    await expect_error(
        server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(user_id="rae"), metadata=auth("sam")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    theirs = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth("sam"))
    assert len(theirs.payments) == 0
    admin = await server.s.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=mine.payment_id), metadata=auth("ops", "admin")
    )
    assert admin.payment.user_id == "rae"
    svc = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(user_id="rae"), metadata=auth("svc", "service"))
    assert [p.id for p in svc.payments] == [mine.payment_id]


async def test_list_payments_pages_newest_first(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "tia"
    ids = []
    for i in range(5):
        ids.append((await create_link(server, user, 1_000 + i)).payment_id)
        server.clock.advance(1)
    seen: list[str] = []
    token = ""
    while True:
        r = await server.s.payments.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=2, page_token=token), metadata=auth(user)
        )
        seen += [p.id for p in r.payments]
        token = r.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    await expect_error(
        server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=-1), metadata=auth(user)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )
    # AIP-158: above the maximum is the maximum, not a refusal.
    r = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=101), metadata=auth(user))
    assert [p.id for p in r.payments] == list(reversed(ids))
    await expect_error(
        server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_token="xyz"), metadata=auth(user)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_stripe_outage_is_unavailable_and_retry_with_same_request_id_works(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    stripe_fake.fail_next = 10  # more than the SDK's retries
    await expect_error(create_link(stripe_server, "uma", 1_000, "r1"), grpc.StatusCode.UNAVAILABLE, "STRIPE_UNAVAILABLE")
    stripe_fake.fail_next = 0
    link = await create_link(stripe_server, "uma", 1_000, "r1")
    assert link.payment_url
    assert len(stripe_fake.sessions) == 1


async def test_not_configured_is_failed_precondition(server: Running) -> None:
    for call in (
        server.s.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(amount_cents=1_000, request_id="x"), metadata=auth("vic")),
        server.s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id="pay_x"), metadata=auth("vic")),
        server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=auth("vic")),
    ):
        info = await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, "STRIPE_NOT_CONFIGURED")
        assert info.metadata["setting"] == "BILLING_STRIPE_API_KEY"
    # Everything else keeps working; the webhook says it is not set up.
    assert await credits(server, "vic") == FREE
    assert await deliver(server, event("customer.updated", {"id": "cus_x"})) == 503
