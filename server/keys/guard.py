"""The per-spend part of the keys' budget guard, compiled with the ledger core
(server/_core.py): a batch's keys as read, each spend's common case (a live
key of its wallet, far from its budgets' warnings and limits), and the
counters to write back. Interpreted, this was about a third of what a key
added to a batched spend (callgrind, SQLite, 1,000 keys); the rest of the
guard (refusals, budget events, window resets) is server/keys/budgets.py's,
which subclasses KeyGuard."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

from mypy_extensions import mypyc_attr

from server.keys.models import BudgetLimit, Window, budgets_of, window_bounds
from server.ledger.model import KEY_LIMITED_KINDS, Kind
from server.ledger.tx import LedgerTx, SpendGuard
from server.platform import errors

# The batch's keys: id -> KeyRow, or None for an id with no key (read once).
KEYS: Final = "keys-rows"
# The batch's counters: id -> counters (Counters in budgets.py), set through the undo log.
USED: Final = "keys-used"
WARN_PERCENT: Final = 80
# A key's use counters, in the row's order: the start of the hour, day and
# month each counter is for (0: never used) with its use, then the lifetime use.
HOUR_START: Final = 0
HOUR_USED: Final = 1
DAY_START: Final = 2
DAY_USED: Final = 3
MONTH_START: Final = 4
MONTH_USED: Final = 5
LIFETIME_USED: Final = 6
_NO_BUDGET: Final = 1 << 62
# The counters' positions of the windows that reset.
COUNTER_AT: Final = {
    Window.HOUR: (HOUR_START, HOUR_USED),
    Window.DAY: (DAY_START, DAY_USED),
    Window.MONTH: (MONTH_START, MONTH_USED),
}


class KeyRow:
    """What a batch checks of one key, as read with its counters."""

    def __init__(
        self, key_id: str, user_id: str, label: str | None, revoked_at_us: int, expires_at_us: int, max_spend: int,
        categories: str, budgets: str, loaded: tuple[int, ...], resets_at_us: int,
    ) -> None:
        self.id = key_id
        self.user_id = user_id
        self.label = label  # None: not read yet (read_plain_rows), needed only for budget events
        self.revoked_at_us = revoked_at_us
        self.expires_at_us = expires_at_us
        self.max_spend = max_spend
        self.categories: frozenset[str] = _categories(categories)
        plan = _plan(budgets)
        self.budgets: list[BudgetLimit] = plan[0]
        self.plan: list[tuple[BudgetLimit, int, int]] = plan[1]
        self.floor: int = plan[2]
        # Counters are plain tuples (boxed: `room_of` is compared by identity).
        self.loaded = loaded
        self.resets_at_us = resets_at_us
        # Its next reset is the end of its counters' hour (read_plain_rows).
        self.hour_reset = False
        # Live, any category, any amount: only the wallet and the expiry to check per spend.
        self.unlimited: bool = not revoked_at_us and not self.categories and not max_spend
        # At least how much more the counters `room_of` may take before any budget's
        # warning or limit (the batch's counters move through the undo log: the
        # room is only trusted for the very tuple it was worked out for).
        self.room_of: tuple[int, ...] | None = None
        self.room = 0

    def plain_ok(self, user_id: str, now_us: int) -> bool:
        """The common case, where `check` has nothing to refuse whatever the
        amount and category: a live key of this wallet, with no category or
        amount limit, not expired."""
        return self.unlimited and self.user_id == user_id and not (self.expires_at_us and self.expires_at_us <= now_us)

    def check(self, key_id: str, user_id: str, amount: int, category: str, now_us: int) -> None:
        """New spending through the key: it must be live, on this wallet, and allow it."""
        if self.plain_ok(user_id, now_us):
            return
        if self.user_id != user_id:
            raise key_not_found(key_id)
        expired = self.expires_at_us and self.expires_at_us <= now_us
        if self.revoked_at_us:
            raise key_refused("the key was revoked", "KEY_REVOKED", key_id)
        if expired:
            raise key_refused("the key has expired", "KEY_EXPIRED", key_id)
        categories = self.categories
        if categories and category not in categories:
            raise errors.PermissionDenied(
                f"the key may not spend on {category or 'an empty category'!r}", reason="KEY_CATEGORY_NOT_ALLOWED",
                metadata={"key_id": key_id, "category": category, "allowed": ",".join(sorted(categories))},
            )
        if self.max_spend and amount > self.max_spend:
            raise errors.FailedPrecondition(
                "the amount is above the key's largest single spend", reason="KEY_SPEND_TOO_LARGE",
                metadata={"key_id": key_id, "max_spend_millicredits": self.max_spend, "requested_millicredits": amount},
            )


def key_refused(message: str, reason: str, key_id: str) -> errors.DomainError:
    return errors.FailedPrecondition(message, reason=reason, metadata={"key_id": key_id})


def key_not_found(key_id: str) -> errors.DomainError:
    return errors.NotFound("key not found on this wallet", reason="KEY_NOT_FOUND", metadata={"key_id": key_id})


def read_rows(rows: Sequence[Sequence[Any]], keys: dict[str, KeyRow | None], used: dict[str, tuple[int, ...]]) -> None:
    """The guard's read of a batch's keys (repository.guard_rows's rows, each
    the values of GUARD_COLUMNS in order, as the driver gives it: a dict per
    row cost about as much as the rest of the key's read) into its dicts."""
    for row in rows:
        key = KeyRow(
            row[0], row[1], row[2], row[3] or 0, row[4] or 0, row[5] or 0, row[6], row[7],
            (row[8], row[9], row[10], row[11], row[12], row[13], row[14]), row[15],
        )
        keys[key.id] = key
        used[key.id] = key.loaded  # a read, not a change: nothing to undo


def read_plain_rows(
    rows: list[tuple[Any, ...]], keys: dict[str, KeyRow | None], used: dict[str, tuple[int, ...]],
    starts: tuple[int, int, int], resets_at_us: int,
) -> list[str]:
    """read_rows of repository.plain_rows's rows (PLAIN_COLUMNS, each a tuple
    as sqlite3 gives it): a key with no limit but its budgets and expiry,
    whose counters are for the windows of `starts` and next reset at
    `resets_at_us`, comes without the columns that say so, nor its label (an
    event's, read when one is due: KeyBudgets.use); the ids of the others
    (their `expires` is -1), to read whole."""
    whole: list[str] = []
    h, d, m = starts
    for row in rows:
        expires: int = row[3]
        if expires < 0:
            whole.append(row[0])
            continue
        key = KeyRow(row[0], row[1], None, 0, expires, 0, "", row[2], (h, row[4], d, row[5], m, row[6], row[7]),
                     resets_at_us)
        key.hour_reset = True
        keys[key.id] = key
        used[key.id] = key.loaded
    return whole


def counter_rows(
    used: dict[str, tuple[int, ...]], keys: dict[str, KeyRow | None]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The counters that changed in the batch, in id order: each row as the
    values of COUNTER_COLUMNS then the id; `moved` also their next reset (an
    indexed column: written only when it moves) before the id."""
    changed: list[tuple[Any, ...]] = []
    moved: list[tuple[Any, ...]] = []
    for key_id in sorted(used):
        c = used[key_id]
        key = keys[key_id]
        if key is not None and c != key.loaded:
            _rewrite(key_id, c, next_reset_us(c), key, changed, moved)
    return changed, moved


def _rewrite(
    key_id: str, c: tuple[int, ...], resets: int, key: KeyRow, changed: list[tuple[Any, ...]],
    moved: list[tuple[Any, ...]],
) -> None:
    """Counters written whole: in `moved` with their next reset when it moved, else in `changed`."""
    if resets != key.resets_at_us:
        moved.append((c[0], c[1], c[2], c[3], c[4], c[5], c[6], resets, key_id))
    else:
        changed.append((c[0], c[1], c[2], c[3], c[4], c[5], c[6], key_id))


def counter_bumps(
    used: dict[str, tuple[int, ...]], keys: dict[str, KeyRow | None]
) -> tuple[dict[str, int], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """counter_rows, but the keys whose counters stayed in their windows and
    only grew (or shrank) by one amount in each (the common case) as that
    amount by id: written as additions to the row as read (SQLite: the batch
    holds the write lock since its read, so the row is still that)."""
    bumps: dict[str, int] = {}
    changed: list[tuple[Any, ...]] = []
    moved: list[tuple[Any, ...]] = []
    for key_id, c in used.items():  # in any order: SQLite's batch holds the write lock
        key = keys[key_id]
        if key is None:
            continue
        was = key.loaded
        if c is was or c == was:
            continue
        d = c[LIFETIME_USED] - was[LIFETIME_USED]
        # The same windows and one amount in each: a bump, unless the next reset moves.
        if (c[HOUR_START] == was[HOUR_START] and c[DAY_START] == was[DAY_START] and c[MONTH_START] == was[MONTH_START]
                and c[HOUR_USED] - was[HOUR_USED] == d and c[DAY_USED] - was[DAY_USED] == d
                and c[MONTH_USED] - was[MONTH_USED] == d):
            # Its next reset the end of its counters' hour, in which it still has use: it stays.
            if (key.hour_reset and c[HOUR_USED] > 0) or next_reset_us(c) == key.resets_at_us:
                bumps[key_id] = d
                continue
        _rewrite(key_id, c, next_reset_us(c), key, changed, moved)
    return bumps, changed, moved


def json_texts(values: list[str]) -> str:
    """Texts as a JSON array: joined as they are when that is valid JSON (no
    quote, backslash or control character: a key id always), since json.dumps
    escapes character by character."""
    if not _plain(values):
        return json.dumps(values)
    return '["' + '","'.join(values) + '"]' if values else "[]"


def json_amounts(amounts: dict[str, int]) -> str:
    """Integers by text as a JSON object (joined as json_texts' are)."""
    if not _plain(amounts):
        return json.dumps(amounts)
    return "{" + ",".join([f'"{k}":{v}' for k, v in amounts.items()]) + "}"


# Texts found to be their own JSON string's content: a key id is checked
# once, not character by character in every batch (a set's lookup uses the
# text's hash, which the batch's dicts have made already).
_PLAIN: Final[set[str]] = set()


def _plain(values: Iterable[str]) -> bool:
    """Whether each text is its own JSON string's content (no quote, backslash
    or control character: the separators' quotes are the joined text's only ones)."""
    known = _PLAIN
    for v in values:
        if v not in known:
            if '"' in v or "\\" in v or not v.isprintable():
                return False
            if len(known) > 100_000:
                known.clear()
            known.add(v)
    return True


@mypyc_attr(allow_interpreted_subclasses=True)  # budgets.py's KeyBudgets
class KeyGuard(SpendGuard):
    # The windows' starts of the last instant a use fell in (a batch's
    # operations share one): not a dict's lookup by a boxed integer per use.
    last_at: int = -1
    last_starts: tuple[int, int, int] = (0, 0, 0)

    def use_loaded(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, kind: Kind, category: str
    ) -> bool:
        keys: dict[str, KeyRow | None] = tx.batch_dict(KEYS)
        if key_id not in keys:
            return False
        key = keys[key_id]
        limited = kind in KEY_LIMITED_KINDS
        if key is None:
            if limited:
                raise key_not_found(key_id)
            return True
        # `check` only when its common case (a live key of this wallet, any
        # category and amount, not expired) does not hold.
        if limited and not key.plain_ok(user_id, tx.now_us):
            key.check(key_id, user_id, delta, category, tx.now_us)
        used: dict[str, tuple[int, ...]] = tx.batch_dict(USED)
        c = used[key_id]
        if at_us == self.last_at:
            starts = self.last_starts
        else:
            starts = self.last_starts = starts_of(at_us)
            self.last_at = at_us
        if c[HOUR_START] == starts[0] and c[DAY_START] == starts[1] and c[MONTH_START] == starts[2]:
            # The common case (every use after the key's first in these windows):
            # each counter is for the windows of `at_us`, so no window to move.
            # A lower bound first (the room left from this batch's last use, or
            # the smallest warning less the largest counter): a key far below
            # its budgets needs no more; the exact room only when it is short.
            if key.room_of is c:
                room = key.room
            else:  # the largest counter, without a call of max()
                most = c[HOUR_USED] if c[HOUR_USED] > c[DAY_USED] else c[DAY_USED]
                if c[MONTH_USED] > most:
                    most = c[MONTH_USED]
                if c[LIFETIME_USED] > most:
                    most = c[LIFETIME_USED]
                room = key.floor - most
            if not 0 < delta < room:
                room = room_left(key.plan, c)
            if 0 < delta < room:
                # Short of every budget's warning and limit: nothing to refuse or announce.
                new = (c[0], c[1] + delta, c[2], c[3] + delta, c[4], c[5] + delta, c[6] + delta)
                tx.batch_put(USED, key_id, new)
                key.room_of, key.room = new, room - delta
                return True
        if key.label is None:
            return False  # an event may be due: `use` reads the label first
        self.use_rest(tx, key, key_id, user_id, delta, at_us, limited, c)
        return True

    def use_rest(
        self, tx: LedgerTx, key: KeyRow, key_id: str, user_id: str, delta: int, at_us: int, limited: bool,
        c: tuple[int, ...],
    ) -> None:
        """A use that reaches a budget's warning or limit, or moves a window (budgets.py)."""


def room_left(plan: list[tuple[BudgetLimit, int, int]], c: tuple[int, ...]) -> int:
    """The smallest use that reaches a budget's warning or limit from these
    counters (all in the windows of the batch's instant); 0 at a limit."""
    room = _NO_BUDGET
    for b, i, warn in plan:
        was = c[i]
        left = warn - was if was < warn else b.limit - was
        if left < room:
            room = max(left, 0)
    return room


V = TypeVar("V")


def _kept(cache: dict[Any, V], key: Any, value: V, most: int) -> V:
    """`value`, kept in `cache` under `key`; a cache past `most` entries is
    emptied first (values a caller makes up cannot grow it without end)."""
    if len(cache) > most:
        cache.clear()
    cache[key] = value
    return value


_BOUNDS: Final[dict[int, dict[Window, tuple[int, int]]]] = {}
_STARTS: Final[dict[int, tuple[int, int, int]]] = {}
_RESETS: Final[dict[tuple[int, int, int], int]] = {}
_BUDGETS: Final[dict[str, list[BudgetLimit]]] = {}
# Each budgets column's budgets, plan (see `_plan`) and smallest warning
# threshold (_NO_BUDGET without budgets): less the largest of a key's
# counters, that threshold is no more than `room_left` of them.
_PLANS: Final[dict[str, tuple[list[BudgetLimit], list[tuple[BudgetLimit, int, int]], int]]] = {}
_CATEGORIES: Final[dict[str, frozenset[str]]] = {}


def bounds_of(at_us: int) -> dict[Window, tuple[int, int]]:
    """The windows holding an instant; a batch's operations share one instant."""
    found = _BOUNDS.get(at_us)
    if found is None:
        found = _kept(_BOUNDS, at_us, {w: window_bounds(w, at_us) for w in COUNTER_AT}, 64)
    return found


def starts_of(at_us: int) -> tuple[int, int, int]:
    """The starts of the hour, day and month holding an instant (the key row's order)."""
    found = _STARTS.get(at_us)
    if found is None:
        b = bounds_of(at_us)
        found = _kept(_STARTS, at_us, (b[Window.HOUR][0], b[Window.DAY][0], b[Window.MONTH][0]), 64)
    return found


def next_reset_us(c: tuple[int, ...]) -> int:
    """When the boundary job next has work for these counters (the key's
    resets_at_us): the end of the earliest window with use recorded in it, 0: none."""
    key = (c[HOUR_START] if c[HOUR_USED] > 0 else 0, c[DAY_START] if c[DAY_USED] > 0 else 0,
           c[MONTH_START] if c[MONTH_USED] > 0 else 0)
    found = _RESETS.get(key)
    if found is None:
        ends = [window_bounds(w, start)[1] for w, start in zip(COUNTER_AT, key, strict=True) if start > 0]
        found = _kept(_RESETS, key, min(ends) if ends else 0, 64)
    return found


def parsed_budgets(text: str) -> list[BudgetLimit]:
    """A key's budgets column, parsed once per distinct value."""
    found = _BUDGETS.get(text)
    if found is None:
        found = _kept(_BUDGETS, text, budgets_of({"budgets": text}), 10_000)
    return found


def _plan(text: str) -> tuple[list[BudgetLimit], list[tuple[BudgetLimit, int, int]], int]:
    """A budgets column's budgets; each with the position of its counter and
    its warning threshold; and the smallest threshold: once per distinct value."""
    found = _PLANS.get(text)
    if found is None:
        budgets = parsed_budgets(text)
        plan = [
            (b, COUNTER_AT[b.window][1] if b.window in COUNTER_AT else LIFETIME_USED, b.limit * WARN_PERCENT // 100)
            for b in budgets
        ]
        found = _kept(_PLANS, text, (budgets, plan, min((warn for _b, _i, warn in plan), default=_NO_BUDGET)), 10_000)
    return found


def _categories(text: str) -> frozenset[str]:
    found = _CATEGORIES.get(text)
    if found is None:
        found = _kept(_CATEGORIES, text, frozenset(json.loads(text or "[]")), 10_000)
    return found
