"""Budgets inside the ledger's transaction: the SpendGuard the writer runs.

A batch reads its keys once (locked, in id order, after the wallets' locks):
what the guard checks and the use counters, in one narrow statement. Each
Spend or Reserve through a key adds to the key's use in every window in
memory (so several operations of one batch on one key add up, like
balances) and is refused whole when any budget would be passed. A use is
one entry of the batch's undo log (the key's counters, replaced whole), so
a refused operation's use is undone with it; the counters that changed go
out in one statement with the batch's write-back, in its single commit.
There is no check before the transaction, and nothing is kept between
batches: a revocation or a budget change committed before a batch is what
it reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
# The batch's keys: id -> KeyRow, or None for an id with no key (read once).
KEYS = "keys-rows"
# The batch's counters: id -> Counters, set through the undo log.
USED = "keys-used"
WARN_PERCENT = 80
# At most this many keys a batch names are read with the wallets' users (PostgreSQL).
PREFETCH_MAX = 64
# The use counters' columns, on a key's row and on an org member's.
COUNTER_COLUMNS = repo.COUNTER_COLUMNS

# A key's use counters, in the row's order: the start of the hour, day and
# month each counter is for (0: never used) with its use, then the lifetime use.
Counters = tuple[int, int, int, int, int, int, int]
HOUR_START, HOUR_USED, DAY_START, DAY_USED, MONTH_START, MONTH_USED, LIFETIME_USED = range(7)


def rfc3339(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(errors.FailedPrecondition):
    reason = "BUDGET_EXCEEDED"


def key_refused(message: str, reason: str, key_id: str) -> errors.DomainError:
    return errors.FailedPrecondition(message, reason=reason, metadata={"key_id": key_id})


class KeyRow:
    """What a batch checks of one key, as read with its counters."""

    __slots__ = (
        "budgets",
        "categories",
        "expires_at_us",
        "id",
        "label",
        "loaded",
        "max_spend",
        "plan",
        "resets_at_us",
        "revoked_at_us",
        "room",
        "room_of",
        "unlimited",
        "user_id",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        # The values of repo.GUARD_COLUMNS, in order: a row as the driver gives
        # it (a dict per row cost about as much as the rest of the key's read).
        (self.id, self.user_id, self.label, self.revoked_at_us, self.expires_at_us, self.max_spend, categories,
         budgets, *counters, self.resets_at_us) = row
        self.categories = _categories(categories)
        self.budgets = parsed_budgets(budgets)
        self.plan = _plan(budgets)
        self.loaded: Counters = _counters(counters)
        # Live, any category, any amount: only the wallet and the expiry to check per spend.
        self.unlimited = not self.revoked_at_us and not self.categories and not self.max_spend
        # How much more the counters `room_of` may take before any budget's
        # warning or limit (the batch's counters move through the undo log: the
        # room is only trusted for the very tuple it was worked out for).
        self.room_of: Counters | None = None
        self.room = 0


async def load_keys(tx: LedgerTx, key_ids: set[str]) -> dict[str, KeyRow | None]:
    """The batch's keys (those it has not read yet are read now, locked)."""
    keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
    missing = [k for k in key_ids if k not in keys]
    if missing:
        used: dict[str, Counters] = tx.batch_dict(USED)
        for row in await repo.guard_rows(tx, missing):
            key = KeyRow(row)
            keys[key.id] = key
            used[key.id] = key.loaded  # a read, not a change: nothing to undo
        for k in missing:
            keys.setdefault(k, None)
    return keys


class KeyBudgets(SpendGuard):
    def prefetch(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> list[repo.LoadGroup]:
        # PostgreSQL: the keys the operations name come in the round trip of the
        # wallets' users, after the wallets' locks and without a lock of their
        # own: every change to a key's row (a batch's use, UpdateKey, RevokeKey,
        # the reset job) is made under its wallet's lock, and a key of another
        # wallet is only read, to be refused. SQLite's batch holds the write lock.
        # A batch of many keys reads them in the narrow statement of `load` instead:
        # the round trip saved is one per batch, the whole rows' decoding one per key.
        ids = {k for k, _ in wanted}
        if tx.is_sqlite or len(ids) > PREFETCH_MAX:
            return []
        return [repo.prefetch_group(sorted(ids))]

    def prefetched(self, tx: LedgerTx, found: list[list[dict[str, Any]]]) -> None:
        keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
        used: dict[str, Counters] = tx.batch_dict(USED)
        for row in found[0]:
            key = KeyRow([row[c] for c in repo.GUARD_COLUMNS])
            keys[key.id] = key
            used[key.id] = key.loaded  # a read, not a change: nothing to undo
        # An id with no key is not marked: the load after the holds reads it again
        # (locked), as any key it has not seen.

    async def load(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> None:
        await load_keys(tx, {k for k, _ in wanted})

    async def write(self, tx: LedgerTx) -> None:
        used: dict[str, Counters] = tx.batch_dict(USED)
        if not used:
            return
        keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
        changed: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []  # and their next reset (an indexed column: only when it moves)
        for key_id in sorted(used):
            counters = used[key_id]
            key = keys[key_id]
            if key is not None and counters != key.loaded:
                h0, h, d0, d, m0, m, life = counters
                row: dict[str, Any] = {  # COUNTER_COLUMNS and the id
                    "hour_start_us": h0, "hour_used": h, "day_start_us": d0, "day_used": d, "month_start_us": m0,
                    "month_used": m, "lifetime_used": life, "id": key_id,
                }
                resets = next_reset_us(counters)
                if resets != key.resets_at_us:
                    row["resets_at_us"] = resets
                    moved.append(row)
                else:
                    changed.append(row)
        await repo.write_counters(tx, changed, moved)

    async def use(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, *, kind: Kind, category: str
    ) -> None:
        keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
        if key_id in keys:
            key = keys[key_id]
        else:  # an operation that did not declare its key (budget_keys)
            key = (await load_keys(tx, {key_id}))[key_id]
        limited = kind in KEY_LIMITED_KINDS
        if limited and not (
            key is not None and key.unlimited and key.user_id == user_id
            and (not key.expires_at_us or key.expires_at_us > tx.now_us)
        ):
            _check_key(key, key_id, user_id, delta, category, tx.now_us)
        if key is None:
            return
        used: dict[str, Counters] = tx.batch_dict(USED)
        c = used[key_id]
        starts = _starts(at_us)
        if c[HOUR_START] == starts[0] and c[DAY_START] == starts[1] and c[MONTH_START] == starts[2]:
            # The common case (every use after the key's first in these windows):
            # each counter is for the windows of `at_us`, so no window to move.
            new = (c[0], c[1] + delta, c[2], c[3] + delta, c[4], c[5] + delta, c[6] + delta)
            room = key.room if key.room_of is c else _room(key.plan, c)
            if 0 < delta < room:
                # Short of every budget's warning and limit: nothing to refuse or announce.
                tx.batch_put(USED, key_id, new)
                key.room_of, key.room = new, room - delta
                return
            plan = key.plan
            if limited:
                for b, i, _warn in plan:
                    if c[i] + delta > b.limit:
                        _refuse(tx, user_id, key_id, b, c[i], delta, at_us)
            tx.batch_put(USED, key_id, new)
            if delta > 0:
                for b, i, warn in plan:
                    was = c[i]
                    if was < warn <= was + delta or was < b.limit <= was + delta:
                        _crossings(tx, user_id, key, b, was, was + delta)
            return
        budgets = key.budgets
        now_used = window_uses(c, at_us)
        if limited:
            hit = over_budget(budgets, now_used, delta)
            if hit is not None:
                _refuse(tx, user_id, key_id, hit[0], hit[1], delta, at_us)
        new, began = used_after(c, now_used, delta, at_us)
        for w, used_before in began:
            _window_began(tx, key, w, used_before)
        tx.batch_put(USED, key_id, new)
        if delta > 0:
            for b in budgets:
                before = now_used[b.window] or 0
                _crossings(tx, user_id, key, b, before, before + delta)


# ---- the per-window use rule, shared with org members' budgets (server/orgs/budgets.py) ----


def counters_of(row: dict[str, Any]) -> Counters:
    """The use counters of a row with COUNTER_COLUMNS (a key's, a member's)."""
    return (
        row["hour_start_us"], row["hour_used"], row["day_start_us"], row["day_used"],
        row["month_start_us"], row["month_used"], row["lifetime_used"],
    )


def window_uses(c: Counters, at_us: int) -> dict[Window, int | None]:
    """The use of each window holding `at_us`: the counter when it is for that
    window, 0 when that window has not been used yet; None for a window that
    has ended since (a give-back there changes no current counter)."""
    bounds = _bounds(at_us)
    now_used: dict[Window, int | None] = {Window.LIFETIME: c[LIFETIME_USED]}
    for w, (si, ui) in COUNTER_AT.items():
        start = bounds[w][0]
        now_used[w] = c[ui] if c[si] == start else 0 if c[si] < start else None
    return now_used


def over_budget(
    budgets: list[BudgetLimit], now_used: dict[Window, int | None], delta: int
) -> tuple[BudgetLimit, int] | None:
    """The first budget `delta` more would pass, with its window's use."""
    for b in budgets:
        before = now_used[b.window] or 0
        if before + delta > b.limit:
            return b, before
    return None


def used_after(
    c: Counters, now_used: dict[Window, int | None], delta: int, at_us: int
) -> tuple[Counters, list[tuple[Window, int]]]:
    """The counters after adding `delta` in the windows of `at_us`, and the
    windows whose counter moved to a new window (with the use it had)."""
    bounds = _bounds(at_us)
    new = list(c)
    new[LIFETIME_USED] = c[LIFETIME_USED] + delta
    began: list[tuple[Window, int]] = []
    for w, (si, ui) in COUNTER_AT.items():
        prior = now_used[w]
        if prior is None:
            continue
        start = bounds[w][0]
        if c[si] != start:
            began.append((w, c[ui]))
            new[si] = start
        new[ui] = prior + delta
    return _counters(new), began


def rolled(c: Counters, now_us: int) -> tuple[Counters, list[tuple[Window, int]]]:
    """The boundary job's rule: the counters of ended windows moved to the
    current ones (0 used), and the windows moved (with the use they had)."""
    bounds = _bounds(now_us)
    new = list(c)
    began: list[tuple[Window, int]] = []
    for w, (si, ui) in COUNTER_AT.items():
        start = bounds[w][0]
        if c[si] < start:
            began.append((w, c[ui]))
            new[si], new[ui] = start, 0
    return _counters(new), began


def next_reset_us(c: Counters) -> int:
    """When the boundary job next has work for these counters (the key's
    resets_at_us): the end of the earliest window with use recorded in it, 0: none."""
    key = (c[HOUR_START] if c[HOUR_USED] > 0 else 0, c[DAY_START] if c[DAY_USED] > 0 else 0,
           c[MONTH_START] if c[MONTH_USED] > 0 else 0)
    found = _RESETS.get(key)
    if found is None:
        if len(_RESETS) > 64:
            _RESETS.clear()
        ends = [window_bounds(w, start)[1] for w, start in zip(COUNTERS, key, strict=True) if start > 0]
        found = _RESETS[key] = min(ends) if ends else 0
    return found


_RESETS: dict[tuple[int, int, int], int] = {}


def budget_exceeded(
    who: str, b: BudgetLimit, used: int, delta: int, at_us: int, meta: dict[str, object]
) -> BudgetExceeded:
    """The refusal and its ErrorInfo metadata: the window, the limit, the use,
    what was asked, what remains and when the window resets."""
    meta = {
        **meta,
        "window": str(b.window),
        "limit_millicredits": b.limit,
        "used_millicredits": used,
        "requested_millicredits": delta,
        "remaining_millicredits": max(b.limit - used, 0),
    }
    if b.window in COUNTERS:
        meta["resets_at"] = rfc3339(_bounds(at_us)[b.window][1])
    return BudgetExceeded(f"the {who}'s {b.window} budget would be exceeded", metadata=meta)


def crossed(b: BudgetLimit, before: int, after: int) -> list[str]:
    """The budget events a use from `before` to `after` crosses: 80 % used, used up."""
    out = []
    warn = b.limit * WARN_PERCENT // 100
    if before < warn <= after < b.limit:
        out.append("budget_warning")
    if before < b.limit <= after:
        out.append("budget_exhausted")
    return out


def _counters(values: list[int]) -> Counters:
    return (values[0], values[1], values[2], values[3], values[4], values[5], values[6])


def _window_began(tx: LedgerTx, key: KeyRow, window: Window, used_before: int) -> None:
    """The reset event, once per key and window: when the counter of a window
    that had use moves to the next window, by the boundary job or by the key's
    first use after the boundary, whichever comes first (both under the key's lock)."""
    if used_before > 0 and any(b.window == window for b in key.budgets):
        _event(tx, key.user_id, key.id, "budget_reset", f"Key {key.label!r}: a new {window} budget window began")


async def roll_windows(tx: LedgerTx, key_ids: list[str]) -> int:
    """The boundary job's turn: move the counters of ended windows to the
    current ones (0 used) and announce each reset; keys already moved (by a
    spend, or an earlier run) change nothing, so a repeat sends no event."""
    keys = await load_keys(tx, set(key_ids))
    used: dict[str, Counters] = tx.batch_dict(USED)
    moved = 0
    for key_id in sorted(key_ids):
        key = keys[key_id]
        if key is None:
            continue
        c = used[key_id]
        new, began = rolled(c, tx.now_us)
        for w, used_before in began:
            _window_began(tx, key, w, used_before)
        if began:
            tx.batch_put(USED, key_id, new)
            moved += 1
    return moved


def _refuse(tx: LedgerTx, user_id: str, key_id: str, b: BudgetLimit, now_used: int, delta: int, at_us: int) -> None:
    end = _bounds(at_us)[b.window][1] if b.window in COUNTERS else 0
    tx.batch_set(REFUSED).add((user_id, key_id, str(b.window), b.limit, now_used, end))
    raise budget_exceeded("key", b, now_used, delta, at_us, {"key_id": key_id})


# The counters of the windows that reset, on the key's row (column names),
# and in the batch's Counters (positions).
COUNTERS = {
    Window.HOUR: ("hour_start_us", "hour_used"),
    Window.DAY: ("day_start_us", "day_used"),
    Window.MONTH: ("month_start_us", "month_used"),
}
COUNTER_AT = {
    Window.HOUR: (HOUR_START, HOUR_USED),
    Window.DAY: (DAY_START, DAY_USED),
    Window.MONTH: (MONTH_START, MONTH_USED),
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
_PLANS: dict[str, list[tuple[BudgetLimit, int, int]]] = {}


def _starts(at_us: int) -> tuple[int, int, int]:
    """The starts of the hour, day and month holding an instant (the key row's order)."""
    found = _STARTS.get(at_us)
    if found is None:
        if len(_STARTS) > 64:
            _STARTS.clear()
        b = _bounds(at_us)
        found = _STARTS[at_us] = (b[Window.HOUR][0], b[Window.DAY][0], b[Window.MONTH][0])
    return found


def _plan(text: str) -> list[tuple[BudgetLimit, int, int]]:
    """Each budget of a budgets column with the position of its counter and its
    warning threshold, worked out once per distinct value."""
    found = _PLANS.get(text)
    if found is None:
        if len(_PLANS) > 10_000:
            _PLANS.clear()
        found = _PLANS[text] = [
            (b, COUNTER_AT[b.window][1] if b.window in COUNTER_AT else LIFETIME_USED, b.limit * WARN_PERCENT // 100)
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


def _room(plan: list[tuple[BudgetLimit, int, int]], c: Counters) -> int:
    """The smallest use that reaches a budget's warning or limit from these
    counters (all in the windows of the batch's instant); 0 at a limit."""
    room = _NO_BUDGET
    for b, i, warn in plan:
        was = c[i]
        left = warn - was if was < warn else b.limit - was
        if left < room:
            room = max(left, 0)
    return room


_NO_BUDGET = 1 << 62


def _check_key(key: KeyRow | None, key_id: str, user_id: str, amount: int, category: str, now_us: int) -> None:
    """New spending through a key: it must be live, on this wallet, and allow it."""
    if key is None or key.user_id != user_id:
        raise errors.NotFound("key not found on this wallet", reason="KEY_NOT_FOUND", metadata={"key_id": key_id})
    if key.revoked_at_us:
        raise key_refused("the key was revoked", "KEY_REVOKED", key_id)
    if key.expires_at_us and key.expires_at_us <= now_us:
        raise key_refused("the key has expired", "KEY_EXPIRED", key_id)
    categories = key.categories
    if categories and category not in categories:
        raise errors.PermissionDenied(
            f"the key may not spend on {category or 'an empty category'!r}", reason="KEY_CATEGORY_NOT_ALLOWED",
            metadata={"key_id": key_id, "category": category, "allowed": ",".join(sorted(categories))},
        )
    if key.max_spend and amount > key.max_spend:
        raise errors.FailedPrecondition(
            "the amount is above the key's largest single spend", reason="KEY_SPEND_TOO_LARGE",
            metadata={"key_id": key_id, "max_spend_millicredits": key.max_spend, "requested_millicredits": amount},
        )


_CATEGORIES: dict[str, frozenset[str]] = {}


def _categories(text: str) -> frozenset[str]:
    found = _CATEGORIES.get(text)
    if found is None:
        if len(_CATEGORIES) > 10_000:
            _CATEGORIES.clear()
        found = _CATEGORIES[text] = frozenset(json.loads(text or "[]"))
    return found


def _crossings(tx: LedgerTx, user_id: str, key: KeyRow, budget: BudgetLimit, before: int, after: int) -> None:
    for kind in crossed(budget, before, after):
        if kind == "budget_warning":
            _event(tx, user_id, key.id, kind, f"Key {key.label!r}: {WARN_PERCENT} % of its {budget.window} budget is used")
        else:
            _event(tx, user_id, key.id, kind, f"Key {key.label!r}: its {budget.window} budget is used up")


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
