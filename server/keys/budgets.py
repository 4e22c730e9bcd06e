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

from typing import Any

from server.keys import repository as repo
from server.keys.guard import (
    COUNTER_AT,
    DAY_START,
    DAY_USED,
    HOUR_START,
    HOUR_USED,
    KEYS,
    LIFETIME_USED,
    MONTH_START,
    MONTH_USED,
    USED,
    WARN_PERCENT,
    KeyGuard,
    KeyRow,
    counter_bumps,
    counter_rows,
    next_reset_us,
    parsed_budgets,
    read_plain_rows,
    read_rows,
    starts_of,
)
from server.keys.guard import bounds_of as _bounds
from server.keys.models import BudgetLimit, Window
from server.ledger.model import BalanceEvent, Kind
from server.ledger.tx import LedgerTx
from server.platform import errors
from server.platform.clock import from_us

# Refusals of a batch, kept outside its undo log (the refused operation's own
# changes are undone): each becomes one BUDGET_EXHAUSTED event on the watch.
REFUSED = "keys-budget-refused"
# At most this many keys a batch names are read with the wallets' users
# (PostgreSQL). Each is decoded there from two whole rows as jsonb, about 80k
# instructions a key more than the narrow locked read (callgrind, 1,000 keys,
# 32 single spends at once: 623k against 540k per spend), which costs one
# round trip per batch: worth it for a batch of a few keys only.
PREFETCH_MAX = 4
# The use counters' columns, on a key's usage row and on an org member's.
COUNTER_COLUMNS = repo.COUNTER_COLUMNS

# A key's use counters, in the row's order: the start of the hour, day and
# month each counter is for (0: never used) with its use, then the lifetime use.
Counters = tuple[int, ...]  # of 7 (boxed, as server/keys/guard.py has them)
__all__ = ["DAY_USED", "HOUR_USED", "MONTH_USED", "WARN_PERCENT", "next_reset_us", "parsed_budgets"]


def rfc3339(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(errors.FailedPrecondition):
    reason = "BUDGET_EXCEEDED"


async def load_keys(tx: LedgerTx, key_ids: set[str]) -> dict[str, KeyRow | None]:
    """The batch's keys (those it has not read yet are read now, locked)."""
    keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
    missing = [k for k in key_ids if k not in keys]
    if missing:
        used = tx.batch_dict(USED)
        whole = missing
        if repo.plain_rows_apply(tx, len(missing)):
            # Most keys in the narrow row; the others read whole after.
            starts = starts_of(tx.now_us)
            resets = _bounds(tx.now_us)[Window.HOUR][1]  # a key used in this hour: its next reset
            whole = read_plain_rows(await repo.plain_rows(tx, missing, starts, resets), keys, used, starts, resets)
        if whole:
            read_rows(await repo.guard_rows(tx, whole), keys, used)
        for k in missing:
            keys.setdefault(k, None)
    return keys


class KeyBudgets(KeyGuard):
    def prefetch(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> list[repo.LoadGroup]:
        # PostgreSQL: the keys the operations name come in the round trip of the
        # wallets' users, after the wallets' locks and without a lock of their
        # own: every change to a key's row (a batch's use, UpdateKey, RevokeKey,
        # the reset job) is made under its wallet's lock, and a key of another
        # wallet is only read, to be refused. SQLite's batch holds the write lock.
        # A batch of more keys reads them in the narrow statement of `load` instead:
        # the round trip saved is one per batch, the whole rows' decoding one per key.
        ids = {k for k, _ in wanted}
        if tx.is_sqlite or len(ids) > PREFETCH_MAX:
            return []
        return repo.prefetch_groups(sorted(ids))

    def prefetched(self, tx: LedgerTx, found: list[list[Any]]) -> None:
        # Each row the values of GUARD_COLUMNS (repo.prefetch_groups).
        read_rows(found[0], tx.batch_dict(KEYS), tx.batch_dict(USED))
        # An id with no key (or no usage row) is not marked: the load after the
        # holds reads it again (locked), as any key it has not seen.

    async def load(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> None:
        await load_keys(tx, {k for k, _ in wanted})

    async def write(self, tx: LedgerTx) -> None:
        used: dict[str, Counters] = tx.batch_dict(USED)
        if not used:
            return
        if repo.bumps_in_one(tx, len(used)):
            bumps, changed, moved = counter_bumps(used, tx.batch_dict(KEYS))
            repo.write_bumps(tx, bumps)
            await repo.write_counters(tx, changed, moved)
            return
        await repo.write_counters(tx, *counter_rows(used, tx.batch_dict(KEYS)))

    async def use(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, *, kind: Kind, category: str
    ) -> None:
        # An operation that did not declare its key (budget_keys): read it now;
        # or one whose use may announce a budget event: its key's label first.
        key = (await load_keys(tx, {key_id}))[key_id]
        if key is not None and key.label is None:
            key.label = await repo.key_label(tx, key_id)
        self.use_loaded(tx, key_id, user_id, delta, at_us, kind, category)

    def use_rest(
        self, tx: LedgerTx, key: KeyRow, key_id: str, user_id: str, delta: int, at_us: int, limited: bool,
        c: tuple[int, ...],
    ) -> None:
        # KeyGuard.use_loaded's other cases: a budget's warning or limit within
        # reach, or a counter of an earlier window.
        starts = starts_of(at_us)
        if c[HOUR_START] == starts[0] and c[DAY_START] == starts[1] and c[MONTH_START] == starts[2]:
            bumped = (c[0], c[1] + delta, c[2], c[3] + delta, c[4], c[5] + delta, c[6] + delta)
            plan = key.plan
            if limited:
                for b, i, _warn in plan:
                    if c[i] + delta > b.limit:
                        _refuse(tx, user_id, key_id, b, c[i], delta, at_us)
            tx.batch_put(USED, key_id, bumped)
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
    for key in keys.values():
        if key is not None and key.label is None:  # its events name it
            key.label = await repo.key_label(tx, key.id)
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


# The counters of the windows that reset, on the key's usage row (column names),
# and in the batch's Counters (positions).
COUNTERS = {
    Window.HOUR: ("hour_start_us", "hour_used"),
    Window.DAY: ("day_start_us", "day_used"),
    Window.MONTH: ("month_start_us", "month_used"),
}
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
