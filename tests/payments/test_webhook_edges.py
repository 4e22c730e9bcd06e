"""Webhook edge cases, with correctly signed bodies, on SQLite and PostgreSQL.

- An authentic body that cannot be a Stripe event (a top-level array, `data`
  a string, `created` of 1e30, missing fields, wrong types) answers 400, which
  Stripe does not retry, and stores nothing.
- A checkout whose `amount_total` or currency differs from the recorded
  payment is not credited: the event is stored, an error is logged, and the
  payment shows PAYMENT_STATUS_AMOUNT_MISMATCH to its user and to operators
  (AdminService/GetAccount). A later refund or dispute of it claws nothing
  back; reconciliation does not credit it either.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

import pytest
from flownexus.billing.v1 import admin_pb2, payments_pb2
from sqlalchemy import func, select, text

from server.db.schema import transfers
from tests.calls import FREE, credits, deliver, post_webhook
from tests.harness import Running, auth
from tests.payments.test_payments import buy, create_link, payment, session_of
from tests.stripe_fake import WEBHOOK_SECRET, StripeFake, event, sign

CREDITS_10 = 100_000


async def _counts(server: Running) -> tuple[int, int, int]:
    assert server.app is not None
    async with server.read() as conn:
        n_events = (await conn.execute(text("SELECT count(*) FROM webhook_events"))).scalar_one()
        n_transfers = (await conn.execute(select(func.count()).select_from(transfers))).scalar_one()
        changed = (await conn.execute(text("SELECT count(*) FROM payments WHERE status <> 'pending'"))).scalar_one()
    return int(n_events), int(n_transfers), int(changed)


def _malformed(session: dict[str, Any]) -> list[tuple[str, Any]]:
    good = event("checkout.session.completed", copy.deepcopy(session))
    now = int(time.time())

    def with_(**changes: Any) -> dict[str, Any]:
        ev = copy.deepcopy(good)
        ev.update(changes)
        return ev

    def obj_with(**changes: Any) -> dict[str, Any]:
        ev = copy.deepcopy(good)
        ev["data"]["object"].update(changes)
        return ev

    without = {k: {kk: vv for kk, vv in good.items() if kk != k} for k in ("id", "type", "created", "data")}
    return [
        ("top-level array", [good]),
        ("top-level string", "checkout.session.completed"),
        ("top-level number", 42),
        ("top-level null", None),
        ("data a string", with_(data="paid")),
        ("data null", with_(data=None)),
        ("data.object a list", with_(data={"object": [session]})),
        ("data.object missing", with_(data={})),
        ("created 1e30", with_(created=1e30)),
        ("created 10**30", with_(created=10**30)),
        ("created negative", with_(created=-1)),
        ("created a string", with_(created=str(now))),
        ("created a float", with_(created=now + 0.5)),
        ("created a bool", with_(created=True)),
        ("missing id", without["id"]),
        ("missing type", without["type"]),
        ("missing created", without["created"]),
        ("missing data", without["data"]),
        ("id a number", with_(id=12345)),
        ("id empty", with_(id="")),
        ("id huge", with_(id="evt_" + "x" * 300)),
        ("type a list", with_(type=["checkout.session.completed"])),
        ("amount_total a string", obj_with(amount_total="1000")),
        ("amount_total 1e30", obj_with(amount_total=1e30)),
        ("amount_total above int64", obj_with(amount_total=2**63)),
        ("amount_total negative", obj_with(amount_total=-1000)),
        ("currency a number", obj_with(currency=840)),
        ("metadata a string", obj_with(metadata="payment_id=x")),
        ("payment_status an object", obj_with(payment_status={"paid": True})),
        ("payment_intent a number", obj_with(payment_intent=7)),
        ("id of the object a list", obj_with(id=["cs_x"])),
        ("id of the object not a Stripe id", obj_with(id="cs x:1")),
        ("payment_intent not a Stripe id", obj_with(payment_intent="pi-1")),
        ("expanded payment_intent without a Stripe id", obj_with(payment_intent={"id": "pi\u00001"})),
    ]


async def test_signed_but_malformed_bodies_are_400_and_store_nothing(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "mal"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    before = await _counts(server)
    cases = _malformed(session)
    for name, body_obj in cases:
        body = json.dumps(body_obj).encode()
        status = await post_webhook(server, body, {"Stripe-Signature": sign(body, WEBHOOK_SECRET)})
        assert status == 400, f"{name}: {status}"
    # Signed but not JSON at all, or too deeply nested to parse.
    for body in (b"\xff\xfe not json", b"[" * 100_000 + b"]" * 100_000, b"{\"id\": 1e999}"):
        assert await post_webhook(server, body, {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}) == 400
    assert await _counts(server) == before
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_PENDING
    # The well-formed event still credits once.
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await credits(server, user) == FREE + CREDITS_10


async def test_a_dispute_whose_id_is_not_a_stripe_id_is_400_and_changes_nothing(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    """The dispute's id becomes part of its clawback's ledger key: an id that
    no Stripe object has is refused at the door (it used to fail inside the
    ledger: 500, retried by Stripe for days, with a traceback in the log)."""
    server, user = stripe_server, "odd"
    pid, _, pi = await buy(server, stripe_fake, user, 2_000)
    charge = await stripe_fake.charge_of(pi)
    before = await _counts(server)
    for odd in ("dp-1", "dp 1", "dp_1:2", "dp_\u00e91"):
        dispute = {"id": odd, "object": "dispute", "charge": charge["id"], "payment_intent": pi["id"],
                   "amount": 2_000, "currency": "usd", "status": "needs_response"}
        assert await deliver(server, event("charge.dispute.created", dispute)) == 400, odd
    assert await _counts(server) == before
    assert (await payment(server, user, pid)).status == payments_pb2.PAYMENT_STATUS_PAID


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.getMessage(), dict(record.__dict__)))


@pytest.fixture
def error_log() -> Any:
    handler = Errors()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("change", [{"amount_total": 100}, {"amount_total": 100_000}, {"currency": "eur"}])
async def test_checkout_with_another_amount_is_not_credited(
    stripe_server: Running, stripe_fake: StripeFake, error_log: Errors, change: dict[str, Any]
) -> None:
    server, user = stripe_server, "mismatch"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    reported = {**copy.deepcopy(session), **change}
    before = await _counts(server)
    ev = event("checkout.session.completed", reported)
    assert await deliver(server, ev) == 200  # acknowledged: a retry would not change the answer
    assert await credits(server, user) == FREE
    p = await payment(server, user, link.payment_id)
    assert p.status == payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH
    assert p.failure_reason.startswith("amount_mismatch")
    # Stored: the event with its outcome; no transfer.
    after = await _counts(server)
    assert (after[0], after[1]) == (before[0] + 1, before[1])
    assert server.app is not None
    async with server.read() as conn:
        outcome = (await conn.execute(text("SELECT outcome FROM webhook_events WHERE id = :i"), {"i": ev["id"]})).scalar_one()
    assert outcome == "amount_mismatch"
    # Logged, with what an operator needs.
    logged = [extra for msg, extra in error_log.messages if "amount mismatch" in msg]
    assert logged and logged[0]["payment_id"] == link.payment_id and logged[0]["user_id"] == user
    # Visible to operators.
    account = await server.s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=user), metadata=auth("ops", "admin"))
    [row] = [a for a in account.payments if a.payment.id == link.payment_id]
    assert row.payment.status == payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH
    # Nothing later credits it: the same event again, the genuine amount, async success, reconciliation.
    assert await deliver(server, ev) == 200
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await deliver(server, event("checkout.session.async_payment_succeeded", copy.deepcopy(session))) == 200
    server.clock.advance(3600)
    assert await server.run_job("reconcile_payments") == 0
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH
    # A refund of it takes back nothing (nothing was granted).
    pi = session["payment_intent"]
    refund = {"id": "ch_mm", "object": "charge", "payment_intent": pi, "amount_refunded": 1_000, "metadata": {"payment_id": link.payment_id}}
    assert await deliver(server, event("charge.refunded", refund)) == 200
    assert await credits(server, user) == FREE


async def test_payment_intent_with_another_amount_is_not_credited(stripe_server: Running, stripe_fake: StripeFake) -> None:
    """The PaymentIntent's own success event is checked the same way (it can arrive first)."""
    server, user = stripe_server, "mismatch-pi"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    pi = await stripe_fake.pay(session["id"])
    assert await deliver(server, event("payment_intent.succeeded", {**pi, "amount": 500})) == 200
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await credits(server, user) == FREE


async def test_reconciliation_does_not_credit_another_amount(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "mismatch-rec"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    session["amount_total"] = 1  # what Stripe now says the session charged
    server.clock.advance(3600)
    assert server.app is not None
    assert await server.run_job("reconcile_payments") == 0
    assert await credits(server, user) == FREE
    assert (await payment(server, user, link.payment_id)).status == payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH
