"""Member budgets inside the ledger's transaction: the MemberGuard the writer runs.

The counterpart of the keys' SpendGuard (server/keys/budgets.py), with the
same windows, counters and BUDGET_EXCEEDED: a spend or hold on an org's
wallet by a member locks the member's row (after the wallet's lock, which
every membership change takes first), refuses a non-member, adds to the use
of every window and is refused whole past a budget. Use and refusal are
undone with the operation; the row goes out with the batch's write-back."""

from __future__ import annotations

from server.keys.budgets import COUNTERS, BudgetExceeded, parsed_budgets, rfc3339
from server.keys.models import Window, window_bounds
from server.ledger.model import KEY_LIMITED_KINDS, Kind
from server.ledger.tx import LedgerTx, MemberGuard
from server.orgs import repository as repo
from server.platform import errors


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
            values[start_col] = starts[w]
            values[used_col] = before + delta
        repo.update_member(tx, row, **values)
