"""Events of the other domains, committed with their change: a purchase
(payment.succeeded), its refund (payment.refunded), an admin's account flag
(account.flagged), a hold that expired (hold.expired), disputes and their
outcomes (dispute.opened, dispute.closed), keys (key.created, key.revoked)
and their budget windows' resets (budget.reset)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flownexus.billing.v1 import admin_pb2, keys_pb2, keys_pb2_grpc, payments_pb2

from server.platform.clock import ManualClock
from tests.calls import deliver, reserve
from tests.events.receiver import list_events, payload
from tests.harness import Running, auth
from tests.keys.helpers import CREDIT, HOUR, bearer, create_key, keys_stub, spend_req
from tests.stripe_fake import StripeFake, event

pytestmark = pytest.mark.asyncio


async def test_payment_refund_flag_and_hold_events(
    stripe_server: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    server = stripe_server
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=3_000, request_id="buy"), metadata=auth("pam")
    )
    session = stripe_fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    pi = await stripe_fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200  # again
    charge = await stripe_fake.refund(pi, 1_000)
    assert await deliver(server, event("charge.refunded", charge)) == 200

    paid, refunded = (await list_events(server, "pam", ["payment.succeeded", "payment.refunded"]))
    assert (paid.type, payload(paid)["payment_id"], payload(paid)["amount_millicredits"]) == (
        "payment.succeeded", link.payment_id, 300_000)
    assert refunded.type == "payment.refunded" and payload(refunded)["amount_millicredits"] == 100_000

    await server.s.admin.SetAccountFlag(
        admin_pb2.SetAccountFlagRequest(user_id="pam", flag=admin_pb2.ACCOUNT_FLAG_DISPUTED, reason="fraud check",
                                        request_id="f1"),
        metadata=auth("ops", "admin"),
    )
    (flagged,) = await list_events(server, "pam", ["account.flagged"])
    assert payload(flagged)["flagged"] is True

    hold = await reserve(server, "pam", 5_000, "h1", ttl_s=60)
    clock.advance(120)
    await server.run_jobs()
    (expired,) = await list_events(server, "pam", ["hold.expired"])
    assert payload(expired) == {"hold_id": hold.id, "amount_millicredits": 5_000,
                                "transaction_id": payload(expired)["transaction_id"]}


async def test_key_events(server: Running) -> None:
    """key.created and key.revoked, committed by the keys domain's own operations."""
    stub = keys_pb2_grpc.KeysServiceStub(server.s.channel)
    budget = keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_DAY, limit_millicredits=50_000)
    made = await stub.CreateKey(keys_pb2.CreateKeyRequest(label="agent", budgets=[budget], request_id="k"),
                                metadata=auth("kim"))
    await stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=made.key.id, request_id="rv"), metadata=auth("kim"))
    await stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=made.key.id, request_id="rv2"), metadata=auth("kim"))
    found = await list_events(server, "kim", ["key.created", "key.revoked"])
    assert [(e.type, payload(e)["key_id"]) for e in found] == [
        ("key.created", made.key.id), ("key.revoked", made.key.id)]


async def _bought(server: Running, fake: StripeFake, user: str, cents: int) -> tuple[str, dict[str, Any]]:
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=f"buy-{user}"), metadata=auth(user)
    )
    session = fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    pi = await fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    charge = await fake.charge_of(pi)
    return link.payment_id, {"object": "dispute", "charge": charge["id"], "payment_intent": pi["id"],
                             "amount": cents, "currency": "usd"}


async def _dispute_events(server: Running, user: str) -> list[tuple[str, dict[str, Any]]]:
    found = await list_events(server, user, ["dispute.opened", "dispute.closed"])
    return [(e.type, payload(e)) for e in found]


async def test_dispute_closed_for_every_outcome(stripe_server: Running, stripe_fake: StripeFake) -> None:
    """dispute.closed once per dispute, whatever its outcome (won and
    warning_closed restore the credits, lost keeps them), with the outcome in
    its payload; a close that arrives before the creation still comes after
    the opening."""
    server = stripe_server
    for user, status, restored in (("dw", "won", 200_000), ("dl", "lost", 0), ("dc", "warning_closed", 200_000)):
        pid, base = await _bought(server, stripe_fake, user, 2_000)
        dispute = {**base, "id": f"dp_{user}"}
        assert await deliver(server, event("charge.dispute.created", {**dispute, "status": "needs_response"})) == 200
        for _ in range(2):  # Stripe may send the close twice (two event ids)
            assert await deliver(server, event("charge.dispute.closed", {**dispute, "status": status})) == 200
        (opened_type, opened), (closed_type, closed) = await _dispute_events(server, user)
        assert (opened_type, opened["payment_id"], opened["dispute_id"], opened["amount_millicredits"]) == (
            "dispute.opened", pid, dispute["id"], 200_000)
        assert closed_type == "dispute.closed"
        assert {k: closed[k] for k in ("payment_id", "dispute_id", "status", "outcome", "amount_millicredits")} == {
            "payment_id": pid, "dispute_id": dispute["id"], "status": status,
            "outcome": "lost" if status == "lost" else "won", "amount_millicredits": restored}
        assert bool(closed["transaction_id"]) == (restored > 0)

    # Lost, the close delivered before the creation: opened, then closed, once each.
    pid, base = await _bought(server, stripe_fake, "dx", 1_000)
    dispute = {**base, "id": "dp_dx", "status": "lost"}
    assert await deliver(server, event("charge.dispute.closed", dispute)) == 200
    assert await deliver(server, event("charge.dispute.created", {**dispute, "status": "needs_response"})) == 200
    assert await deliver(server, event("charge.dispute.closed", dispute)) == 200
    found = await _dispute_events(server, "dx")
    assert [(t, p["outcome"] if t == "dispute.closed" else p["amount_millicredits"]) for t, p in found] == [
        ("dispute.opened", 100_000), ("dispute.closed", "lost")]


async def test_budget_reset_event_at_the_window_boundary(server: Running) -> None:
    """budget.reset, committed by the keys domain's boundary job with the
    counter it moves: once per key and window that had use, none for an idle key."""
    made = await create_key(server, "rae", [(HOUR, 50 * CREDIT)])
    idle = await create_key(server, "rae", [(HOUR, 50 * CREDIT)], label="idle")
    await server.s.usage.Spend(spend_req(5 * CREDIT, "s1"), metadata=bearer(made.secret))
    assert await list_events(server, "rae", ["budget.reset"]) == []
    boundary_us = made.key.budgets[0].resets_at.ToMicroseconds()
    server.clock.advance((boundary_us - server.clock.now_us()) / 1e6 + 1)
    assert await server.run_job("reset_key_budgets") == 1
    assert await server.run_job("reset_key_budgets") == 0
    await server.s.usage.Spend(spend_req(5 * CREDIT, "s2"), metadata=bearer(made.secret))  # the new window: no second
    (reset,) = await list_events(server, "rae", ["budget.reset"])
    body = payload(reset)
    assert (body["key_id"], body["window"]) == (made.key.id, "hour") and idle.key.id != body["key_id"]
    assert "a new hour budget window began" in body["message"]
    got = await keys_stub(server).GetKey(keys_pb2.GetKeyRequest(key_id=made.key.id), metadata=auth("rae"))
    assert got.key.budgets[0].used_millicredits == 5 * CREDIT
