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

from server.keys.budgets import (
    COUNTER_COLUMNS,
    WARN_PERCENT,
    budget_exceeded,
    counters_of,
    crossed,
    over_budget,
    parsed_budgets,
    rolled,
    used_after,
    window_uses,
)
from server.keys.models import BudgetLimit, Window
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
        c = counters_of(row)
        # The same per-window rule and refusal as a key's (server/keys/budgets.py).
        now_used = window_uses(c, at_us)
        if limited:
            hit = over_budget(budgets, now_used, delta)
            if hit is not None:
                b, before = hit
                tx.batch_set(REFUSED).add((wallet_owner, member, str(b.window), b.limit, before))
                raise budget_exceeded("member", b, before, delta, at_us, {"org_id": wallet_owner, "member": member})
        new, began = used_after(c, now_used, delta, at_us)
        for w, used_before in began:
            _window_began(tx, row, w, used_before, budgets)
        repo.update_member(tx, row, **dict(zip(COUNTER_COLUMNS, new, strict=True)))
        if delta > 0:
            for b in budgets:
                before = now_used[b.window] or 0
                _crossings(tx, row, b, before, before + delta)


def _event(tx: LedgerTx, row: dict[str, Any], kind: str, message: str) -> None:
    tx.notify(BalanceEvent(user_id=row["org_id"], kind=kind, message=message, member=row["user_id"]))


def _crossings(tx: LedgerTx, row: dict[str, Any], budget: BudgetLimit, before: int, after: int) -> None:
    who = row["user_id"]
    for kind in crossed(budget, before, after):
        if kind == "budget_warning":
            _event(tx, row, kind, f"Member {who!r}: {WARN_PERCENT} % of their {budget.window} budget is used")
        else:
            _event(tx, row, kind, f"Member {who!r}: their {budget.window} budget is used up")


def _window_began(
    tx: LedgerTx, row: dict[str, Any], window: Window, used_before: int, budgets: list[BudgetLimit]
) -> None:
    """The reset event, once per member and window that had use: by the boundary
    job or the member's first use after the boundary, whichever comes first
    (both under the member's row lock)."""
    if used_before > 0 and any(b.window == window for b in budgets):
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
        new, began = rolled(counters_of(row), tx.now_us)
        for w, used_before in began:
            _window_began(tx, row, w, used_before, budgets)
        if began:
            repo.update_member(tx, row, **dict(zip(COUNTER_COLUMNS, new, strict=True)))
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
