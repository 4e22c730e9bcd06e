"""Member budgets inside the ledger's transaction: the MemberGuard the writer runs.

The counterpart of the keys' SpendGuard (server/keys/budgets.py), with the
same windows, counters and BUDGET_EXCEEDED: a spend or hold on an org's
wallet by a member locks the member's row (after the wallet's lock, which
every membership change takes first), refuses a non-member, adds to the use
of every window and is refused whole past a budget. Use and refusal are
undone with the operation; the row goes out with the batch's write-back.
Its events are the keys' (budget.warning, budget.exhausted, budget.reset) on
the org's wallet, naming the member."""

from __future__ import annotations

from typing import Any

from server.keys.budgets import COUNTERS, WARN_PERCENT, BudgetExceeded, parsed_budgets, rfc3339
from server.keys.models import BudgetLimit, Window, window_bounds
from server.ledger.model import KEY_LIMITED_KINDS, BalanceEvent, Kind
from server.ledger.tx import LedgerTx, MemberGuard
from server.orgs import repository as repo
from server.platform import errors

# Refusals of a batch, kept outside its undo log (the refused operation's own
# changes are undone): each becomes one budget.exhausted event.
REFUSED = "member-budget-refused"


class MemberBudgets(MemberGuard):
    async def use(
        self, tx: LedgerTx, member: str, wallet_owner: str, delta: int, at_us: int, *, kind: Kind
    ) -> None:
        row = await repo.locked_member(tx, wallet_owner, member)
        limited = kind in KEY_LIMITED_KINDS
        if limited and (row is None or row["removed_at_us"]):
            # Removed after the call was admitted: refused under the wallet's lock.
            raise errors.PermissionDenied(
                "the caller is not a member of this org", reason="NOT_ORG_MEMBER", metadata={"org_id": wallet_owner}
            )
        if row is None:
            return
        budgets = parsed_budgets(row["budgets"])
        # Each window's use holding `at_us` (None: a window that has ended since,
        # where a give-back changes no current counter), as for keys.
        used: dict[Window, int | None] = {Window.LIFETIME: row["lifetime_used"]}
        starts: dict[Window, int] = {}
        for w, (start_col, used_col) in COUNTERS.items():
            start = starts[w] = window_bounds(w, at_us)[0]
            used[w] = row[used_col] if row[start_col] == start else 0 if row[start_col] < start else None
        if limited:
            for b in budgets:
                now_used = used[b.window] or 0
                if now_used + delta > b.limit:
                    tx.batch_set(REFUSED).add((wallet_owner, member, str(b.window), b.limit, now_used))
                    meta: dict[str, object] = {
                        "org_id": wallet_owner, "member": member, "window": str(b.window),
                        "limit_millicredits": b.limit, "used_millicredits": now_used,
                        "requested_millicredits": delta, "remaining_millicredits": max(b.limit - now_used, 0),
                    }
                    if b.window in COUNTERS:
                        meta["resets_at"] = rfc3339(window_bounds(b.window, at_us)[1])
                    raise BudgetExceeded(f"the member's {b.window} budget would be exceeded", metadata=meta)
        values: dict[str, int] = {"lifetime_used": row["lifetime_used"] + delta}
        for w, (start_col, used_col) in COUNTERS.items():
            before = used[w]
            if before is None:
                continue
            if row[start_col] != starts[w]:
                _window_began(tx, row, w, budgets)
            values[start_col] = starts[w]
            values[used_col] = before + delta
        repo.update_member(tx, row, **values)
        if delta > 0:
            for b in budgets:
                before = used[b.window] or 0
                _crossings(tx, row, b, before, before + delta)


def _event(tx: LedgerTx, row: dict[str, Any], kind: str, message: str) -> None:
    tx.notify(BalanceEvent(user_id=row["org_id"], kind=kind, message=message, member=row["user_id"]))


def _crossings(tx: LedgerTx, row: dict[str, Any], budget: BudgetLimit, before: int, after: int) -> None:
    warn = budget.limit * WARN_PERCENT // 100
    who = row["user_id"]
    if before < warn <= after < budget.limit:
        _event(tx, row, "budget_warning", f"Member {who!r}: {WARN_PERCENT} % of their {budget.window} budget is used")
    if before < budget.limit <= after:
        _event(tx, row, "budget_exhausted", f"Member {who!r}: their {budget.window} budget is used up")


def _window_began(tx: LedgerTx, row: dict[str, Any], window: Window, budgets: list[BudgetLimit]) -> None:
    """The reset event, once per member and window that had use: by the boundary
    job or the member's first use after the boundary, whichever comes first
    (both under the member's row lock)."""
    if row[COUNTERS[window][1]] > 0 and any(b.window == window for b in budgets):
        _event(tx, row, "budget_reset", f"Member {row['user_id']!r}: a new {window} budget window began")


async def roll_windows(tx: LedgerTx, members: list[tuple[str, str]]) -> int:
    """The boundary job's turn, as for keys: move the counters of ended windows
    to the current ones (0 used) and announce each reset; members already moved
    change nothing, so a repeat sends no event."""
    moved = 0
    for org_id, user_id in sorted(members):
        row = await repo.locked_member(tx, org_id, user_id)
        if row is None:
            continue
        budgets = parsed_budgets(row["budgets"])
        values: dict[str, int] = {}
        for w, (start_col, used_col) in COUNTERS.items():
            start = window_bounds(w, tx.now_us)[0]
            if row[start_col] < start:
                _window_began(tx, row, w, budgets)
                values[start_col], values[used_col] = start, 0
        if values:
            repo.update_member(tx, row, **values)
            moved += 1
    return moved


async def refused_events(tx: LedgerTx, ops: list[Any]) -> None:
    """A ledger extension: one budget.exhausted event per member and window refused in the batch."""
    refused = tx.batch_set(REFUSED)
    seen: set[tuple[str, str, str]] = set()
    for org_id, member, window, limit, used in sorted(refused):
        if (org_id, member, window) in seen:
            continue
        seen.add((org_id, member, window))
        tx.notify(BalanceEvent(
            user_id=org_id, kind="budget_exhausted", member=member,
            message=f"A spend by member {member!r} was refused: their {window} budget ({used} of {limit} millicredits used)",
        ))
