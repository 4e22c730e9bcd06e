"""Corrections: admin adjustments, reversals and usage refunds, applied inside
a ledger batch. Credits go back to the lots they came from, as each transfer
recorded them (transfers.ledger: `drawn` and `filled`); a lot whose period has
ended receives them and expires them at once through ALLOWANCE_EXPIRY (the
hold rule: numbered keys, so each return expires exactly once)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from server.db.schema import transfers
from server.ledger import keys
from server.ledger.model import (
    PROMOTIONAL_GRANT_KINDS,
    REFUNDABLE_KINDS,
    REVERSIBLE_KINDS,
    SPEND_ORDER,
    SYSTEM_ADJUSTMENTS,
    Kind,
    LotKind,
)
from server.ledger.tx import LedgerTx, Row
from server.platform import errors


def record(row: Row) -> dict[str, Any]:
    """The ledger's own record of a transfer (empty for transfers made before it existed)."""
    raw = row.get("ledger") or "{}"
    value = json.loads(raw) if isinstance(raw, str) else raw
    return value if isinstance(value, dict) else {}


def budget_instant(row: Row) -> int:
    """The instant whose budget windows a key's transfer counted in."""
    at = record(row).get("budget_at")
    return int(at if at is not None else row["created_at_us"])


def wallet_user(account_id: str) -> str | None:
    return account_id[len("wallet:"):] if account_id.startswith("wallet:") else None


async def transfer_by_id(tx: LedgerTx, transfer_id: int) -> Row:
    found = await tx.fetch_one(select(transfers).where(transfers.c.id == transfer_id))
    if found is None:
        raise errors.NotFound("transaction not found", reason="TRANSACTION_NOT_FOUND")
    return found


async def _refunded(tx: LedgerTx, charge_id: int) -> int:
    q = select(func.coalesce(func.sum(transfers.c.amount), 0)).where(
        transfers.c.corrects == charge_id, transfers.c.kind == str(Kind.USAGE_REFUND)
    )
    return int(await tx.fetch_scalar(q))


async def _load_wallets(tx: LedgerTx, row: Row) -> None:
    """Lock the wallets first: every check below is read under their locks."""
    for account in sorted((row["debit_account"], row["credit_account"])):
        user = wallet_user(account)
        if user:
            await tx.wallet(user)


# ---- adjustments ------------------------------------------------------------------------


async def adjust(
    tx: LedgerTx,
    user_id: str,
    amount: int,
    *,
    key: str,
    reason: str,
    lot: LotKind,
    expires_at_us: int,
    allow_negative: bool,
) -> Row:
    wallet = await tx.wallet(user_id)
    description = f"Adjustment: {reason}"
    if amount > 0:
        return await tx.transfer(
            SYSTEM_ADJUSTMENTS, wallet["id"], amount, kind=Kind.ADJUSTMENT, key=key, description=description,
            lot_kind=lot, lot_expiry=expires_at_us,
        )
    # A debit follows the spend order; below zero only when the request says so.
    return await tx.transfer(
        wallet["id"], SYSTEM_ADJUSTMENTS, -amount, kind=Kind.ADJUSTMENT, key=key, description=description,
        allow_negative=allow_negative,
    )


# ---- reversals ----------------------------------------------------------------------------


def _refuse(kind: str) -> errors.DomainError:
    if kind in (Kind.PURCHASE, Kind.AUTO_REFILL):
        why = "a purchase is refunded through Stripe, which claws the credits back"
    elif kind in (Kind.REVERSAL, Kind.USAGE_REFUND):
        why = "a correction is never itself reversible"
    else:
        why = f"a {kind} transfer cannot be reversed"
    return errors.FailedPrecondition(why, reason="NOT_REVERSIBLE", metadata={"type": kind})


async def reverse(tx: LedgerTx, transfer_id: int, reason: str) -> list[Row]:
    """The exact mirror of a reversible transfer, at most once (keys.reversal);
    a revenue share is reversed together with the charge that paid it."""
    row = await transfer_by_id(tx, transfer_id)
    if row["kind"] not in REVERSIBLE_KINDS:
        raise _refuse(row["kind"])
    if row["kind"] == Kind.REVENUE_SHARE:
        paid_by = record(row).get("paid_by")
        if not paid_by:
            raise errors.FailedPrecondition(
                "reverse the spend that paid this revenue share", reason="NOT_REVERSIBLE", metadata={"type": row["kind"]}
            )
        row = await transfer_by_id(tx, int(paid_by))
    share = None
    if row["kind"] in REFUNDABLE_KINDS:
        share = await tx.fetch_one(select(transfers).where(transfers.c.key == keys.revenue_share(row["key"])))
    await _load_wallets(tx, row)
    if share is not None:
        await _load_wallets(tx, share)
    if not await tx.key_unused(keys.reversal(row["id"])):
        raise errors.DomainError(
            "this transaction was already reversed", code=errors.Code.ALREADY_EXISTS, reason="ALREADY_REVERSED",
            metadata={"transaction_id": str(row["id"])},
        )
    if row["kind"] in REFUNDABLE_KINDS and await _refunded(tx, row["id"]):
        raise errors.FailedPrecondition(
            "this charge was partly refunded: refund the rest instead", reason="ALREADY_REFUNDED",
            metadata={"transaction_id": str(row["id"])},
        )
    out = [await _mirror(tx, row, reason)]
    if share is not None and await tx.key_unused(keys.reversal(share["id"])):
        out.append(await _mirror(tx, share, reason))
    return out


async def _expired_part(tx: LedgerTx, row: Row) -> list[list[Any]]:
    """The [kind, expiry, part] lots of a grant that expired before its
    reversal: they already went back to the system account, and a reversal
    takes back only what is left of the grant. Within one lot credits are
    spent oldest grant first, so what the lot expired is the newest grants'."""
    ended = {(k, e): p for k, e, p in record(row).get("filled", []) if 0 < e <= tx.now_us}
    if not ended:
        return []
    wallet = row["credit_account"]
    kinds = (str(Kind.ALLOWANCE_EXPIRY), *(str(k) for k in PROMOTIONAL_GRANT_KINDS))
    found = await tx.fetch(
        select(transfers.c.id, transfers.c.kind, transfers.c.ledger, transfers.c.credit_account).where(
            (transfers.c.debit_account == wallet) | (transfers.c.credit_account == wallet), transfers.c.kind.in_(kinds)
        )
    )
    found += [t for t in tx.new_transfers if wallet in (t["debit_account"], t["credit_account"]) and t["kind"] in kinds]
    expired: Counter[tuple[str, int]] = Counter()  # what each ended lot expired, not yet laid on a newer grant
    for t in found:
        if t["kind"] == Kind.ALLOWANCE_EXPIRY:
            for k, e, p in record(t).get("drawn", []):
                expired[(k, e)] += p
    for t in found:
        if t["kind"] != Kind.ALLOWANCE_EXPIRY and t["credit_account"] == wallet and t["id"] > row["id"]:
            for k, e, p in record(t).get("filled", []):
                expired[(k, e)] -= p
    return [[k, e, min(p, expired[(k, e)])] for (k, e), p in ended.items() if expired[(k, e)] > 0]


async def _mirror(tx: LedgerTx, row: Row, reason: str) -> Row:
    rec = record(row)
    back = wallet_user(row["debit_account"])
    expired = await _expired_part(tx, row) if wallet_user(row["credit_account"]) else []
    amount = row["amount"] - sum(p for _, _, p in expired)
    if amount <= 0:
        raise errors.FailedPrecondition(
            "the whole grant has expired: nothing is left to reverse", reason="GRANT_EXPIRED",
            metadata={"transaction_id": str(row["id"]), "expired_millicredits": str(row["amount"])},
        )
    made = await tx.transfer(
        row["credit_account"],
        row["debit_account"],
        amount,
        kind=Kind.REVERSAL,
        key=keys.reversal(row["id"]),
        description=f"Reversal of #{row['id']}: {reason}"[:500],
        category=row["category"],
        ref=row["ref"],
        # The credits leave the lots this transfer filled first, and may leave a debt.
        allow_negative=True,
        from_lots=_less(rec.get("filled") or [], expired),
        # ... and return to the lots it drew (transfers made before the record: purchased).
        restore_lots=rec.get("drawn"),
        lot_kind=LotKind.PURCHASED,
        corrects=row["id"],
        undoes=row["kind"],
        ledger={"expired": expired} if expired else None,
        # A key's spend comes back into its budget, in the window it was spent in.
        spender_key=row.get("key_id"),
        budget_at_us=budget_instant(row),
        spender_member=row.get("member_id"),
    )
    if back:
        await tx.roll_over(back)  # a lot that has ended expires what it got back, at once
    return made


def _less(lots: list[list[Any]], taken: list[list[Any]]) -> list[list[Any]]:
    left: Counter[tuple[str, int]] = Counter()
    for k, e, p in lots:
        left[(k, e)] += p
    for k, e, p in taken:
        left[(k, e)] -= p
    return [[k, e, p] for (k, e), p in left.items() if p > 0]


# ---- usage refunds -------------------------------------------------------------------------


def _longest_lived_first(lots: list[list[Any]]) -> list[list[Any]]:
    return sorted(lots, key=lambda lot: (-SPEND_ORDER.index(LotKind(lot[0])), lot[1] != 0, -lot[1]))


async def refund(
    tx: LedgerTx, transfer_id: int, amount: int, *, key: str, reason: str, caller: str | None, window_us: int
) -> tuple[Row, int]:
    """Give back all or part of a charge; `caller` (role/subject) must be the
    principal that made it, None for an admin. Returns the refund and the
    total refunded so far."""
    row = await transfer_by_id(tx, transfer_id)
    if row["kind"] not in REFUNDABLE_KINDS:
        raise errors.FailedPrecondition(
            "only a Spend or a Capture can be refunded", reason="NOT_REFUNDABLE", metadata={"type": row["kind"]}
        )
    rec = record(row)
    if caller is not None and rec.get("by") != caller:
        raise errors.PermissionDenied("only the principal that made a charge may refund it", reason="NOT_CHARGED_BY_CALLER")
    if tx.now_us - row["created_at_us"] > window_us:
        raise errors.FailedPrecondition(
            "the refund window of this charge has closed", reason="REFUND_WINDOW_CLOSED",
            metadata={"window_days": str(window_us // 86_400_000_000)},
        )
    share = await tx.fetch_one(select(transfers).where(transfers.c.key == keys.revenue_share(row["key"])))
    await _load_wallets(tx, row)
    if share is not None:
        await _load_wallets(tx, share)
    if not await tx.key_unused(keys.reversal(row["id"])):
        raise errors.FailedPrecondition("this charge was reversed", reason="TRANSACTION_REVERSED")
    done = await _refunded(tx, row["id"])
    if done + amount > row["amount"]:
        raise errors.FailedPrecondition(
            "refunds would exceed the charge", reason="REFUND_EXCEEDS_CHARGE",
            metadata={
                "charged_millicredits": row["amount"],
                "refunded_millicredits": done,
                "refundable_millicredits": row["amount"] - done,
            },
        )
    # Back into the lots the charge drew, less what earlier refunds returned there.
    # A record may name one lot in several parts (a capture's hold lots, then spend order): add them up.
    left: Counter[tuple[str, int]] = Counter()
    for k, e, p in rec.get("drawn", []):
        left[(k, e)] += p
    prior = await tx.fetch(
        select(transfers.c.ledger).where(transfers.c.corrects == row["id"], transfers.c.kind == str(Kind.USAGE_REFUND))
    )
    for p in prior:
        for k, e, part in record(p).get("filled", []):
            left[(k, e)] -= part
    lots = _longest_lived_first([[k, e, p] for (k, e), p in left.items() if p > 0])
    user = wallet_user(row["debit_account"])
    made = await tx.transfer(
        row["credit_account"],
        row["debit_account"],
        amount,
        kind=Kind.USAGE_REFUND,
        key=key,
        description=(f"Refund of #{row['id']}: {reason}" if reason else f"Refund of #{row['id']}")[:500],
        category=row["category"],
        ref=row["ref"],
        restore_lots=lots,
        lot_kind=LotKind.PURCHASED,
        corrects=row["id"],
        undoes=row["kind"],
        spender_key=row.get("key_id"),
        budget_at_us=budget_instant(row),
        spender_member=row.get("member_id"),
    )
    if user:
        await tx.roll_over(user)
    if share is not None:
        # The publisher's share comes back in proportion, rounded down like the
        # share itself: cumulative, so refunding the whole charge takes all of it.
        due = (done + amount) * share["amount"] // row["amount"] - await _refunded(tx, share["id"])
        if due > 0:
            await tx.transfer(
                share["credit_account"],
                share["debit_account"],
                due,
                kind=Kind.USAGE_REFUND,
                key=keys.revenue_share(key),
                description=f"Revenue share returned with the refund of #{row['id']}"[:500],
                category=share["category"],
                ref=share["ref"],
                allow_negative=True,
                from_lots=record(share).get("filled"),
                corrects=share["id"],
                undoes=share["kind"],
            )
    return made, done + amount
