"""Budgets inside the ledger's transaction: the SpendGuard the writer runs.

A batch loads its keys (locked, in id order, after the wallets' locks) and
their usage rows with its other reads; each Spend or Reserve through a key
adds to the key's use in every window in memory (so several operations of
one batch on one key add up, like balances) and is refused whole when any
budget would be passed. Use and refusal are undone with the operation; the
usage rows go out with the batch's write-back, in its single commit. There is
no check before the transaction: nothing to race with."""

from __future__ import annotations

import json
from typing import Any

from server.db.schema import api_keys, key_usage
from server.keys.models import WINDOWS, BudgetLimit, Window, budgets_of, usage_id, window_bounds
from server.ledger.model import KEY_LIMITED_KINDS, BalanceEvent, Kind
from server.ledger.tx import LedgerTx, SpendGuard
from server.platform import errors
from server.platform.clock import from_us

# Refusals of a batch, kept outside its undo log (the refused operation's own
# changes are undone): each becomes one BUDGET_EXHAUSTED event on the watch.
REFUSED = "keys-budget-refused"
WARN_PERCENT = 80


def rfc3339(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(errors.FailedPrecondition):
    reason = "BUDGET_EXCEEDED"


def key_refused(message: str, reason: str, key_id: str) -> errors.DomainError:
    return errors.FailedPrecondition(message, reason=reason, metadata={"key_id": key_id})


class KeyBudgets(SpendGuard):
    async def load(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> None:
        await tx.rows(api_keys).get_many([k for k, _ in wanted], lock=True)
        ids = [usage_id(k, w, window_bounds(w, at)[0]) for k, at in wanted for w in WINDOWS]
        await tx.rows(key_usage).get_many(ids)

    async def use(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, *, kind: Kind, category: str
    ) -> None:
        key = await tx.rows(api_keys).get(key_id, lock=True)
        limited = kind in KEY_LIMITED_KINDS
        if limited:
            _check_key(key, key_id, user_id, delta, category, tx.now_us)
        budgets = budgets_of(key) if key is not None else []
        usage = tx.rows(key_usage)
        rows: dict[Window, tuple[dict[str, Any] | None, int, int]] = {}
        for w in WINDOWS:
            start, end = window_bounds(w, at_us)
            rid = usage_id(key_id, w, start)
            rows[w] = (await usage.get(rid), start, end)
        if limited:
            for b in budgets:
                row, _, end = rows[b.window]
                used = row["used"] if row else 0
                if used + delta > b.limit:
                    tx.batch_set(REFUSED).add((user_id, key_id, str(b.window), b.limit, used, end))
                    meta: dict[str, object] = {
                        "key_id": key_id,
                        "window": str(b.window),
                        "limit_millicredits": b.limit,
                        "used_millicredits": used,
                        "requested_millicredits": delta,
                        "remaining_millicredits": max(b.limit - used, 0),
                    }
                    if end:
                        meta["resets_at"] = rfc3339(end)
                    raise BudgetExceeded(f"the key's {b.window} budget would be exceeded", metadata=meta)
        by_window = {b.window: b for b in budgets}
        for w, (row, start, _end) in rows.items():
            before = row["used"] if row else 0
            if row is None:
                usage.insert({"id": usage_id(key_id, w, start), "key_id": key_id, "window_kind": str(w),
                              "window_start_us": start, "used": delta})
                if delta > 0 and w in by_window and w != Window.LIFETIME and key is not None \
                        and key["created_at_us"] < start:
                    _event(tx, user_id, key_id, "budget_reset", f"Key {key['label']!r}: a new {w} budget window began")
            else:
                usage.update(row, used=before + delta)
            budget = by_window.get(w)
            if budget is not None and delta > 0 and key is not None:
                _crossings(tx, user_id, key, budget, before, before + delta)


def _check_key(key: dict[str, Any] | None, key_id: str, user_id: str, amount: int, category: str, now_us: int) -> None:
    """New spending through a key: it must be live, on this wallet, and allow it."""
    if key is None or key["user_id"] != user_id:
        raise errors.NotFound("key not found on this wallet", reason="KEY_NOT_FOUND", metadata={"key_id": key_id})
    if key["revoked_at_us"]:
        raise key_refused("the key was revoked", "KEY_REVOKED", key_id)
    if key["expires_at_us"] and key["expires_at_us"] <= now_us:
        raise key_refused("the key has expired", "KEY_EXPIRED", key_id)
    categories = json.loads(key["categories"] or "[]")
    if categories and category not in categories:
        raise errors.PermissionDenied(
            f"the key may not spend on {category or 'an empty category'!r}", reason="KEY_CATEGORY_NOT_ALLOWED",
            metadata={"key_id": key_id, "category": category, "allowed": ",".join(categories)},
        )
    if key["max_spend"] and amount > key["max_spend"]:
        raise errors.FailedPrecondition(
            "the amount is above the key's largest single spend", reason="KEY_SPEND_TOO_LARGE",
            metadata={"key_id": key_id, "max_spend_millicredits": key["max_spend"], "requested_millicredits": amount},
        )


def _crossings(tx: LedgerTx, user_id: str, key: dict[str, Any], budget: BudgetLimit, before: int, after: int) -> None:
    warn = budget.limit * WARN_PERCENT // 100
    label = key["label"]
    if before < warn <= after < budget.limit:
        _event(tx, user_id, key["id"], "budget_warning",
               f"Key {label!r}: {WARN_PERCENT} % of its {budget.window} budget is used")
    if before < budget.limit <= after:
        _event(tx, user_id, key["id"], "budget_exhausted", f"Key {label!r}: its {budget.window} budget is used up")


def _event(tx: LedgerTx, user_id: str, key_id: str, kind: str, message: str) -> None:
    tx.notify(BalanceEvent(user_id=user_id, kind=kind, message=message, key_id=key_id))


async def refused_events(tx: LedgerTx, ops: list[Any]) -> None:
    """A ledger extension: one BUDGET_EXHAUSTED event per key and window refused in the batch."""
    refused = tx.batch_set(REFUSED)
    if not refused:
        return
    seen: set[tuple[str, str, str]] = set()
    for user_id, key_id, window, limit, used, _end in sorted(refused):
        if (user_id, key_id, window) in seen:
            continue
        seen.add((user_id, key_id, window))
        _event(tx, user_id, key_id, "budget_exhausted",
               f"A spend through key {key_id} was refused: its {window} budget ({used} of {limit} millicredits used)")
