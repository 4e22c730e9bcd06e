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

from server.keys import repository as repo
from server.keys.models import BudgetLimit, Window, budgets_of, window_bounds
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
        await repo.lock_keys(tx, {k for k, _ in wanted})

    async def use(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, *, kind: Kind, category: str
    ) -> None:
        key = await repo.locked_key(tx, key_id)
        limited = kind in KEY_LIMITED_KINDS
        if limited:
            _check_key(key, key_id, user_id, delta, category, tx.now_us)
        if key is None:
            return
        bounds = _bounds(at_us)
        if (key["hour_start_us"], key["day_start_us"], key["month_start_us"]) == _starts(at_us):
            # The common case (every use after the key's first in these windows):
            # each counter is for the windows of `at_us`, so no window to move.
            plan = _plan(key["budgets"])
            if limited:
                for b, used_col, _warn in plan:
                    if key[used_col] + delta > b.limit:
                        _refuse(tx, user_id, key_id, b, key[used_col], delta, bounds)
            was_used = [key[used_col] for _b, used_col, _warn in plan]
            repo.update_key(
                tx, key, lifetime_used=key["lifetime_used"] + delta, hour_used=key["hour_used"] + delta,
                day_used=key["day_used"] + delta, month_used=key["month_used"] + delta,
            )
            if delta > 0:
                for (b, _used_col, warn), was in zip(plan, was_used, strict=True):
                    if was < warn <= was + delta or was < b.limit <= was + delta:
                        _crossings(tx, user_id, key, b, was, was + delta)
            return
        budgets = parsed_budgets(key["budgets"])
        # The use of each window holding `at_us`: the counter when it is for that
        # window, 0 when that window has not been used yet; None for a window
        # that has ended since (a give-back there changes no current counter).
        used: dict[Window, int | None] = {Window.LIFETIME: key["lifetime_used"]}
        for w, (start_col, used_col) in COUNTERS.items():
            start = bounds[w][0]
            used[w] = key[used_col] if key[start_col] == start else 0 if key[start_col] < start else None
        if limited:
            for b in budgets:
                now_used = used[b.window] or 0
                if now_used + delta > b.limit:
                    _refuse(tx, user_id, key_id, b, now_used, delta, bounds)
        values: dict[str, int] = {"lifetime_used": key["lifetime_used"] + delta}
        for w, (start_col, used_col) in COUNTERS.items():
            before = used[w]
            if before is None:
                continue
            start = bounds[w][0]
            if key[start_col] != start:
                _window_began(tx, key, w, budgets)
                values[start_col] = start
            values[used_col] = before + delta
        repo.update_key(tx, key, **values)
        if delta > 0:
            for b in budgets:
                before = used[b.window] or 0
                _crossings(tx, user_id, key, b, before, before + delta)


def _window_began(tx: LedgerTx, key: dict[str, Any], window: Window, budgets: list[BudgetLimit]) -> None:
    """The reset event, once per key and window: when the counter of a window
    that had use moves to the next window, by the boundary job or by the key's
    first use after the boundary, whichever comes first (both under the key's lock)."""
    if key[COUNTERS[window][1]] > 0 and any(b.window == window for b in budgets):
        _event(tx, key["user_id"], key["id"], "budget_reset",
               f"Key {key['label']!r}: a new {window} budget window began")


async def roll_windows(tx: LedgerTx, key_ids: list[str]) -> int:
    """The boundary job's turn: move the counters of ended windows to the
    current ones (0 used) and announce each reset; keys already moved (by a
    spend, or an earlier run) change nothing, so a repeat sends no event."""
    bounds = _bounds(tx.now_us)
    moved = 0
    for key_id in sorted(key_ids):
        key = await repo.locked_key(tx, key_id)
        if key is None:
            continue
        budgets = parsed_budgets(key["budgets"])
        values: dict[str, int] = {}
        for w, (start_col, used_col) in COUNTERS.items():
            start = bounds[w][0]
            if key[start_col] < start:
                _window_began(tx, key, w, budgets)
                values[start_col], values[used_col] = start, 0
        if values:
            repo.update_key(tx, key, **values)
            moved += 1
    return moved


def _refuse(
    tx: LedgerTx, user_id: str, key_id: str, b: BudgetLimit, now_used: int, delta: int,
    bounds: dict[Window, tuple[int, int]],
) -> None:
    end = bounds[b.window][1] if b.window in bounds else 0
    tx.batch_set(REFUSED).add((user_id, key_id, str(b.window), b.limit, now_used, end))
    meta: dict[str, object] = {
        "key_id": key_id,
        "window": str(b.window),
        "limit_millicredits": b.limit,
        "used_millicredits": now_used,
        "requested_millicredits": delta,
        "remaining_millicredits": max(b.limit - now_used, 0),
    }
    if end:
        meta["resets_at"] = rfc3339(end)
    raise BudgetExceeded(f"the key's {b.window} budget would be exceeded", metadata=meta)


# The counters of the windows that reset, on the key's row.
COUNTERS = {
    Window.HOUR: ("hour_start_us", "hour_used"),
    Window.DAY: ("day_start_us", "day_used"),
    Window.MONTH: ("month_start_us", "month_used"),
}
_BOUNDS: dict[int, dict[Window, tuple[int, int]]] = {}
_BUDGETS: dict[str, list[BudgetLimit]] = {}


def _bounds(at_us: int) -> dict[Window, tuple[int, int]]:
    """The windows holding an instant; a batch's operations share one instant."""
    found = _BOUNDS.get(at_us)
    if found is None:
        if len(_BOUNDS) > 64:
            _BOUNDS.clear()
        found = _BOUNDS[at_us] = {w: window_bounds(w, at_us) for w in COUNTERS}
    return found


_STARTS: dict[int, tuple[int, int, int]] = {}
_PLANS: dict[str, list[tuple[BudgetLimit, str, int]]] = {}


def _starts(at_us: int) -> tuple[int, int, int]:
    """The starts of the hour, day and month holding an instant (the key row's order)."""
    found = _STARTS.get(at_us)
    if found is None:
        if len(_STARTS) > 64:
            _STARTS.clear()
        b = _bounds(at_us)
        found = _STARTS[at_us] = (b[Window.HOUR][0], b[Window.DAY][0], b[Window.MONTH][0])
    return found


def _plan(text: str) -> list[tuple[BudgetLimit, str, int]]:
    """Each budget of a budgets column with its counter column and its warning
    threshold, worked out once per distinct value."""
    found = _PLANS.get(text)
    if found is None:
        if len(_PLANS) > 10_000:
            _PLANS.clear()
        found = _PLANS[text] = [
            (b, COUNTERS[b.window][1] if b.window in COUNTERS else "lifetime_used", b.limit * WARN_PERCENT // 100)
            for b in parsed_budgets(text)
        ]
    return found


def parsed_budgets(text: str) -> list[BudgetLimit]:
    """A key's budgets column, parsed once per distinct value."""
    found = _BUDGETS.get(text)
    if found is None:
        if len(_BUDGETS) > 10_000:
            _BUDGETS.clear()
        found = _BUDGETS[text] = budgets_of({"budgets": text})
    return found


def _check_key(key: dict[str, Any] | None, key_id: str, user_id: str, amount: int, category: str, now_us: int) -> None:
    """New spending through a key: it must be live, on this wallet, and allow it."""
    if key is None or key["user_id"] != user_id:
        raise errors.NotFound("key not found on this wallet", reason="KEY_NOT_FOUND", metadata={"key_id": key_id})
    if key["revoked_at_us"]:
        raise key_refused("the key was revoked", "KEY_REVOKED", key_id)
    if key["expires_at_us"] and key["expires_at_us"] <= now_us:
        raise key_refused("the key has expired", "KEY_EXPIRED", key_id)
    categories = _categories(key["categories"])
    if categories and category not in categories:
        raise errors.PermissionDenied(
            f"the key may not spend on {category or 'an empty category'!r}", reason="KEY_CATEGORY_NOT_ALLOWED",
            metadata={"key_id": key_id, "category": category, "allowed": ",".join(sorted(categories))},
        )
    if key["max_spend"] and amount > key["max_spend"]:
        raise errors.FailedPrecondition(
            "the amount is above the key's largest single spend", reason="KEY_SPEND_TOO_LARGE",
            metadata={"key_id": key_id, "max_spend_millicredits": key["max_spend"], "requested_millicredits": amount},
        )


_CATEGORIES: dict[str, frozenset[str]] = {}


def _categories(text: str) -> frozenset[str]:
    found = _CATEGORIES.get(text)
    if found is None:
        if len(_CATEGORIES) > 10_000:
            _CATEGORIES.clear()
        found = _CATEGORIES[text] = frozenset(json.loads(text or "[]"))
    return found


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
