"""Stripe events -> payment state and ledger transfers.

Every function here runs inside ONE exclusive ledger operation (`ops.Call`):
the stored event row, the payment update and the transfers commit together or
not at all. Exactly-once crediting rests on the transfer key `grant:{payment_id}`
(unique in the ledger) and on re-reading the payment under its lock, so the
order and number of deliveries do not matter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from server.events.models import EventType
from server.events.service import already_emitted, emit
from server.ledger import keys
from server.ledger.model import (
    CLAWBACK_ORDER,
    SYSTEM_REFUNDS,
    SYSTEM_STRIPE,
    BalanceEvent,
    Kind,
    LotKind,
    wallet_id,
)
from server.ledger.tx import LedgerTx
from server.payments import repository as repo
from server.payments.events import EventRouter, Handled, Handler
from server.payments.models import (
    CREDITED,
    PaymentKind,
    PaymentRow,
    PaymentStatus,
    StripeObject,
    stripe_id,
)
from server.platform import errors
from server.platform.units import credits_text

log = logging.getLogger(__name__)

# The statuses under their former names (and CREDITED, above), for other domains (server/refill).
PENDING, PAID, FAILED, EXPIRED = PaymentStatus.PENDING, PaymentStatus.PAID, PaymentStatus.FAILED, PaymentStatus.EXPIRED
REFUNDED, PARTIALLY_REFUNDED = PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED
DISPUTED = PaymentStatus.DISPUTED

# ---- the shape of an authentic event ----------------------------------------------
# A signed body is Stripe's, but its shape is still checked before anything is
# stored: a body that cannot be a Stripe event gets 400 (Stripe stops
# retrying), not 500 (retried for days), and is not stored.

_MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_I64_MAX = 2**63 - 1
# Fields of `data.object` the handlers read, by the JSON type they must have when present.
_OBJ_STRINGS = (
    "id", "object", "mode", "payment_status", "status", "currency", "receipt_url", "client_reference_id",
    "hosted_invoice_url", "url",
)
_OBJ_INTS = ("amount", "amount_total", "amount_refunded", "amount_paid", "created", "expires_at")
_OBJ_REFS = ("payment_intent", "latest_charge", "charge", "customer", "subscription", "setup_intent", "payment_method")
_OBJ_OBJECTS = ("metadata", "last_payment_error")


class MalformedEvent(ValueError):
    """An authentic body that is not a well-formed Stripe event."""


def _int_ok(value: Any, maximum: int = _I64_MAX) -> bool:
    return type(value) is int and 0 <= value <= maximum


def check_event(event: Any) -> StripeObject:
    """The event when its envelope and the fields the handlers read have
    Stripe's types; else MalformedEvent naming the first bad field."""
    if not isinstance(event, dict):
        raise MalformedEvent("the event is not a JSON object")
    for name, limit in (("id", 255), ("type", 100)):
        value = event.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise MalformedEvent(f"event.{name} must be a string of 1 to {limit} characters")
    if not _int_ok(event.get("created"), _MAX_EPOCH_SECONDS):
        raise MalformedEvent("event.created must be an integer Unix time")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("event.data.object must be a JSON object")
    obj = data["object"]
    for name in _OBJ_STRINGS:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise MalformedEvent(f"data.object.{name} must be a string")
    for name in _OBJ_INTS:
        if obj.get(name) is not None and not _int_ok(obj[name]):
            raise MalformedEvent(f"data.object.{name} must be a non-negative integer")
    for name in _OBJ_REFS:
        if obj.get(name) is not None and not isinstance(obj[name], str | dict):
            raise MalformedEvent(f"data.object.{name} must be an id or an object")
    for name in _OBJ_OBJECTS:
        if obj.get(name) is not None and not isinstance(obj[name], dict):
            raise MalformedEvent(f"data.object.{name} must be an object")
    for name in ("id", *_OBJ_REFS):
        ref = obj.get(name)
        if isinstance(ref, dict):
            ref = ref.get("id")
        # The object's own id and its references become parts of ledger keys.
        if ref is not None and not (keys.is_server_id(ref) and len(ref) <= 255):
            raise MalformedEvent(f"data.object.{name} must be a Stripe id")
    return event


def amount_mismatch(p: PaymentRow, obj: StripeObject, field: str) -> str:
    """How Stripe's amount or currency differs from the recorded payment
    ("" when they agree, or when the event does not say)."""
    amount, currency = obj.get(field), obj.get("currency")
    wrong = []
    if amount is not None and amount != p["amount_cents"]:
        wrong.append(f"amount {amount} (recorded {p['amount_cents']})")
    if currency is not None and str(currency).lower() != str(p["currency"]).lower():
        wrong.append(f"currency {currency} (recorded {p['currency']})")
    return ", ".join(wrong)


async def hold_for_review(tx: LedgerTx, p: PaymentRow, mismatch: str, event_type: str, **refs: str) -> str:
    """A checkout Stripe reports with another amount or currency than we
    recorded: no credits; the payment shows AMOUNT_MISMATCH to its user and
    to operators, and the event is stored with that outcome."""
    _set(tx, p, **_refs(p, **refs))
    log.error(
        "stripe amount mismatch: payment not credited",
        extra={"payment_id": p["id"], "user_id": p["user_id"], "event_type": event_type, "mismatch": mismatch},
    )
    if p["status"] in CREDITED:
        return "amount_mismatch"  # credited before (another event agreed): logged for operators
    _set(tx, p, status=PaymentStatus.AMOUNT_MISMATCH, failure_reason=f"amount_mismatch: Stripe reported {mismatch}"[:200])
    return "amount_mismatch"


# Hooks see the payment as a plain row: other domains read it, and change it
# only through this module's transitions.
def grant_key(payment_id: str) -> str:
    return keys.purchase_grant(payment_id)


def _meta(obj: StripeObject) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _set(tx: LedgerTx, p: PaymentRow, **values: Any) -> None:
    """Change the batch's payment row in place (staged with the batch)."""
    values = {k: v for k, v in values.items() if p.get(k) != v}
    if not values:
        return
    repo.update_payment(tx, p, **values, updated_at_us=tx.now_us)


def _refs(p: PaymentRow, *, payment_intent_id: str = "", charge_id: str = "", receipt_url: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if payment_intent_id and not p.get("payment_intent_id"):
        out["payment_intent_id"] = payment_intent_id
    if charge_id and not p.get("charge_id"):
        out["charge_id"] = charge_id
    if receipt_url:
        out["receipt_url"] = receipt_url
    return out


# ---- transitions (also used by reconciliation and, later, auto-refill) -----------


async def mark_paid(tx: LedgerTx, p: PaymentRow, **refs: str) -> bool:
    """Grant the payment's credits once. True when this call granted them."""
    user = p["user_id"]
    await tx.wallet(user)  # loads (and locks) the wallet and user row for what follows
    _set(tx, p, **_refs(p, **refs))
    if not p["receipt_url"] and p["payment_intent_id"]:
        # Stripe often sends charge.succeeded first, before anything links the payment to its PaymentIntent.
        early = await repo.early_receipt(tx, p["payment_intent_id"])
        if early is not None:
            _set(tx, p, **_refs(p, charge_id=early[0], receipt_url=early[1]))
    if p["status"] in CREDITED or p["status"] == PaymentStatus.AMOUNT_MISMATCH:
        return False  # credited already, or held for an operator's review
    if p["kind"] == PaymentKind.SUBSCRIPTION:
        # Its credits are the allowance the paid invoice grants (server/tiers/events.py):
        # a charge event arriving before that invoice event waits for it (Stripe retries).
        raise errors.Unavailable("the invoice of this charge is not recorded yet", reason="INVOICE_UNKNOWN")
    key = grant_key(p["id"])
    granted = False
    if await tx.key_unused(key):
        dollars = f"${p['amount_cents'] // 100:,}.{p['amount_cents'] % 100:02d}"
        refill = p["kind"] == PaymentKind.AUTO_REFILL
        what = "Auto-refill" if refill else "Top-up" if p["kind"] == PaymentKind.TOP_UP else "Purchased"
        await tx.transfer(
            SYSTEM_STRIPE,
            wallet_id(user),
            p["credits"],
            kind=Kind.AUTO_REFILL if refill else Kind.PURCHASE,
            key=key,
            description=f"{what} {credits_text(p['credits'])} credits ({dollars})",
            category="purchase",
            ref=p["id"],
            metadata={"payment_id": p["id"]},
            lot_kind=LotKind.PURCHASED,
        )
        granted = True
    _set(tx, p, status=PaymentStatus.PAID, paid_at_us=p.get("paid_at_us") or tx.now_us, failure_reason="")
    return granted


async def mark_failed(tx: LedgerTx, p: PaymentRow, reason: str, **refs: str) -> None:
    _set(tx, p, **_refs(p, **refs))
    if p["status"] not in (PaymentStatus.PENDING, PaymentStatus.FAILED):
        return  # a later success or expiry wins over a stale failure
    first = p["status"] == PaymentStatus.PENDING
    _set(tx, p, status=PaymentStatus.FAILED, failure_reason=(reason or "payment_failed")[:200])
    if first:
        tx.notify(BalanceEvent(user_id=p["user_id"], kind="payment_failed", message=f"Payment {p['id']} failed: {reason}"))


async def mark_expired(tx: LedgerTx, p: PaymentRow) -> None:
    if p["status"] in (PaymentStatus.PENDING, PaymentStatus.FAILED):
        _set(tx, p, status=PaymentStatus.EXPIRED)


# ---- subscription invoices (called by server/tiers/events.py) ---------------------


def _invoice_refs(invoice: StripeObject) -> dict[str, str]:
    """The PaymentIntent and charge of an invoice: top-level before API
    2025-03-31.basil (and in localstripe), under `payments` since."""
    pi, charge = stripe_id(invoice.get("payment_intent")), stripe_id(invoice.get("charge"))
    listed = (invoice.get("payments") or {}).get("data") or [] if isinstance(invoice.get("payments"), dict) else []
    for item in listed:
        pay = item.get("payment") or {} if isinstance(item, dict) else {}
        pi = pi or stripe_id(pay.get("payment_intent"))
        charge = charge or stripe_id(pay.get("charge"))
    url = str(invoice.get("hosted_invoice_url") or invoice.get("invoice_pdf") or "")
    return {"payment_intent_id": pi, "charge_id": charge, "receipt_url": url}


async def record_invoice(
    tx: LedgerTx, user_id: str, invoice: StripeObject, *, paid: bool, credits: int, reason: str = ""
) -> PaymentRow | None:
    """The invoice's payment row (kind SUBSCRIPTION), one per invoice whatever
    the number and order of its events: paid wins over a stale failure, as for
    purchases. Its credits are the allowance the caller grants with a paid invoice."""
    invoice_id = stripe_id(invoice.get("id"))
    if not invoice_id:
        return None
    pid = keys.invoice_payment(invoice_id)
    p = await repo.get(tx, pid, lock=True)
    amount = int((invoice.get("amount_paid") if paid else None) or invoice.get("amount_due") or invoice.get("total") or 0)
    if p is None:
        p = await repo.insert_payment(tx, repo.new_payment(
            pid, user_id, PaymentKind.SUBSCRIPTION, amount, credits, tx.now_us,
            currency=str(invoice.get("currency") or "usd")[:8],
        ))
    refs = _invoice_refs(invoice)
    if paid:
        _set(tx, p, **_refs(p, **refs))
        if p["status"] in (PaymentStatus.PENDING, PaymentStatus.FAILED):
            _set(tx, p, status=PaymentStatus.PAID, paid_at_us=tx.now_us, failure_reason="", amount_cents=amount or p["amount_cents"])
    else:
        await mark_failed(tx, p, reason or "payment_failed", **refs)
    return p


def after_clawback_status(p: PaymentRow) -> PaymentStatus:
    """A credited payment's status once refunds and disputes are counted."""
    if p["dispute_id"] and p["dispute_clawed"] > 0:
        return PaymentStatus.DISPUTED
    if p["refunded_cents"] >= p["amount_cents"]:
        return PaymentStatus.REFUNDED
    if p["refunded_cents"] > 0:
        return PaymentStatus.PARTIALLY_REFUNDED
    return PaymentStatus.PAID


def still_credited(p: PaymentRow) -> int:
    """Credits of the payment not yet clawed back."""
    return max(p["credits"] - p["refund_clawed"] - p["dispute_clawed"], 0)


async def apply_refund(tx: LedgerTx, p: PaymentRow, refunded_cents: int, **refs: str) -> int:
    """Claw back credits in proportion to the cumulative refunded amount."""
    # A refund proves the charge succeeded: credit first if that event is late.
    await mark_paid(tx, p, **refs)
    if p["status"] not in CREDITED or p["amount_cents"] <= 0:
        return 0  # held for review: nothing was granted, nothing to take back
    refunded_cents = min(max(refunded_cents, 0), p["amount_cents"])
    if refunded_cents <= p["refunded_cents"]:
        return 0  # an older (smaller) refund event arriving late
    target = p["credits"] * refunded_cents // p["amount_cents"]
    amount = min(target - p["refund_clawed"], still_credited(p))
    _set(tx, p, refunded_cents=refunded_cents)
    if amount > 0:
        await _claw_back(
            tx, p, amount, Kind.REFUND_CLAWBACK, keys.refund_clawback(p["id"], refunded_cents),
            f"Refund of payment {p['id']}", "refund", refunded_cents=str(refunded_cents),
        )
        _set(tx, p, refund_clawed=p["refund_clawed"] + amount)
    _set(tx, p, status=after_clawback_status(p))
    return amount


async def _claw_back(
    tx: LedgerTx, p: PaymentRow, amount: int, kind: Kind, key: str, description: str, category: str, **meta: str
) -> dict[str, Any]:
    """Take a payment's credits back; the balance may go below zero (the
    purchased lot first, then earned, then allowance)."""
    return await tx.transfer(
        wallet_id(p["user_id"]),
        SYSTEM_REFUNDS,
        amount,
        kind=kind,
        key=key,
        description=description,
        category=category,
        ref=p["id"],
        metadata={"payment_id": p["id"], **meta},
        allow_negative=True,
        lot_order=CLAWBACK_ORDER,
    )


def _dispute_event(
    tx: LedgerTx, etype: EventType, p: PaymentRow, dispute_id: str, amount: int, transfer: dict[str, Any] | None,
    description: str, **more: str,
) -> None:
    """dispute.opened / dispute.closed, emitted by the handler itself (not from
    its transfers): a dispute that moves no credits is told too, and a close
    that arrives before its creation still comes after the opening."""
    emit(tx, etype, p["user_id"], {
        "payment_id": p["id"], "dispute_id": dispute_id, "amount_millicredits": amount,
        "transaction_id": str(transfer["id"]) if transfer else "", "description": description, **more,
    }, dedup_key=keys.event_once(str(etype), dispute_id))


async def _dispute_clawback(tx: LedgerTx, p: PaymentRow, dispute: StripeObject) -> None:
    dispute_id = dispute["id"]
    disputed_cents = min(int(dispute.get("amount") or p["amount_cents"]), p["amount_cents"])
    amount = min(p["credits"] * disputed_cents // p["amount_cents"], still_credited(p))
    _set(tx, p, dispute_id=dispute_id)
    description = f"Disputed payment {p['id']}"
    transfer = None
    if amount > 0:
        transfer = await _claw_back(
            tx, p, amount, Kind.DISPUTE_CLAWBACK, keys.dispute_clawback(dispute_id), description, "dispute",
            dispute_id=dispute_id,
        )
        _set(tx, p, dispute_clawed=p["dispute_clawed"] + amount)
    tx.set_user(p["user_id"], flagged_reason=f"dispute {dispute_id} on payment {p['id']}"[:200])
    _set(tx, p, status=PaymentStatus.DISPUTED)
    if not await already_emitted(tx, keys.event_once(str(EventType.DISPUTE_OPENED), dispute_id)):
        _dispute_event(tx, EventType.DISPUTE_OPENED, p, dispute_id, amount, transfer, description)


async def dispute_created(tx: LedgerTx, p: PaymentRow, dispute: StripeObject, **refs: str) -> None:
    await mark_paid(tx, p, **refs)
    if p["status"] not in CREDITED:
        return
    if p["dispute_id"] == dispute["id"]:
        return  # already handled (or closed as won before this event arrived)
    await _dispute_clawback(tx, p, dispute)


async def dispute_closed(tx: LedgerTx, p: PaymentRow, dispute: StripeObject, **refs: str) -> None:
    """Settle a closed dispute, and tell it once (dispute.closed, whatever its
    outcome: won and warning_closed give the credits back, lost keeps them)."""
    await mark_paid(tx, p, **refs)
    if p["status"] not in CREDITED:
        return
    dispute_id = dispute["id"]
    status = str(dispute.get("status") or "closed")
    won = status in ("won", "warning_closed")
    closed_key = keys.event_once(str(EventType.DISPUTE_CLOSED), dispute_id)
    untold = not await already_emitted(tx, closed_key)
    outcome = {"status": status, "outcome": "won" if won else "lost"}
    if p["dispute_id"] != dispute_id:
        # The close arrived before the creation: settle as if both came in order.
        if not won:
            await _dispute_clawback(tx, p, dispute)
        else:
            _set(tx, p, dispute_id=dispute_id)
        if untold:
            _dispute_event(tx, EventType.DISPUTE_CLOSED, p, dispute_id, 0, None,
                           f"Dispute {outcome['outcome']} on payment {p['id']}", **outcome)
        return
    restored, transfer = 0, None
    key = keys.dispute_restore(dispute_id)
    if won and p["dispute_clawed"] > 0 and await tx.key_unused(key):
        restored = p["dispute_clawed"]
        await tx.wallet(p["user_id"])
        transfer = await tx.transfer(
            SYSTEM_REFUNDS,
            wallet_id(p["user_id"]),
            p["dispute_clawed"],
            kind=Kind.DISPUTE_RESTORE,
            key=key,
            description=f"Dispute won on payment {p['id']}",
            category="dispute",
            ref=p["id"],
            metadata={"payment_id": p["id"], "dispute_id": dispute_id},
            lot_kind=LotKind.PURCHASED,
        )
    if untold:
        _dispute_event(tx, EventType.DISPUTE_CLOSED, p, dispute_id, restored, transfer,
                       f"Dispute {outcome['outcome']} on payment {p['id']}", **outcome)
    if not won or p["dispute_clawed"] <= 0:
        return
    _set(tx, p, dispute_clawed=0)
    user = tx.user(p["user_id"])
    if user["flagged_reason"] and dispute_id in user["flagged_reason"]:
        tx.set_user(p["user_id"], flagged_reason=None)
    _set(tx, p, status=after_clawback_status(p))


# ---- the handlers of payments' own events, one per type ----------------------------


# Each finds the event's payment, locked (on PostgreSQL) for the rest of the batch.


def _payment_id_of(obj: StripeObject) -> str:
    return str(_meta(obj).get("payment_id") or "")


async def _by_metadata(tx: LedgerTx, obj: StripeObject) -> PaymentRow | None:
    meta_pid = _payment_id_of(obj)
    return await repo.get(tx, meta_pid, lock=True) if meta_pid else None


async def _session_payment(tx: LedgerTx, session: StripeObject) -> PaymentRow | None:
    if _payment_id_of(session):
        return await _by_metadata(tx, session)
    return await repo.find(tx, session_id=stripe_id(session.get("id")))


async def _intent_payment(tx: LedgerTx, intent: StripeObject) -> PaymentRow | None:
    if _payment_id_of(intent):
        return await _by_metadata(tx, intent)
    return await repo.find(tx, payment_intent_id=stripe_id(intent.get("id")))


async def _charge_payment(tx: LedgerTx, charge: StripeObject) -> PaymentRow | None:
    found = await repo.find(
        tx, payment_intent_id=stripe_id(charge.get("payment_intent")), charge_id=stripe_id(charge.get("id"))
    )
    return found or await _by_metadata(tx, charge)


async def _dispute_payment(tx: LedgerTx, dispute: StripeObject) -> PaymentRow | None:
    return await repo.find(
        tx, payment_intent_id=stripe_id(dispute.get("payment_intent")), charge_id=stripe_id(dispute.get("charge"))
    )


PaymentHandler = Callable[[LedgerTx, PaymentRow, StripeObject], Awaitable[Handled]]
Finder = Callable[[LedgerTx, StripeObject], Awaitable["PaymentRow | None"]]


def _of_payment(find: Finder, fn: PaymentHandler) -> Handler:
    """The handler of an event about one of our payments: found by `find`, else unmatched."""

    async def handler(tx: LedgerTx, obj: StripeObject) -> Handled:
        p = await find(tx, obj)
        return Handled("unmatched") if p is None else await fn(tx, p, obj)

    return handler


async def _session_paid(tx: LedgerTx, p: PaymentRow, obj: StripeObject, etype: str) -> Handled | None:
    """A paid Checkout Session credits its payment, unless Stripe reports another amount."""
    pi = stripe_id(obj.get("payment_intent"))
    if mismatch := amount_mismatch(p, obj, "amount_total"):
        return Handled(await hold_for_review(tx, p, mismatch, etype, payment_intent_id=pi), p)
    if etype == "checkout.session.completed" and obj.get("payment_status") not in ("paid", "no_payment_required"):
        return None
    await mark_paid(tx, p, payment_intent_id=pi)
    return Handled("paid", p)


async def session_completed(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    if (paid := await _session_paid(tx, p, obj, "checkout.session.completed")) is not None:
        return paid
    _set(tx, p, **_refs(p, payment_intent_id=stripe_id(obj.get("payment_intent"))))
    return Handled("awaiting_payment", p)


async def session_async_payment_succeeded(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    paid = await _session_paid(tx, p, obj, "checkout.session.async_payment_succeeded")
    assert paid is not None
    return paid


async def session_async_payment_failed(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    await mark_failed(tx, p, "async_payment_failed", payment_intent_id=stripe_id(obj.get("payment_intent")))
    return Handled("failed", p)


async def session_expired(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    await mark_expired(tx, p)
    return Handled("expired", p)


async def remember_card(tx: LedgerTx, user_id: str, *, payment_method_id: str = "", setup_intent_id: str = "") -> None:
    """A card the user just saved or paid with: the one off-session charges use from now on."""
    current = await repo.card(tx, user_id)
    values: dict[str, Any] = {}
    if payment_method_id:
        if current is None or current["payment_method_id"] != payment_method_id:
            values.update(brand="", last4="", exp_month=0, exp_year=0)  # told again when next charged
        values.update(payment_method_id=payment_method_id, setup_intent_id=None)
    if setup_intent_id:
        values.update(setup_intent_id=setup_intent_id)
    await repo.save_card(tx, user_id, **values)


async def intent_succeeded(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    pi = stripe_id(obj.get("id"))
    if mismatch := amount_mismatch(p, obj, "amount"):
        handled = Handled(await hold_for_review(tx, p, mismatch, "payment_intent.succeeded", payment_intent_id=pi), p)
    else:
        await mark_paid(tx, p, payment_intent_id=pi, charge_id=stripe_id(obj.get("latest_charge")))
        handled = Handled("paid", p)
    if p["kind"] != PaymentKind.AUTO_REFILL and obj.get("payment_method"):
        # A card the user paid with is the card of later off-session charges.
        await remember_card(tx, p["user_id"], payment_method_id=stripe_id(obj["payment_method"]))
        handled.card_saved_for = p["user_id"]
    return handled


async def setup_completed(tx: LedgerTx, obj: StripeObject) -> Handled:
    """A setup-mode Checkout (the setup link) saved a card."""
    meta = _meta(obj)
    user = str(meta.get("user_id") or obj.get("client_reference_id") or "")
    si_id = stripe_id(obj.get("setup_intent"))
    if meta.get("purpose") != "auto_refill_setup" or not user or not si_id:
        return Handled("unmatched")
    await remember_card(tx, user, setup_intent_id=si_id)
    return Handled("unmatched", card_saved_for=user)  # no payment of ours


async def intent_failed(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    err = obj.get("last_payment_error") or {}
    reason = str(err.get("decline_code") or err.get("code") or "payment_failed")
    await mark_failed(tx, p, reason, payment_intent_id=stripe_id(obj.get("id")))
    return Handled("failed", p)


def _charge_refs(charge: StripeObject) -> dict[str, str]:
    return {"payment_intent_id": stripe_id(charge.get("payment_intent")), "charge_id": stripe_id(charge.get("id"))}


async def charge_succeeded(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    _set(tx, p, **_refs(p, receipt_url=str(obj.get("receipt_url") or ""), **_charge_refs(obj)))
    return Handled("recorded", p)


async def charge_refunded(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    receipt = str(obj.get("receipt_url") or "")
    await apply_refund(tx, p, int(obj.get("amount_refunded") or 0), receipt_url=receipt, **_charge_refs(obj))
    return Handled(str(p["status"]), p)


def _dispute_refs(dispute: StripeObject) -> dict[str, str]:
    return {"payment_intent_id": stripe_id(dispute.get("payment_intent")), "charge_id": stripe_id(dispute.get("charge"))}


async def on_dispute_created(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    await dispute_created(tx, p, obj, **_dispute_refs(obj))
    return Handled("disputed", p)


async def on_dispute_closed(tx: LedgerTx, p: PaymentRow, obj: StripeObject) -> Handled:
    await dispute_closed(tx, p, obj, **_dispute_refs(obj))
    return Handled(f"dispute_{obj.get('status') or 'closed'}", p)


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _of_payment(_session_payment, session_completed),
    "checkout.session.async_payment_succeeded": _of_payment(_session_payment, session_async_payment_succeeded),
    "checkout.session.async_payment_failed": _of_payment(_session_payment, session_async_payment_failed),
    "checkout.session.expired": _of_payment(_session_payment, session_expired),
    "payment_intent.succeeded": _of_payment(_intent_payment, intent_succeeded),
    "payment_intent.payment_failed": _of_payment(_intent_payment, intent_failed),
    "charge.succeeded": _of_payment(_charge_payment, charge_succeeded),
    "charge.refunded": _of_payment(_charge_payment, charge_refunded),
    "charge.dispute.created": _of_payment(_dispute_payment, on_dispute_created),
    "charge.dispute.closed": _of_payment(_dispute_payment, on_dispute_closed),
}
HANDLED_EVENTS = tuple(HANDLERS)


def register(router: EventRouter) -> None:
    for event_type, handler in HANDLERS.items():
        router.on(event_type, handler)
    router.on("checkout.session.completed", setup_completed, mode="setup")


async def handle_event(router: EventRouter, tx: LedgerTx, event: StripeObject, raw: bytes) -> str:
    """Store the event once and apply it; a duplicate has no effect."""
    event_id = str(event.get("id") or "")
    if await repo.event_seen(tx, event_id):
        return "duplicate"
    etype = str(event.get("type") or "")
    raw_obj = (event.get("data") or {}).get("object") or {}
    obj: StripeObject = raw_obj if isinstance(raw_obj, dict) else {}
    handled = await router.dispatch(tx, etype, obj)
    payment, outcome = handled.payment, handled.outcome
    charge_pi = stripe_id(obj.get("payment_intent"))[:255] if etype.startswith("charge.") else ""
    await repo.store_event(
        tx,
        {
            "id": event_id,
            "type": etype[:100],
            "created": int(event.get("created") or 0),
            "payment_id": payment["id"] if payment else None,
            "outcome": outcome[:64],
            "payload": raw.decode("utf-8", "replace") if raw else json.dumps(event),
            "received_at_us": tx.now_us,
            "stripe_ref": charge_pi or None,
        },
    )
    return outcome
