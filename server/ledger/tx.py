"""LedgerTx: one group-commit transaction's view of the ledger.

Rows the batch touches are loaded once (accounts locked in sorted order on
PostgreSQL), every operation is applied in memory with an undo log so that a
refused operation leaves no trace, and the whole batch is written back with a
handful of set-based statements before a single commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mypy_extensions import mypyc_attr
from sqlalchemy import Table, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from server.db.batchsql import BatchSql, Row
from server.db.schema import (
    LIVE_RESPONSE,
    accounts,
    holds,
    idempotency,
    lots,
    transfer_usage,
    transfers,
    users,
)
from server.ledger import keys
from server.ledger.model import (
    EARNED_KINDS,
    INT64_MAX,
    KEY_USING_KINDS,
    SPEND_ORDER,
    SPENT_KINDS,
    SYSTEM_ACCOUNTS,
    SYSTEM_ADJUSTMENTS,
    SYSTEM_ALLOWANCES,
    BalanceEvent,
    Kind,
    LotKind,
    TransferView,
    wallet_id,
)
from server.ledger.staging import StagedRows
from server.platform import errors
from server.platform.clock import month_bounds
from server.platform.ids import is_org_id


@mypyc_attr(allow_interpreted_subclasses=True)  # the tier domain's TierRules
class TierPolicy:
    """What the ledger needs to know about tiers: the monthly allowance a new
    period grants. The tier domain supplies the real catalogue."""

    def __init__(self, monthly: dict[str, int | None]) -> None:
        self.monthly = monthly  # millicredits; None: granted by invoices, not the calendar

    def calendar_allowance(self, user: Row) -> int | None:
        if user["tier"] == "enterprise" and user["monthly_credits"] is not None:
            return int(user["monthly_credits"])
        if user["tier"] == "free" and is_org_id(user["user_id"]):
            return 0  # the free credits are a person's: an org per month would mint more
        return self.monthly.get(user["tier"])

    async def period_ended(self, tx: LedgerTx, user: Row) -> bool:
        """Called when a user's period is over; True: open the next calendar period."""
        return True


@mypyc_attr(allow_interpreted_subclasses=True)  # the keys domain's KeyBudgets
class SpendGuard:
    """What the ledger needs from scoped keys: their budgets, used and given
    back inside the batch's transaction, under its locks (the keys domain
    supplies the real one, server/keys/budgets.py). Without it, a transfer
    recorded with a key is refused."""

    def prefetch(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> list[tuple[Any, str, list[Any]]]:
        """Rows of the keys known before the batch's load (its operations name
        them) to read with the wallets' users, in their round trip on
        PostgreSQL (LedgerTx.load: a table's or a batchsql.Joined group);
        `prefetched` gets them."""
        return []

    def prefetched(self, tx: LedgerTx, found: list[list[Any]]) -> None:
        """The rows `prefetch` asked for, one list per group."""

    async def load(self, tx: LedgerTx, wanted: list[tuple[str, int]]) -> None:
        """Read (and lock) the keys and usage rows of a batch's operations at once."""

    async def use(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, *, kind: Kind, category: str
    ) -> None:
        """Add `delta` (negative: give back) to the key's use in the windows of
        `at_us`; refuse new spending past a budget (BUDGET_EXCEEDED)."""
        raise errors.NotFound("key not found", reason="KEY_NOT_FOUND")

    def use_loaded(
        self, tx: LedgerTx, key_id: str, user_id: str, delta: int, at_us: int, kind: Kind, category: str
    ) -> bool:
        """`use` without a coroutine when the batch has read the key already;
        False (nothing done): it has not, call `use`."""
        return False

    async def write(self, tx: LedgerTx) -> None:
        """Write back what the batch used, with its other rows (after every
        operation and extension, before the batch's write-back)."""


# The transfers' column a batch without org members leaves out of its insert.
NO_MEMBER = ("member_id",)


@mypyc_attr(allow_interpreted_subclasses=True)  # the orgs domain's MemberBudgets
class MemberGuard:
    """What the ledger needs from organisations: the budgets of the member a
    transfer on an org's wallet is spent by, used and given back inside the
    batch's transaction (the orgs domain supplies the real one,
    server/orgs/budgets.py). Without it, a transfer recorded with a member is refused."""

    async def use(
        self, tx: LedgerTx, member: str, wallet_owner: str, delta: int, at_us: int, *, kind: Kind
    ) -> None:
        """Add `delta` (negative: give back) to the member's use in the windows
        of `at_us`; refuse new spending by a non-member or past a budget."""
        raise errors.NotFound("member not found", reason="MEMBER_NOT_FOUND")


class LedgerTx:
    def __init__(
        self, conn: AsyncConnection, sql: BatchSql, *, now_us: int, is_sqlite: bool, tiers: TierPolicy,
        guard: SpendGuard | None = None, member_guard: MemberGuard | None = None,
        wallet_tables: Sequence[Table] = (),
    ) -> None:
        self._conn = conn  # the ledger's own: other domains read with fetch() and write through rows()
        # Extensions' tables keyed by user_id that they read_in every batch:
        # loaded with the wallets' users, in their round trip on PostgreSQL.
        self.wallet_tables = wallet_tables
        self.sql = sql
        self.now_us = now_us
        self.is_sqlite = is_sqlite
        self.tiers = tiers
        self.guard = guard or SpendGuard()
        self.member_guard = member_guard or MemberGuard()
        self.with_members = False  # a transfer of this batch records an org member
        self.accounts: dict[str, Row] = {}
        self.users: dict[str, Row] = {}
        self.lots: dict[str, list[Row]] = {}
        self.holds: dict[str, Row] = {}
        self.stored: dict[str, tuple[str, bytes]] = {}  # idempotency key -> (fingerprint, response)
        self.existing_keys: set[str] = set()  # transfer keys known to be committed
        self.new_transfers: list[Row] = []
        # Priced transfers' usage rows (whole rows): a plain list written with the
        # transfers, not a StagedRows (its cache and per-row completion per item).
        self.new_usage: list[tuple[int, Row]] = []
        self.new_idempotency: list[Row] = []
        self.events: list[BalanceEvent] = []
        self._staged: dict[str, StagedRows] = {}
        self._sets: dict[str, set[Any]] = {}
        self._dicts: dict[str, dict[Any, Any]] = {}
        self._lists: dict[str, list[Any]] = {}
        self._read: dict[str, dict[Any, Row | None]] = {}  # read_in's rows by table and key
        # Each account's balance as this batch loaded it (before any operation):
        # what an extension compares the final balance with (alert crossings).
        self.loaded_balances: dict[str, int] = {}
        # Run by the writer once the batch has committed (never for a failed attempt).
        self.after_commit: list[Callable[[], None]] = []
        self._new_accounts: list[str] = []
        self._new_users: list[str] = []
        self._new_lots: list[Row] = []
        self._new_holds: list[Row] = []
        self._dirty_accounts: set[str] = set()
        self._dirty_lots: set[int] = set()
        self._dirty_holds: set[str] = set()
        self._dirty_users: set[str] = set()
        self._batch_keys: set[str] = set()
        # Undo entries are (setitem|pop|discard|remove, target, key, value) tuples:
        # cheaper than a closure each, and an operation makes a few dozen.
        self._undo: list[tuple[Any, ...]] = []
        self._ids: list[int] = []
        self._next_id = 0

    # ---- loading -------------------------------------------------------------

    async def load(
        self,
        account_ids: Iterable[str],
        hold_ids: Iterable[str] = (),
        request_keys: Iterable[str] = (),
        transfer_keys: Iterable[str] = (),
        extra: Sequence[tuple[Any, str, list[Any]]] = (),
    ) -> list[list[Any]]:
        """Lock and load the accounts, then (in one round trip on PostgreSQL)
        their users and lots, the stored responses, the known transfer keys,
        the holds, and the `extra` groups, whose rows it returns."""
        hold_ids = sorted(set(hold_ids) - self.holds.keys())
        wanted = set(account_ids)
        found_holds: list[Row] = []
        if hold_ids:
            # First a plain read to learn the accounts; re-read under the locks below.
            found_holds = await self.sql.select_in(holds, "id", hold_ids)
            wanted.update(r["account_id"] for r in found_holds)
        keys = sorted(set(request_keys) - self.stored.keys())
        tkeys = sorted(set(transfer_keys) - self.existing_keys)
        relock = hold_ids if not self.is_sqlite else []
        stored, existing, locked_holds, *more = await self._load_accounts(
            wanted, [(idempotency, "key", keys), (transfers, "key", tkeys), (holds, "id", relock), *extra]
        )
        for r in locked_holds if relock else found_holds:
            self.holds[r["id"]] = r
        for r in stored:
            self.stored[r["key"]] = (r["fingerprint"], bytes(r["response"]))
        self.existing_keys.update(r["key"] for r in existing)
        return more

    async def _load_accounts(
        self, ids: Iterable[str], also: list[tuple[Any, str, list[Any]]] | None = None
    ) -> list[list[Any]]:
        """Lock and load accounts, then their users and lots, plus `also`
        (rows read under the locks, in the same round trip on PostgreSQL)."""
        also = also or []
        missing = sorted(set(ids) - self.accounts.keys())
        if missing:
            # PostgreSQL: row locks in sorted order, so concurrent replicas never deadlock on wallets.
            for r in await self.sql.select_in(accounts, "id", missing, order_by="id", lock=not self.is_sqlite):
                self.accounts[r["id"]] = r
                self.loaded_balances[r["id"]] = r["balance"]
        user_ids = [self.accounts[a]["user_id"] for a in missing if a in self.accounts and self.accounts[a]["user_id"]]
        companions = [t for t in self.wallet_tables if user_ids]
        found_users, found_lots, *rest = await self.sql.select_groups([
            (users, "user_id", user_ids), (lots, "account_id", [wallet_id(u) for u in user_ids]),
            *((t, "user_id", user_ids) for t in companions), *also,
        ])
        for table, found in zip(companions, rest, strict=False):
            known = self._read.setdefault(table.name, {})
            for u in user_ids:
                known.setdefault(u, None)
            for r in found:
                known[r["user_id"]] = r
        rest = rest[len(companions):]
        for r in found_users:
            self.users[r["user_id"]] = r
        for r in found_lots:
            self.lots.setdefault(r["account_id"], []).append(r)
        for a in missing:
            if a.startswith("wallet:"):
                self.lots.setdefault(a, [])
        return rest

    # ---- undo log: a refused operation leaves no trace -----------------------

    def mark(self) -> int:
        return len(self._undo)

    def rollback_to(self, mark: int) -> None:
        undo = self._undo
        while len(undo) > mark:
            what, target, key, value = undo.pop()
            if what == "setitem":
                target[key] = value
            elif what == "pop":
                target.pop()
            elif what == "discard":
                target.discard(key)
            else:
                target.pop(key, None)

    def _set(self, row: Row, field: str, value: Any) -> None:
        old = row[field]
        row[field] = value
        self._undo.append(("setitem", row, field, old))

    def _append(self, target: list[Any], item: Any) -> None:
        target.append(item)
        self._undo.append(("pop", target, None, None))

    def _add(self, target: set[Any], item: Any) -> None:
        if item not in target:
            target.add(item)
            self._undo.append(("discard", target, item, None))

    def _put(self, target: dict[Any, Any], key: Any, value: Any) -> None:
        target[key] = value
        self._undo.append(("remove", target, key, None))

    # ---- ids -------------------------------------------------------------------

    async def _transfer_id(self) -> int:
        if self.is_sqlite:
            # BEGIN IMMEDIATE holds the write lock, so max(id) cannot move under us.
            if self._next_id == 0:
                top = await self.sql.scalar("SELECT coalesce(max(id), 0) FROM transfers", None)
                self._next_id = int(top)
            self._next_id += 1
            return self._next_id
        if not self._ids:
            q = "SELECT nextval('transfers_id_seq') FROM generate_series(1, 64)"
            self._ids = await self.sql.column(None, q)
            self._ids.reverse()
        return self._ids.pop()

    # ---- accounts and wallets --------------------------------------------------

    async def account(self, account_id: str) -> Row:
        if account_id not in self.accounts:
            await self._load_accounts([account_id])
        if account_id not in self.accounts:
            if account_id in SYSTEM_ACCOUNTS:
                self._create_account(account_id, kind="system", user_id=None)
            else:
                raise errors.NotFound("account not found", reason="ACCOUNT_NOT_FOUND")
        return self.accounts[account_id]

    def _create_account(self, account_id: str, *, kind: str, user_id: str | None) -> Row:
        row = {
            "id": account_id,
            "kind": kind,
            "user_id": user_id,
            "balance": 0,
            "pending": 0,
            "earned_total": 0,
            "spent_total": 0,
            "unlimited_overdraft": False,
            "version": 0,
            "created_at_us": self.now_us,
        }
        self._put(self.accounts, account_id, row)
        self._append(self._new_accounts, account_id)
        if kind == "wallet":
            self._put(self.lots, account_id, [])
        return row

    async def wallet(self, user_id: str) -> Row:
        """The user's wallet, created on first use with the free tier's allowance,
        and rolled over to the current period when the last one has ended."""
        wid = wallet_id(user_id)
        if wid not in self.accounts:
            await self._load_accounts([wid])
        if wid not in self.accounts:
            self._create_account(wid, kind="wallet", user_id=user_id)
            start, end = month_bounds(self.now_us)
            user = {
                "user_id": user_id,
                "tier": "free",
                "monthly_credits": None,
                "period_start_us": start,
                "period_end_us": end,
                "flagged_reason": None,
                "stripe_customer_id": None,
                "created_at_us": self.now_us,
            }
            self._put(self.users, user_id, user)
            self._append(self._new_users, user_id)
            await self._grant_allowance(user)
        else:
            await self.roll_over(user_id)
        return self.accounts[wid]

    def user(self, user_id: str) -> Row:
        return self.users[user_id]

    def loaded_wallet(self, user_id: str) -> Row:
        """The wallet row of a user this batch has loaded (`await wallet()` first); read it, never change it."""
        return self.accounts[wallet_id(user_id)]

    def set_user(self, user_id: str, **values: Any) -> None:
        row = self.users[user_id]
        for k, v in values.items():
            if row[k] != v:
                self._set(row, k, v)
        self._add(self._dirty_users, user_id)

    def set_overdraft(self, user_id: str, unlimited: bool) -> None:
        acct = self.accounts[wallet_id(user_id)]
        if acct["unlimited_overdraft"] != unlimited:
            self._set(acct, "unlimited_overdraft", unlimited)
            self._add(self._dirty_accounts, acct["id"])

    async def roll_over(self, user_id: str) -> None:
        """Expire lots whose period ended (allowance, promotional); open the next calendar period."""
        wid = wallet_id(user_id)
        for lot in list(self.lots.get(wid, ())):
            ends = lot["expires_at_us"]
            if not 0 < ends <= self.now_us or lot["remaining"] <= 0 or lot["kind"] not in _EXPIRING:
                continue
            kind = LotKind(lot["kind"])
            system, why = _EXPIRING[kind]
            # A hold released after the period's end puts allowance back into
            # the ended lot, which then expires a second time: number the keys.
            n = 1
            while not await self.key_unused(key := _expiry_key(user_id, kind, ends, n)):
                n += 1
            await self.transfer(
                wid,
                system,
                lot["remaining"],
                kind=Kind.ALLOWANCE_EXPIRY,
                key=key,
                description=why,
                lot_order=(kind,),
                lot_expiry=ends,
                allow_negative=True,
            )
        user = self.users.get(user_id)
        if user is None or user["period_end_us"] > self.now_us:
            return
        # The tier domain applies scheduled changes and late renewals here;
        # False: it moved the period itself (paid tiers renew through invoices).
        if not await self.tiers.period_ended(self, user):
            return
        if self.tiers.calendar_allowance(user) is None:
            return  # paid tiers renew through their subscription invoices
        start, end = month_bounds(self.now_us)
        self.set_user(user_id, period_start_us=start, period_end_us=end)
        await self._grant_allowance(user)

    async def _grant_allowance(self, user: Row) -> None:
        amount = self.tiers.calendar_allowance(user)
        if not amount:
            return
        await self.grant_allowance(user["user_id"], amount, user["period_start_us"], user["period_end_us"])

    async def grant_allowance(
        self, user_id: str, amount: int, period_start_us: int, period_end_us: int, *, key: str | None = None
    ) -> Row | None:
        key = key or keys.allowance(user_id, period_start_us)
        if not await self.key_unused(key):
            return None
        return await self.transfer(
            SYSTEM_ALLOWANCES,
            wallet_id(user_id),
            amount,
            kind=Kind.ALLOWANCE_GRANT,
            key=key,
            description=f"Monthly allowance ({user_id_tier(self.users.get(user_id))})",
            lot_kind=LotKind.ALLOWANCE,
            lot_expiry=period_end_us,
        )

    async def key_unused(self, key: str) -> bool:
        """True when no transfer with this key is committed or in this batch."""
        if key in self._batch_keys or key in self.existing_keys:
            return False
        found = await self.sql.scalar("SELECT id FROM transfers WHERE key = ?", "SELECT id FROM transfers WHERE key = $1", key)
        if found is not None:
            self.existing_keys.add(key)
            return False
        return True

    # ---- transfers ------------------------------------------------------------------

    async def transfer(
        self,
        debit_id: str,
        credit_id: str,
        amount: int,
        *,
        kind: Kind,
        key: str,
        description: str = "",
        category: str = "",
        ref: str = "",
        metadata: dict[str, str] | None = None,
        allow_negative: bool = False,
        lot_order: tuple[LotKind, ...] = SPEND_ORDER,
        lot_expiry: int | None = None,
        lot_kind: LotKind | None = None,
        restore_lots: list[list[Any]] | None = None,
        from_lots: list[list[Any]] | None = None,
        ledger: dict[str, Any] | None = None,
        corrects: int | None = None,
        undoes: str | None = None,
        spender_key: str | None = None,
        budget_at_us: int | None = None,
        spender_member: str | None = None,
    ) -> Row:
        if amount <= 0:
            raise errors.InvalidAmount("amount must be positive")
        if key in self._batch_keys or key in self.existing_keys:
            # Refused alone, before anything is applied: never a unique violation at flush.
            raise errors.DomainError(
                "this transfer was already made", code=errors.Code.ALREADY_EXISTS, reason="DUPLICATE_TRANSFER"
            )
        debit = await self.account(debit_id)
        credit = await self.account(credit_id)
        record: dict[str, Any] = dict(ledger) if ledger else {}
        if spender_key:
            # The key's budget before the wallet's balance: a key at its budget
            # never reaches the balance check, so it cannot drive a refill.
            spends = kind in KEY_USING_KINDS
            wallet = debit if spends else credit
            at = self.now_us if budget_at_us is None else budget_at_us
            owner = wallet["user_id"] or ""
            delta = amount if spends else -amount
            # A plain call when the batch has read the key (almost always): a
            # coroutine per spend cost about a microsecond.
            if not self.guard.use_loaded(self, spender_key, owner, delta, at, kind, category):
                await self.guard.use(self, spender_key, owner, delta, at, kind=kind, category=category)
            if at != self.now_us:
                record["budget_at"] = at  # the window the key's use fell in
        if spender_member:
            # The member's budget too (an org's wallet), before the balance.
            spends = kind in KEY_USING_KINDS
            wallet = debit if spends else credit
            at = self.now_us if budget_at_us is None else budget_at_us
            await self.member_guard.use(
                self, spender_member, wallet["user_id"] or "", amount if spends else -amount, at, kind=kind
            )
            if at != self.now_us:
                record["budget_at"] = at
        if debit["kind"] == "wallet":
            available = debit["balance"]
            if not allow_negative and not debit["unlimited_overdraft"] and available < amount:
                raise errors.InsufficientCredits(
                    "insufficient credits",
                    metadata={
                        "balance_millicredits": available,
                        "required_millicredits": amount,
                        "shortfall_millicredits": amount - max(available, 0),
                    },
                )
        if credit["balance"] > INT64_MAX - amount:
            raise errors.InvalidAmount("amount would overflow the balance")
        # The ledger's record: which lots this transfer drew and filled, so that
        # a reversal or a refund puts credits back exactly where they came from.
        if debit["kind"] == "wallet":
            record["drawn"] = self._consume_lots(debit, amount, lot_order, lot_expiry, from_lots)
        if credit["kind"] == "wallet":
            record["filled"] = self._fill_lots(credit, amount, lot_kind or LotKind.PURCHASED, lot_expiry or 0, restore_lots)
        self._set(debit, "balance", debit["balance"] - amount)
        self._set(credit, "balance", credit["balance"] + amount)
        for acct in (debit, credit):
            self._set(acct, "version", acct["version"] + 1)
            self._add(self._dirty_accounts, acct["id"])
        if debit["kind"] == "wallet" and kind in SPENT_KINDS:
            self._set(debit, "spent_total", debit["spent_total"] + amount)
        if credit["kind"] == "wallet" and kind in EARNED_KINDS:
            self._set(credit, "earned_total", credit["earned_total"] + amount)
        # A correction (reversal, refund) of a charge or an earning lowers its total.
        if credit["kind"] == "wallet" and undoes in SPENT_KINDS:
            self._set(credit, "spent_total", credit["spent_total"] - amount)
        if debit["kind"] == "wallet" and undoes in EARNED_KINDS:
            self._set(debit, "earned_total", debit["earned_total"] - amount)
        row = {
            "id": await self._transfer_id(),
            "key": key,
            "debit_account": debit_id,
            "credit_account": credit_id,
            "amount": amount,
            "kind": str(kind),
            "description": description[:500],
            "category": category,
            "ref": ref,
            "metadata": json.dumps(metadata, sort_keys=True) if metadata else "{}",
            "_metadata": dict(sorted(metadata.items())) if metadata else None,  # not a column
            "debit_balance_after": debit["balance"],
            "credit_balance_after": credit["balance"],
            "created_at_us": self.now_us,
            "ledger": _ledger_json(record),
            "corrects": corrects,
            "key_id": spender_key or None,
        }
        if spender_member:
            # Only a batch with a member's transfer writes the column (a plain
            # spend's insert binds no more than before).
            row["member_id"] = spender_member
            self.with_members = True
        self._append(self.new_transfers, row)
        self._add(self._batch_keys, key)
        for acct in (debit, credit):
            if acct["kind"] == "wallet":
                self._append(
                    self.events,
                    BalanceEvent(
                        user_id=acct["user_id"],
                        kind="transfer",
                        credits=acct["balance"],
                        pending=acct["pending"],
                        transfer=TransferView.of(row, acct["id"]),
                    ),
                )
        return row

    def _lot(self, account_id: str, kind: LotKind, expires_at_us: int) -> Row:
        for lot in self.lots.setdefault(account_id, []):
            if lot["kind"] == kind and lot["expires_at_us"] == expires_at_us:
                return lot
        lot = {
            "id": None,
            "account_id": account_id,
            "kind": str(kind),
            "expires_at_us": expires_at_us,
            "remaining": 0,
            "granted": 0,
            "created_at_us": self.now_us,
        }
        self._append(self.lots[account_id], lot)
        self._append(self._new_lots, lot)
        return lot

    def _consume_lots(
        self,
        wallet: Row,
        amount: int,
        order: tuple[LotKind, ...],
        only_expiry: int | None,
        first: list[list[Any]] | None = None,
    ) -> list[list[Any]]:
        """Take `amount` from the wallet's lots; lots cover only the positive
        part of a balance, so an overdraft consumes what is left and no more.
        `first` names [kind, expiry, part] lots to draw from before the usual
        order, whatever their period (a capture pays from its hold's own lots)."""
        take = max(wallet["balance"], 0) - max(wallet["balance"] - amount, 0)
        used: list[list[Any]] = []
        for lot_kind, lot_expiry, part in first or ():
            lot = next(
                (x for x in self.lots[wallet["id"]] if x["kind"] == lot_kind and x["expires_at_us"] == lot_expiry), None
            )
            part = min(part, take, lot["remaining"] if lot else 0)
            if lot is None or part <= 0:
                continue
            self._draw(lot, part, used)
            take -= part
        if take == 0:
            return used
        rank = _lot_rank(order)
        # By kind in `order`, then the soonest-ending first (lots that never end last).
        candidates = sorted(
            (lot for lot in self.lots[wallet["id"]] if lot["remaining"] > 0 and lot["kind"] in rank),
            key=lambda lot: (rank[lot["kind"]], lot["expires_at_us"] == 0, lot["expires_at_us"]),
        )
        for lot in candidates:
            if only_expiry is not None and lot["expires_at_us"] != only_expiry:
                continue
            part = min(take, lot["remaining"])
            self._draw(lot, part, used)
            take -= part
            if take == 0:
                return used
        if take:
            raise errors.DomainError("ledger lots out of step with balance", reason="LEDGER_INCONSISTENT")
        return used

    def _draw(self, lot: Row, part: int, used: list[list[Any]]) -> None:
        """Take `part` from one lot and record it as [kind, expiry, part]."""
        self._set(lot, "remaining", lot["remaining"] - part)
        self._touch_lot(lot)
        used.append([lot["kind"], lot["expires_at_us"], part])

    def _fill_lots(
        self, wallet: Row, amount: int, kind: LotKind, expiry: int, restore: list[list[Any]] | None
    ) -> list[list[Any]]:
        # A debt (negative balance) is repaid first; only the rest becomes spendable lots.
        give = max(wallet["balance"] + amount, 0) - max(wallet["balance"], 0)
        filled: list[list[Any]] = []
        for lot_kind, lot_expiry, part in restore or [[kind, expiry, give]]:
            part = min(part, give)
            if part <= 0:
                continue
            lot = self._lot(wallet["id"], LotKind(lot_kind), lot_expiry)
            self._set(lot, "remaining", lot["remaining"] + part)
            self._set(lot, "granted", lot["granted"] + part)
            self._touch_lot(lot)
            filled.append([lot["kind"], lot["expires_at_us"], part])
            give -= part
        if give > 0:  # restored lots were smaller than the amount: the rest is purchased-like
            lot = self._lot(wallet["id"], kind, expiry)
            self._set(lot, "remaining", lot["remaining"] + give)
            self._set(lot, "granted", lot["granted"] + give)
            self._touch_lot(lot)
            filled.append([lot["kind"], lot["expires_at_us"], give])
        return filled

    def _touch_lot(self, lot: Row) -> None:
        if lot["id"] is not None:
            self._add(self._dirty_lots, lot["id"])

    # ---- holds ---------------------------------------------------------------------

    def new_hold(self, row: Row) -> None:
        self._put(self.holds, row["id"], row)
        self._append(self._new_holds, row)

    def update_hold(self, hold_id: str, **values: Any) -> None:
        row = self.holds[hold_id]
        for k, v in values.items():
            self._set(row, k, v)
        if row not in self._new_holds:
            self._add(self._dirty_holds, hold_id)

    def add_pending(self, account_id: str, delta: int) -> None:
        acct = self.accounts[account_id]
        self._set(acct, "pending", acct["pending"] + delta)
        self._add(self._dirty_accounts, account_id)

    # ---- idempotency ------------------------------------------------------------------

    def remember(self, key: str, fingerprint: str, response: bytes) -> None:
        self._put(self.stored, key, (fingerprint, response))
        self._append(self.new_idempotency, {"key": key, "fingerprint": fingerprint, "response": response, "created_at_us": self.now_us})

    def record_usage(self, transfer_id: int, row: Row) -> None:
        """A priced transfer's transfer_usage row: the transfer's id and every
        other column (one dict, shared by the transfers priced from one
        record), written with the batch's transfers; undone if its operation
        is refused."""
        self._append(self.new_usage, (transfer_id, row))

    # ---- other domains' rows --------------------------------------------------------------

    def rows(self, table: Table) -> StagedRows:
        """Another domain's table in this batch: cached reads, staged writes."""
        staged = self._staged.get(table.name)
        if staged is None:
            staged = self._staged[table.name] = StagedRows(self, table)
        return staged

    async def prune_responses(self, created_before_us: int, limit: int) -> int:
        """Empty up to `limit` stored responses created before the instant,
        oldest first. The key stays (a tombstone): a repeat of the request is
        refused, never applied again. Replicas skip each other's rows."""
        oldest = (
            select(idempotency.c.key)
            .where(idempotency.c.created_at_us < created_before_us, text(LIVE_RESPONSE))
            .order_by(idempotency.c.created_at_us)
            .limit(limit)
        )
        if not self.is_sqlite:
            oldest = oldest.with_for_update(skip_locked=True)
        result = await self._conn.execute(
            update(idempotency).where(idempotency.c.key.in_(oldest.scalar_subquery())).values(response=b"")
        )
        return int(result.rowcount or 0)

    async def fetch(self, query: Executable) -> list[Row]:
        """Rows of a read under the batch's transaction (and its locks)."""
        return [dict(r) for r in (await self._conn.execute(query)).mappings().all()]

    async def fetch_one(self, query: Executable) -> Row | None:
        found = (await self._conn.execute(query)).mappings().first()
        return dict(found) if found is not None else None

    async def fetch_scalar(self, query: Executable) -> Any:
        return (await self._conn.execute(query)).scalar()

    async def read_in(self, table: Table, column: str, keys: list[Any]) -> list[Row]:
        """Rows whose `column` is one of `keys`, on the driver: for extensions that
        read in every batch (the hot path). By primary key, the rows are
        remembered for the batch: a second extension asking for the same rows
        (the refill trigger's configs, the alerts' defaults) reads none again.
        They are the committed rows; what the batch changes goes through rows()."""
        if [c.name for c in table.primary_key.columns] != [column]:
            return await self.sql.select_in(table, column, keys)
        known = self._read.setdefault(table.name, {})
        missing = [k for k in keys if k not in known]
        if missing:
            for k in missing:
                known[k] = None
            for r in await self.sql.select_in(table, column, missing):
                known[r[column]] = r
        found = (known[k] for k in keys)
        return [r for r in found if r is not None]

    def wallet_balances(self) -> dict[str, int]:
        """user_id -> balance of every wallet this batch touched (as applied so far)."""
        return {a["user_id"]: a["balance"] for a in self.accounts.values() if a["kind"] == "wallet" and a["user_id"]}

    def batch_set(self, name: str) -> set[Any]:
        """A named set an extension keeps for this batch; change it with batch_add
        so that a refused operation's additions are undone."""
        return self._sets.setdefault(name, set())

    def batch_add(self, name: str, item: Any) -> None:
        self._add(self.batch_set(name), item)

    def batch_dict(self, name: str) -> dict[Any, Any]:
        """A named mapping an extension keeps for this batch; what it reads into
        it is not a change, what an operation sets goes through batch_put."""
        found = self._dicts.get(name)
        if found is None:
            found = self._dicts[name] = {}
        return found

    def batch_put(self, name: str, key: Any, value: Any) -> None:
        """Set one entry of a batch_dict, undone if the operation is refused."""
        target = self.batch_dict(name)
        if key in target:
            self._set(target, key, value)
        else:
            self._put(target, key, value)

    def batch_list(self, name: str) -> list[Any]:
        """A named list an extension keeps for this batch, in order; append with
        batch_append so that a refused operation's items are undone."""
        return self._lists.setdefault(name, [])

    def batch_append(self, name: str, item: Any) -> None:
        self._append(self.batch_list(name), item)

    def notify_replicas(self, channel: str, payload: str) -> None:
        """A PostgreSQL NOTIFY that travels with the write-back: sent only if the batch commits."""
        self.sql.notify(channel, payload)

    async def execute_staged(self, statement: Executable, params: list[Row]) -> None:
        """For StagedRows' write-back only."""
        await self._conn.execute(statement, params)

    def notify(self, event: BalanceEvent) -> None:
        self._append(self.events, event)

    # ---- write-back -------------------------------------------------------------------

    async def flush(self) -> None:
        sql = self.sql
        await sql.insert(accounts, [self.accounts[a] for a in self._new_accounts])
        await sql.insert(users, [self.users[u] for u in self._new_users])
        new_users = set(self._new_users)
        await sql.update(
            users, "user_id",
            ("tier", "monthly_credits", "period_start_us", "period_end_us", "flagged_reason", "stripe_customer_id"),
            [self.users[u] for u in sorted(self._dirty_users) if u not in new_users],
        )
        if self.with_members:
            for row in self.new_transfers:
                row.setdefault("member_id", None)
            await sql.insert(transfers, self.new_transfers)
        else:
            await sql.insert(transfers, self.new_transfers, skip=NO_MEMBER)
        await sql.insert_shared(transfer_usage, "transfer_id", self.new_usage)
        new_accounts = set(self._new_accounts)
        await sql.update(
            accounts, "id",
            ("balance", "pending", "earned_total", "spent_total", "unlimited_overdraft", "version"),
            [self.accounts[a] for a in sorted(self._dirty_accounts) if a not in new_accounts],
        )
        await sql.insert(lots, self._new_lots, skip=("id",))
        if self._dirty_lots:
            by_id = {lot["id"]: lot for rows in self.lots.values() for lot in rows if lot["id"] is not None}
            await sql.update(lots, "id", ("remaining", "granted"), [by_id[i] for i in sorted(self._dirty_lots)])
        await sql.insert(holds, self._new_holds)
        await sql.update(
            holds, "id", ("captured", "status", "resolved_at_us"),
            [self.holds[h] for h in sorted(self._dirty_holds)],
        )
        await sql.insert(idempotency, self.new_idempotency)
        for staged in self._staged.values():
            await staged.flush()
        await sql.send()
        for staged in self._staged.values():
            await staged.flush_unless_conflict()
        # Staged rows point back at the batch (a cycle): let go of them once
        # written, so that the batch's rows are freed by reference counting
        # instead of piling up for the cyclic collector (measured: its passes
        # cost a keyed spend more than the key's own work did).
        self._staged.clear()


# Lots that expire, and where their credits go: the monthly allowance, and
# promotional credits an admin granted with an expiry (AdjustBalance).
_EXPIRING = {
    LotKind.ALLOWANCE: (SYSTEM_ALLOWANCES, "Unused monthly allowance expired"),
    LotKind.EARNED: (SYSTEM_ADJUSTMENTS, "Promotional credits expired"),
}


def _expiry_key(user_id: str, kind: LotKind, ends_us: int, n: int) -> str:
    if kind == LotKind.ALLOWANCE:
        return keys.allowance_expiry(user_id, ends_us, n)
    return keys.lot_expiry(user_id, kind, ends_us, n)


def user_id_tier(user: Row | None) -> str:
    return user["tier"] if user else "free"


# One encoder for every transfer's ledger record: json.dumps with options builds a new one per call.
_ledger_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


_RANKS: dict[tuple[LotKind, ...], dict[str, int]] = {}


def _lot_rank(order: tuple[LotKind, ...]) -> dict[str, int]:
    rank = _RANKS.get(order)
    if rank is None:
        rank = _RANKS[order] = {str(kind): i for i, kind in enumerate(order)}
    return rank
