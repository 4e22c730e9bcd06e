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
from dataclasses import dataclass, field
from typing import Any

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

log = logging.getLogger(__name__)

Row = dict[str, Any]

PENDING, PAID, FAILED, EXPIRED = "pending", "paid", "failed", "expired"
REFUNDED, PARTIALLY_REFUNDED, DISPUTED = "refunded", "partially_refunded", "disputed"
# Statuses whose credits were granted (server/ledger/verify.py expects one grant each).
CREDITED = frozenset({PAID, REFUNDED, PARTIALLY_REFUNDED, DISPUTED})

HANDLED_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.succeeded",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
)


PaymentHook = Callable[[LedgerTx, str, "Row | None", Row], Awaitable[None]]
TypeHandler = Callable[[LedgerTx, Row], Awaitable[str]]
CheckoutModeHandler = Callable[[LedgerTx, str, Row], Awaitable[str]]


@dataclass
class EventRouter:
    """Where domains plug into webhook handling, inside the same transaction as
    the stored event (each domain's `register`, through server/registry.py):
    - `by_type`: event types another domain owns (tiers: invoices, subscriptions);
    - `checkout_modes`: Checkout Sessions of another mode (tiers: subscription);
    - `hooks`: fn(tx, event_type, payment or None, object) after every event
      (auto-refill: saved cards, refill outcomes)."""

    by_type: dict[str, TypeHandler] = field(default_factory=dict)
    checkout_modes: dict[str, CheckoutModeHandler] = field(default_factory=dict)
    hooks: list[PaymentHook] = field(default_factory=list)


def grant_key(payment_id: str) -> str:
    return keys.purchase_grant(payment_id)


def _id(value: Any) -> str:
    """A Stripe reference that may be an id or an expanded object."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _meta(obj: Row) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


async def _set(tx: LedgerTx, p: Row, **values: Any) -> None:
    values = {k: v for k, v in values.items() if p.get(k) != v}
    if not values:
        return
    values["updated_at_us"] = tx.now_us
    p.update(values)
    await repo.update_payment(tx.conn, p["id"], **values)


def _refs(p: Row, *, payment_intent_id: str = "", charge_id: str = "", receipt_url: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if payment_intent_id and not p.get("payment_intent_id"):
        out["payment_intent_id"] = payment_intent_id
    if charge_id and not p.get("charge_id"):
        out["charge_id"] = charge_id
    if receipt_url:
        out["receipt_url"] = receipt_url
    return out


# ---- transitions (also used by reconciliation and, later, auto-refill) -----------


async def mark_paid(tx: LedgerTx, p: Row, **refs: str) -> bool:
    """Grant the payment's credits once. True when this call granted them."""
    user = p["user_id"]
    await tx.wallet(user)  # loads (and locks) the wallet and user row for what follows
    await _set(tx, p, **_refs(p, **refs))
    if not p["receipt_url"] and p["payment_intent_id"]:
        # Stripe often sends charge.succeeded first, before anything links the payment to its PaymentIntent.
        early = await repo.early_receipt(tx.conn, p["payment_intent_id"])
        if early is not None:
            await _set(tx, p, **_refs(p, charge_id=early[0], receipt_url=early[1]))
    if p["status"] in CREDITED:
        return False
    key = grant_key(p["id"])
    granted = False
    if await tx.key_unused(key):
        dollars = f"${p['amount_cents'] // 100:,}.{p['amount_cents'] % 100:02d}"
        refill = p["kind"] == "auto_refill"
        await tx.transfer(
            SYSTEM_STRIPE,
            wallet_id(user),
            p["credits"],
            kind=Kind.AUTO_REFILL if refill else Kind.PURCHASE,
            key=key,
            description=f"{'Auto-refill' if refill else 'Purchased'} {p['credits'] // 1000:,} credits ({dollars})",
            category="purchase",
            ref=p["id"],
            metadata={"payment_id": p["id"]},
            lot_kind=LotKind.PURCHASED,
        )
        granted = True
    await _set(tx, p, status=PAID, paid_at_us=p.get("paid_at_us") or tx.now_us, failure_reason="")
    return granted


async def mark_failed(tx: LedgerTx, p: Row, reason: str, **refs: str) -> None:
    await _set(tx, p, **_refs(p, **refs))
    if p["status"] not in (PENDING, FAILED):
        return  # a later success or expiry wins over a stale failure
    first = p["status"] == PENDING
    await _set(tx, p, status=FAILED, failure_reason=(reason or "payment_failed")[:200])
    if first:
        tx.notify(BalanceEvent(user_id=p["user_id"], kind="payment_failed", message=f"Payment {p['id']} failed: {reason}"))


async def mark_expired(tx: LedgerTx, p: Row) -> None:
    if p["status"] in (PENDING, FAILED):
        await _set(tx, p, status=EXPIRED)


def _after_clawback_status(p: Row) -> str:
    if p["dispute_id"] and p["dispute_clawed"] > 0:
        return DISPUTED
    if p["refunded_cents"] >= p["amount_cents"]:
        return REFUNDED
    if p["refunded_cents"] > 0:
        return PARTIALLY_REFUNDED
    return PAID


def _still_credited(p: Row) -> int:
    return max(p["credits"] - p["refund_clawed"] - p["dispute_clawed"], 0)


async def apply_refund(tx: LedgerTx, p: Row, refunded_cents: int, **refs: str) -> int:
    """Claw back credits in proportion to the cumulative refunded amount."""
    # A refund proves the charge succeeded: credit first if that event is late.
    await mark_paid(tx, p, **refs)
    refunded_cents = min(max(refunded_cents, 0), p["amount_cents"])
    if refunded_cents <= p["refunded_cents"]:
        return 0  # an older (smaller) refund event arriving late
    target = p["credits"] * refunded_cents // p["amount_cents"]
    amount = min(target - p["refund_clawed"], _still_credited(p))
    await _set(tx, p, refunded_cents=refunded_cents)
    if amount > 0:
        await _claw_back(
            tx, p, amount, Kind.REFUND_CLAWBACK, keys.refund_clawback(p["id"], refunded_cents),
            f"Refund of payment {p['id']}", "refund", refunded_cents=str(refunded_cents),
        )
        await _set(tx, p, refund_clawed=p["refund_clawed"] + amount)
    await _set(tx, p, status=_after_clawback_status(p))
    return amount


async def _claw_back(
    tx: LedgerTx, p: Row, amount: int, kind: Kind, key: str, description: str, category: str, **meta: str
) -> None:
    """Take a payment's credits back; the balance may go below zero (the
    purchased lot first, then earned, then allowance)."""
    await tx.transfer(
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


async def _dispute_clawback(tx: LedgerTx, p: Row, dispute: Row) -> None:
    dispute_id = dispute["id"]
    disputed_cents = min(int(dispute.get("amount") or p["amount_cents"]), p["amount_cents"])
    amount = min(p["credits"] * disputed_cents // p["amount_cents"], _still_credited(p))
    await _set(tx, p, dispute_id=dispute_id)
    if amount > 0:
        await _claw_back(
            tx, p, amount, Kind.DISPUTE_CLAWBACK, keys.dispute_clawback(dispute_id),
            f"Disputed payment {p['id']}", "dispute", dispute_id=dispute_id,
        )
        await _set(tx, p, dispute_clawed=p["dispute_clawed"] + amount)
    tx.set_user(p["user_id"], flagged_reason=f"dispute {dispute_id} on payment {p['id']}"[:200])
    await _set(tx, p, status=DISPUTED)


async def dispute_created(tx: LedgerTx, p: Row, dispute: Row, **refs: str) -> None:
    await mark_paid(tx, p, **refs)
    if p["dispute_id"] == dispute["id"]:
        return  # already handled (or closed as won before this event arrived)
    await _dispute_clawback(tx, p, dispute)


async def dispute_closed(tx: LedgerTx, p: Row, dispute: Row, **refs: str) -> None:
    await mark_paid(tx, p, **refs)
    dispute_id = dispute["id"]
    won = dispute.get("status") in ("won", "warning_closed")
    if p["dispute_id"] != dispute_id:
        # The close arrived before the creation: settle as if both came in order.
        if not won:
            await _dispute_clawback(tx, p, dispute)
        else:
            await _set(tx, p, dispute_id=dispute_id)
        return
    if not won or p["dispute_clawed"] <= 0:
        return
    key = keys.dispute_restore(dispute_id)
    if await tx.key_unused(key):
        await tx.wallet(p["user_id"])
        await tx.transfer(
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
    await _set(tx, p, dispute_clawed=0)
    user = tx.user(p["user_id"])
    if user["flagged_reason"] and dispute_id in user["flagged_reason"]:
        tx.set_user(p["user_id"], flagged_reason=None)
    await _set(tx, p, status=_after_clawback_status(p))


# ---- event dispatch ------------------------------------------------------------------


async def _payment_for(tx: LedgerTx, etype: str, obj: Row) -> Row | None:
    meta_pid = str(_meta(obj).get("payment_id") or "")
    pid: str | None = None
    if etype.startswith("checkout.session."):
        pid = meta_pid or await repo.find(tx.conn, session_id=_id(obj.get("id")))
    elif etype.startswith("payment_intent."):
        pid = meta_pid or await repo.find(tx.conn, payment_intent_id=_id(obj.get("id")))
    elif etype.startswith("charge.dispute."):
        pid = await repo.find(tx.conn, payment_intent_id=_id(obj.get("payment_intent")), charge_id=_id(obj.get("charge")))
    elif etype.startswith("charge."):
        pid = await repo.find(tx.conn, payment_intent_id=_id(obj.get("payment_intent")), charge_id=_id(obj.get("id")))
        pid = pid or meta_pid
    if not pid:
        return None
    return await repo.get(tx.conn, pid, lock=True)


async def _dispatch(router: EventRouter, tx: LedgerTx, etype: str, obj: Row) -> tuple[Row | None, str]:
    extra = router.by_type.get(etype)
    if extra is not None:
        return None, await extra(tx, obj)
    by_mode = router.checkout_modes.get(str(obj.get("mode") or "")) if etype.startswith("checkout.session.") else None
    if by_mode is not None:
        return None, await by_mode(tx, etype, obj)
    if etype not in HANDLED_EVENTS:
        return None, "ignored"
    p = await _payment_for(tx, etype, obj)
    if p is None:
        return None, "unmatched"
    if etype == "checkout.session.completed":
        pi = _id(obj.get("payment_intent"))
        if obj.get("payment_status") in ("paid", "no_payment_required"):
            await mark_paid(tx, p, payment_intent_id=pi)
            return p, "paid"
        await _set(tx, p, **_refs(p, payment_intent_id=pi))
        return p, "awaiting_payment"
    if etype == "checkout.session.async_payment_succeeded":
        await mark_paid(tx, p, payment_intent_id=_id(obj.get("payment_intent")))
        return p, "paid"
    if etype == "checkout.session.async_payment_failed":
        await mark_failed(tx, p, "async_payment_failed", payment_intent_id=_id(obj.get("payment_intent")))
        return p, "failed"
    if etype == "checkout.session.expired":
        await mark_expired(tx, p)
        return p, "expired"
    if etype == "payment_intent.succeeded":
        await mark_paid(tx, p, payment_intent_id=_id(obj.get("id")), charge_id=_id(obj.get("latest_charge")))
        return p, "paid"
    if etype == "payment_intent.payment_failed":
        err = obj.get("last_payment_error") or {}
        reason = str(err.get("decline_code") or err.get("code") or "payment_failed")
        await mark_failed(tx, p, reason, payment_intent_id=_id(obj.get("id")))
        return p, "failed"
    refs = {
        "payment_intent_id": _id(obj.get("payment_intent")),
        "charge_id": _id(obj.get("id")) if etype.startswith("charge.") and not etype.startswith("charge.dispute.") else _id(obj.get("charge")),
    }
    if etype == "charge.succeeded":
        await _set(tx, p, **_refs(p, receipt_url=str(obj.get("receipt_url") or ""), **refs))
        return p, "recorded"
    if etype == "charge.refunded":
        receipt = str(obj.get("receipt_url") or "")
        await apply_refund(tx, p, int(obj.get("amount_refunded") or 0), receipt_url=receipt, **refs)
        return p, p["status"]
    if etype == "charge.dispute.created":
        await dispute_created(tx, p, obj, **refs)
        return p, "disputed"
    await dispute_closed(tx, p, obj, **refs)
    return p, f"dispute_{obj.get('status') or 'closed'}"


async def handle_event(router: EventRouter, tx: LedgerTx, event: Row, raw: bytes) -> str:
    """Store the event once and apply it; a duplicate has no effect."""
    event_id = str(event.get("id") or "")
    if await repo.event_seen(tx.conn, event_id):
        return "duplicate"
    etype = str(event.get("type") or "")
    raw_obj = (event.get("data") or {}).get("object") or {}
    obj: Row = raw_obj if isinstance(raw_obj, dict) else {}
    payment, outcome = await _dispatch(router, tx, etype, obj)
    for hook in router.hooks:
        await hook(tx, etype, payment, obj)
    charge_pi = _id(obj.get("payment_intent"))[:255] if etype.startswith("charge.") else ""
    await repo.store_event(
        tx.conn,
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
