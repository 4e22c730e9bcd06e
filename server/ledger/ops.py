"""Ledger operations. Each is applied inside a group-commit batch by the
LedgerWriter; a refused one is rolled back alone (LedgerTx undo log)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr
from sqlalchemy import func, select

from server.db.schema import transfers
from server.ledger import corrections, keys
from server.ledger.model import (
    SPEND_ORDER,
    SYSTEM_EARNINGS,
    SYSTEM_HOLDS,
    SYSTEM_REVENUE,
    HoldStatus,
    HoldView,
    Kind,
    LotKind,
    TransferView,
    compact_json,
    from_json,
    to_json,
    wallet_id,
)
from server.ledger.tx import LedgerTx, Row
from server.platform import errors
from server.platform.auth import Principal


@dataclass
class Idempotency:
    """request_id scoped to the caller and the method, with a fingerprint of the parameters."""

    key: str
    fingerprint: str
    request_id: str = ""
    method: str = ""  # the RPC that asked for it (the admin audit names it)

    @classmethod
    def of(cls, role: str, subject: str, method: str, request_id: str, fingerprint: str) -> Idempotency:
        return cls(keys.idempotency(role, subject, method, request_id), fingerprint, request_id, method)

    @classmethod
    def of_request(cls, principal: Principal, method: str, request_id: str, fingerprint: str) -> Idempotency:
        """The request_id of an RPC, in the scope of its caller (a key's own, apart from its owner's)."""
        if principal.key_id:
            return cls.of("key", principal.key_id, method, request_id, fingerprint)
        return cls.of(principal.role.value, principal.subject, method, request_id, fingerprint)

    def replay(self, found: dict[str, tuple[str, bytes]]) -> bytes | None:
        """The stored response of this request, or None when it was never applied.
        `found` maps keys to stored (fingerprint, response). The same request_id
        with other parameters is refused (REQUEST_ID_REUSED)."""
        hit = found.get(self.key)
        if hit is None:
            return None
        fingerprint, response = hit
        if fingerprint != self.fingerprint:
            raise errors.RequestIdReused(
                "request_id was already used with different parameters", metadata={"request_id": self.request_id}
            )
        if not response:  # pruned after the retention period: applied once, never again
            raise errors.RequestIdExpired(
                "request_id was applied longer ago than the retention period and its response is no longer "
                "stored; it is not applied again (use a new request_id for a new operation)",
                metadata={"request_id": self.request_id},
            )
        return response

    @property
    def transfer_key(self) -> str:
        return keys.request_transfer(self.key)


# Ready to be compiled (server/_core.py): Op is not generic, since mypyc's
# dataclasses under a Generic base fail to load. Class attributes are set in
# plain classes (_Exclusive, ...), never in a dataclass's body, where mypyc
# would make them fields. Other domains subclass Op, Call and Join.
@mypyc_attr(allow_interpreted_subclasses=True)
class Op:
    result_type: ClassVar[type]
    # Exclusive operations run in a batch of their own (they read other domains' rows).
    exclusive: ClassVar[bool] = False
    # Operations that write their own admin audit row (AdminService's changes).
    audits_itself: ClassVar[bool] = False
    idempotency: Idempotency | None = None

    def account_ids(self) -> set[str]:
        return set()

    def audit_details(self) -> dict[str, Any]:
        """What the admin audit row of this operation records besides the RPC,
        once applied: the target of a change that touches no wallet."""
        return {}

    def hold_ids(self) -> set[str]:
        return set()

    def transfer_keys(self) -> set[str]:
        """Derived keys this operation checks (loaded with the batch's reads).
        A request's own keys need no check: its idempotency record is loaded,
        and no other key can equal them (server/ledger/keys.py)."""
        return set()

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        """(key id, instant) of the scoped keys whose budgets this operation
        uses or gives back, in the window of that instant; loaded with the batch
        (after its accounts and holds) by the SpendGuard."""
        return []

    async def apply(self, tx: LedgerTx) -> Any:
        raise NotImplementedError

    def encode(self, result: Any) -> bytes:
        return to_json(result)

    def decode(self, data: bytes) -> Any:
        return from_json(self.result_type, data)


@dataclass
class UsageRecord:
    """What a transfer priced from usage used, and the price it was charged at:
    its transfer_usage row (the usage domain prices; the ledger records)."""

    meter: str
    quantity: int
    dimensions: dict[str, str]
    version: int
    unit_price: int
    per_units: int
    amount: int
    priced_at_us: int
    hold_id: str = ""
    # What the ledger writes of the record, made at its first use and kept
    # for the many spends that share it (pricing's record of a usage at a
    # batch's instant): a stored response's usage fields, and the
    # transfer_usage row but its transfer. Private: never stored (model._plain
    # skips them); a record is not changed once used.
    _fields_json: str = field(default="", repr=False, compare=False)
    _row: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def fields_json(self) -> str:
        """The record's fields as a JSON list, as SpendResult stores them."""
        if not self._fields_json:
            self._fields_json = compact_json([
                self.meter, self.quantity, self.dimensions, self.version, self.unit_price, self.per_units,
                self.amount, self.priced_at_us, self.hold_id,
            ])
        return self._fields_json

    def row(self) -> Row:
        """Its transfer_usage row, every column but transfer_id."""
        row = self._row
        if row is None:
            row = self._row = {
                "meter": self.meter, "quantity": self.quantity, "dimensions": _dimensions_json(self.dimensions),
                "version": self.version, "unit_price": self.unit_price, "per_units": self.per_units,
                "priced_at_us": self.priced_at_us, "hold_id": self.hold_id or None,
            }
        return row


# Usage priced inside the batch: called with the ledger's instant, the record
# of its price (server/usage/metering.py makes it).
Metered = Callable[[int], UsageRecord]


# A meter's few dimension combinations, as stored: encoded once each, not per spend.
_DIMENSIONS_JSON: dict[tuple[tuple[str, str], ...], str] = {(): "{}"}


def _dimensions_json(dimensions: dict[str, str]) -> str:
    if not dimensions:
        return "{}"
    key = tuple(dimensions.items())
    found = _DIMENSIONS_JSON.get(key)
    if found is None:
        found = json.dumps(dimensions, sort_keys=True, separators=(",", ":"))
        if len(_DIMENSIONS_JSON) < 10_000:  # bounded: values are the rate card's, but never trust a count
            _DIMENSIONS_JSON[key] = found
    return found


def _record_usage(tx: LedgerTx, transfer_id: int, usage: UsageRecord) -> None:
    """The one place a transfer's usage row is written: with the batch's
    transfers, so it commits (or is undone) with its transfer."""
    tx.record_usage(transfer_id, usage.row())


@dataclass
class SpendResult:
    transaction: TransferView
    credits: int
    # A spend priced from usage: what was priced (stored in its response too).
    usage: UsageRecord | None = None

    # Stored for every Spend (its idempotent response): a flat JSON list, not
    # the generic nested object, since it is written once per operation.
    def to_bytes(self) -> bytes:
        t = self.transaction
        flat = [
            self.credits, t.id, t.kind, t.amount, t.balance_after, t.description, t.category, t.ref,
            t.created_at_us, t.metadata,
        ]
        if t.key_id or t.member_id:  # responses without either keep the form earlier releases stored
            flat.append(t.key_id)
            if t.member_id:
                flat.append(t.member_id)
        if self.usage is not None:  # a priced spend: {"t": the flat list, "u": its usage's fields}
            return ('{"t":' + compact_json(flat) + ',"u":' + self.usage.fields_json() + "}").encode()
        return compact_json(flat).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SpendResult:
        value = json.loads(data)
        usage = None
        if isinstance(value, dict):
            if "t" not in value:  # the nested form earlier releases stored
                return from_json(cls, data)
            value, usage = value["t"], UsageRecord(*value["u"])
        credits, *transfer = value
        return cls(TransferView(*transfer), credits, usage)


class _SpendResultOp(Op):
    result_type = SpendResult

    def encode(self, result: SpendResult) -> bytes:
        return result.to_bytes()

    def decode(self, data: bytes) -> SpendResult:
        return SpendResult.from_bytes(data)


@dataclass
class HoldResult:
    hold: HoldView
    credits: int
    transaction: TransferView | None = None
    # Priced from usage: the usage of `transaction` (a Reserve's hold, a Capture's charge).
    usage: UsageRecord | None = None


class _HoldResultOp(Op):
    result_type = HoldResult

    def decode(self, data: bytes) -> HoldResult:
        # Compiled, HoldResult's `TransferView | None` annotation reaches
        # from_json as `type` (mypyc keeps only plain class annotations).
        value = json.loads(data)
        transfer, usage = value["transaction"], value.get("usage")
        return HoldResult(
            from_json(HoldView, compact_json(value["hold"]).encode()), value["credits"],
            None if transfer is None else from_json(TransferView, compact_json(transfer).encode()),
            None if usage is None else UsageRecord(**usage),
        )


@dataclass
class WalletResult:
    user_id: str
    credits: int


def hold_view(row: Row) -> HoldView:
    return HoldView(
        id=row["id"],
        user_id=row["user_id"],
        amount=row["amount"],
        status=row["status"],
        expires_at_us=row["expires_at_us"],
        captured=row["captured"],
        category=row["category"],
    )


def _transfer_key(idem: Idempotency | None, fallback: str) -> str:
    return idem.transfer_key if idem else fallback


def _request_key(idem: Idempotency | None, kind: str) -> str:
    # The random fallback is made only when needed: uuid4 reads os.urandom.
    return idem.transfer_key if idem else keys.unrequested(kind)


@dataclass
class RevenueShare:
    app_id: str
    publisher_user_id: str
    percent: int

    def share_of(self, amount: int) -> int:
        # Rounded down: the platform keeps the fraction of a millicredit.
        return amount * self.percent // 100


async def _pay_publisher(
    tx: LedgerTx, share: RevenueShare | None, amount: int, key: str, category: str, charge_id: int
) -> None:
    if share is None:
        return
    part = share.share_of(amount)
    if part <= 0:
        return
    await tx.wallet(share.publisher_user_id)
    await tx.transfer(
        SYSTEM_REVENUE,
        wallet_id(share.publisher_user_id),
        part,
        kind=Kind.REVENUE_SHARE,
        key=keys.revenue_share(key),
        description=f"Revenue share from {share.app_id}",
        category=category,
        ref=share.app_id,
        lot_kind=LotKind.EARNED,
        ledger={"paid_by": charge_id},
    )


@dataclass
class Spend(_SpendResultOp):
    user_id: str
    amount: int
    category: str = ""
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    share: RevenueShare | None = None
    idempotency: Idempotency | None = None
    # The principal's scope (role/subject): who may refund this charge (RefundUsage).
    charged_by: str = ""
    # The scoped key the spend is made through or for: held to its budgets.
    key_id: str = ""
    # On an org's wallet: the member spending, held to their budgets.
    member: str = ""
    # Usage instead of an amount: priced at the batch's instant (amount unused).
    usage: Metered | None = None

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        return [(self.key_id, tx.now_us)] if self.key_id else []

    def account_ids(self) -> set[str]:
        ids = {wallet_id(self.user_id), SYSTEM_REVENUE}
        if self.share:
            ids.add(wallet_id(self.share.publisher_user_id))
        return ids

    async def apply(self, tx: LedgerTx) -> SpendResult:
        priced = self.usage(tx.now_us) if self.usage is not None else None
        amount = priced.amount if priced is not None else self.amount
        wallet = await tx.wallet(self.user_id)
        key = _request_key(self.idempotency, "spend")
        meta = dict(self.metadata)
        if self.share:
            meta.update(app_id=self.share.app_id, publisher_user_id=self.share.publisher_user_id)
        row = await tx.transfer(
            wallet["id"],
            SYSTEM_REVENUE,
            amount,
            kind=Kind.SPEND,
            key=key,
            description=self.description or f"Usage: {self.category or 'other'}",
            category=self.category,
            ref=self.share.app_id if self.share else "",
            metadata=meta,
            ledger={"by": self.charged_by} if self.charged_by else None,
            spender_key=self.key_id or None,
            spender_member=self.member or None,
        )
        await _pay_publisher(tx, self.share, amount, key, self.category, row["id"])
        if priced is not None:
            _record_usage(tx, row["id"], priced)
        return SpendResult(TransferView.of(row, wallet["id"]), wallet["balance"], priced)


@dataclass
class Reserve(_HoldResultOp):
    user_id: str
    amount: int
    ttl_us: int
    category: str = ""
    description: str = ""
    idempotency: Idempotency | None = None
    key_id: str = ""
    member: str = ""
    # Usage instead of an amount: priced at the batch's instant (amount unused).
    usage: Metered | None = None

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        return [(self.key_id, tx.now_us)] if self.key_id else []

    def account_ids(self) -> set[str]:
        return {wallet_id(self.user_id), SYSTEM_HOLDS}

    async def apply(self, tx: LedgerTx) -> HoldResult:
        priced = self.usage(tx.now_us) if self.usage is not None else None
        amount = priced.amount if priced is not None else self.amount
        wallet = await tx.wallet(self.user_id)
        hold_id = f"hold_{uuid.uuid4().hex}"
        before = {(lot["kind"], lot["expires_at_us"]): lot["remaining"] for lot in tx.lots[wallet["id"]]}
        # Pending first, so the transfer's watch event carries it (undone if refused).
        tx.add_pending(wallet["id"], amount)
        row = await tx.transfer(
            wallet["id"],
            SYSTEM_HOLDS,
            amount,
            kind=Kind.HOLD,
            key=_transfer_key(self.idempotency, keys.hold(hold_id)),
            description=self.description or f"Reserved: {self.category or 'other'}",
            category=self.category,
            ref=hold_id,
            spender_key=self.key_id or None,
            spender_member=self.member or None,
        )
        taken = [
            [lot["kind"], lot["expires_at_us"], before.get((lot["kind"], lot["expires_at_us"]), 0) - lot["remaining"]]
            for lot in tx.lots[wallet["id"]]
            if before.get((lot["kind"], lot["expires_at_us"]), 0) > lot["remaining"]
        ]
        hold = {
            "id": hold_id,
            "account_id": wallet["id"],
            "user_id": self.user_id,
            "amount": amount,
            "captured": 0,
            "status": str(HoldStatus.ACTIVE),
            "lots": json.dumps(taken),
            "category": self.category,
            "description": self.description,
            "expires_at_us": tx.now_us + self.ttl_us,
            "created_at_us": tx.now_us,
            "resolved_at_us": None,
            "key_id": self.key_id or None,
            "member_id": self.member or None,
        }
        tx.new_hold(hold)
        if priced is not None:
            priced.hold_id = hold_id
            _record_usage(tx, row["id"], priced)
        return HoldResult(hold_view(hold), wallet["balance"], TransferView.of(row, wallet["id"]), priced)


async def _release(
    tx: LedgerTx, hold: Row, amount: int, key: str, status: HoldStatus, why: str, *, roll_over: bool = True
) -> Row | None:
    """Return `amount` of an active hold to the wallet, into the lots it came from."""
    tx.add_pending(hold["account_id"], -hold["amount"])
    tx.update_hold(hold["id"], status=str(status), resolved_at_us=tx.now_us)
    if amount <= 0:
        return None
    row = await tx.transfer(
        SYSTEM_HOLDS,
        hold["account_id"],
        amount,
        kind=Kind.HOLD_RELEASE,
        key=key,
        description=why,
        category=hold["category"],
        ref=hold["id"],
        restore_lots=json.loads(hold["lots"]),
        # The key gets the budget back in the window the hold was made in.
        spender_key=hold.get("key_id"),
        budget_at_us=hold["created_at_us"],
        spender_member=hold.get("member_id"),
    )
    # Allowance that went back into a lot whose period has ended expires now,
    # not at the user's next write: balances never show stale allowance.
    if roll_over:
        await tx.roll_over(hold["user_id"])
    return row


def _hold_keys(tx: LedgerTx, hold_ids: set[str]) -> list[tuple[str, int]]:
    """The keys of the holds an operation resolves, at each hold's instant."""
    out = []
    for hid in hold_ids:
        hold = tx.holds.get(hid)
        if hold is not None and hold.get("key_id"):
            out.append((hold["key_id"], hold["created_at_us"]))
    return out


def _active_hold(tx: LedgerTx, hold_id: str, caller_may_use: str | None, through_key: str | None = None) -> Row:
    hold = tx.holds.get(hold_id)
    if hold is None or (caller_may_use is not None and hold["user_id"] != caller_may_use):
        raise errors.NotFound("hold not found", reason="HOLD_NOT_FOUND")
    # A key reaches only what it made: its secret settles the holds reserved
    # through it, never the wallet's other holds (the owner's or another key's).
    if through_key and hold.get("key_id") != through_key:
        raise errors.PermissionDenied(
            "the hold was not reserved through this key", reason="HOLD_NOT_YOURS",
            metadata={"key_id": through_key, "hold_id": hold_id},
        )
    if hold["status"] != HoldStatus.ACTIVE:
        raise errors.FailedPrecondition(
            f"hold is {hold['status']}", reason="HOLD_NOT_ACTIVE", metadata={"status": hold["status"]}
        )
    return hold


@dataclass
class Capture(_HoldResultOp):
    hold_id: str
    amount: int
    description: str = ""
    share: RevenueShare | None = None
    # A user token may only capture its own holds.
    owner: str | None = None
    idempotency: Idempotency | None = None
    charged_by: str = ""
    # A key's secret may only capture the holds reserved through that key.
    through_key: str | None = None
    # A hold reserved by usage: the final quantity, priced at the hold's version (amount is its price).
    usage: UsageRecord | None = None

    def hold_ids(self) -> set[str]:
        return {self.hold_id}

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        return _hold_keys(tx, self.hold_ids())

    def account_ids(self) -> set[str]:
        ids = {SYSTEM_HOLDS, SYSTEM_REVENUE}
        if self.share:
            ids.add(wallet_id(self.share.publisher_user_id))
        return ids

    async def apply(self, tx: LedgerTx) -> HoldResult:
        hold = _active_hold(tx, self.hold_id, self.owner, self.through_key)
        if self.amount > hold["amount"]:
            raise errors.InvalidAmount(
                "capture exceeds the held amount",
                metadata={"held_millicredits": hold["amount"], "requested_millicredits": self.amount},
            )
        key = _transfer_key(self.idempotency, keys.hold_capture(hold["id"]))
        # Give the whole hold back, then spend the captured part from exactly the
        # lots the hold set aside, whatever their period: the wallet's history
        # shows the spend, and only the uncaptured rest can expire with its lot.
        # In spend order, so that a partial capture returns the longest-lived credits.
        held_lots = sorted(
            json.loads(hold["lots"]),
            key=lambda lot: (SPEND_ORDER.index(LotKind(lot[0])), lot[1] == 0, lot[1]),
        )
        await _release(
            tx, hold, hold["amount"], keys.hold_settlement(key), HoldStatus.CAPTURED, "Hold settled", roll_over=False
        )
        tx.update_hold(hold["id"], captured=self.amount)
        wallet = tx.accounts[hold["account_id"]]
        row = None
        if self.amount > 0:
            row = await tx.transfer(
                wallet["id"],
                SYSTEM_REVENUE,
                self.amount,
                kind=Kind.HOLD_CAPTURE,
                key=key,
                description=self.description or hold["description"] or f"Usage: {hold['category'] or 'other'}",
                category=hold["category"],
                ref=hold["id"],
                allow_negative=True,
                from_lots=held_lots,
                ledger={"by": self.charged_by} if self.charged_by else None,
                spender_key=hold.get("key_id"),
                budget_at_us=hold["created_at_us"],
                spender_member=hold.get("member_id"),
            )
            await _pay_publisher(tx, self.share, self.amount, key, hold["category"], row["id"])
            if self.usage is not None:
                _record_usage(tx, row["id"], self.usage)
        await tx.roll_over(hold["user_id"])
        return HoldResult(
            hold_view(hold), wallet["balance"], TransferView.of(row, wallet["id"]) if row else None,
            self.usage if row else None,
        )


@dataclass
class Release(_HoldResultOp):
    hold_id: str
    owner: str | None = None
    idempotency: Idempotency | None = None
    # A key's secret may only release the holds reserved through that key.
    through_key: str | None = None

    def hold_ids(self) -> set[str]:
        return {self.hold_id}

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        return _hold_keys(tx, self.hold_ids())

    def account_ids(self) -> set[str]:
        return {SYSTEM_HOLDS}

    async def apply(self, tx: LedgerTx) -> HoldResult:
        hold = _active_hold(tx, self.hold_id, self.owner, self.through_key)
        key = _transfer_key(self.idempotency, keys.hold_release(hold["id"]))
        row = await _release(tx, hold, hold["amount"], key, HoldStatus.RELEASED, "Hold released")
        wallet = tx.accounts[hold["account_id"]]
        return HoldResult(hold_view(hold), wallet["balance"], TransferView.of(row, wallet["id"]) if row else None)


@dataclass
class ExpireHolds(Op):
    """Release holds whose time ran out (the hold-expiry worker)."""

    hold_id_list: list[str]

    def hold_ids(self) -> set[str]:
        return set(self.hold_id_list)

    def budget_keys(self, tx: LedgerTx) -> list[tuple[str, int]]:
        return _hold_keys(tx, self.hold_ids())

    def account_ids(self) -> set[str]:
        return {SYSTEM_HOLDS}

    async def apply(self, tx: LedgerTx) -> int:
        done = 0
        for hid in self.hold_id_list:
            hold = tx.holds.get(hid)
            if hold is None or hold["status"] != HoldStatus.ACTIVE or hold["expires_at_us"] > tx.now_us:
                continue
            await _release(tx, hold, hold["amount"], keys.hold_expiry(hid), HoldStatus.EXPIRED, "Hold expired")
            done += 1
        return done

    def encode(self, result: int) -> bytes:
        return str(result).encode()

    def decode(self, data: bytes) -> int:
        return int(data)


async def _check_daily_limit(tx: LedgerTx, account: str, source: str, amount: int, limit: int) -> None:
    """Checked under the wallet's lock, counting this batch too: no check-then-act race."""
    day = tx.now_us - tx.now_us % 86_400_000_000
    q = select(func.coalesce(func.sum(transfers.c.amount), 0)).where(
        transfers.c.credit_account == account,
        transfers.c.kind == str(Kind.AWARD),
        transfers.c.created_at_us >= day,
        transfers.c.category == source,
    )
    used = int(await tx.fetch_scalar(q))
    used += sum(
        t["amount"] for t in tx.new_transfers
        if t["credit_account"] == account and t["kind"] == Kind.AWARD and t["category"] == source
    )
    if used + amount > limit:
        raise errors.ResourceExhausted(
            f"daily limit for {source} awards reached",
            reason="DAILY_AWARD_LIMIT",
            metadata={
                "source": source,
                "limit_millicredits": limit,
                "awarded_today_millicredits": used,
                "remaining_millicredits": max(limit - used, 0),
            },
        )


@dataclass
class Award(_SpendResultOp):
    user_id: str
    amount: int
    source: str
    source_ref: str
    reason: str
    idempotency: Idempotency | None = None
    # Millicredits this user may earn from this source per UTC day (0: no limit).
    daily_limit: int = 0

    @property
    def dedupe_key(self) -> str:
        return keys.award(self.user_id, self.source, self.source_ref)

    def account_ids(self) -> set[str]:
        return {wallet_id(self.user_id), SYSTEM_EARNINGS}

    def transfer_keys(self) -> set[str]:
        return {self.dedupe_key} if self.source_ref else set()

    async def apply(self, tx: LedgerTx) -> SpendResult:
        wallet = await tx.wallet(self.user_id)
        key = self.dedupe_key if self.source_ref else _request_key(self.idempotency, "award")
        if self.source_ref and not await tx.key_unused(key):
            raise errors.DomainError(
                "credits for this source_ref were already awarded",
                code=errors.Code.ALREADY_EXISTS,
                reason="ALREADY_AWARDED",
                metadata={"source": self.source, "source_ref": self.source_ref},
            )
        if self.daily_limit:
            await _check_daily_limit(tx, wallet["id"], self.source, self.amount, self.daily_limit)
        row = await tx.transfer(
            SYSTEM_EARNINGS,
            wallet["id"],
            self.amount,
            kind=Kind.AWARD,
            key=key,
            description=self.reason or f"Earned: {self.source}",
            category=self.source,
            ref=self.source_ref,
            lot_kind=LotKind.EARNED,
        )
        return SpendResult(TransferView.of(row, wallet["id"]), wallet["balance"])


@dataclass
class EnsureWallet(Op):
    """Create a user's wallet (with the free allowance) or roll it into the new period."""

    user_id: str

    def account_ids(self) -> set[str]:
        return {wallet_id(self.user_id)}

    def decode(self, data: bytes) -> WalletResult:
        return from_json(WalletResult, data)

    async def apply(self, tx: LedgerTx) -> WalletResult:
        wallet = await tx.wallet(self.user_id)
        return WalletResult(self.user_id, wallet["balance"])


@mypyc_attr(allow_interpreted_subclasses=True)
class _Exclusive(Op):
    result_type = object
    exclusive = True


@mypyc_attr(allow_interpreted_subclasses=True)
@dataclass
class Call(_Exclusive):
    """An exclusive operation of another domain: `fn(tx)` runs in its own
    transaction with full ledger access (webhooks, tier changes, refills)."""

    fn: Any = None
    accounts: set[str] = field(default_factory=set)
    # With a request's idempotency, the writer replays a repeat and stores the result.
    idempotency: Idempotency | None = None

    def account_ids(self) -> set[str]:
        return self.accounts

    async def apply(self, tx: LedgerTx) -> Any:
        return await self.fn(tx)


@mypyc_attr(allow_interpreted_subclasses=True)
class Join(Call):
    """A small operation of another domain on its own rows (no transfers, no
    wallet) that shares a batch with the others instead of running alone:
    bookkeeping that must not cost the ledger a commit of its own (webhook
    deliveries). A refused one is rolled back alone, like a Spend."""

    exclusive = False


@dataclass
class PruneResponses(_Exclusive):
    """Empty stored responses older than the retention period, one bounded batch
    (the retention job); their keys stay so that repeats are refused."""

    created_before_us: int
    limit: int

    async def apply(self, tx: LedgerTx) -> int:
        return await tx.prune_responses(self.created_before_us, self.limit)

    def encode(self, result: int) -> bytes:
        return str(result).encode()

    def decode(self, data: bytes) -> int:
        return int(data)


@dataclass
class RefundResult:
    transaction: TransferView
    credits: int
    refunded: int


@dataclass
class RefundUsage(_Exclusive):
    """All or part of a Spend or Capture given back (server/ledger/corrections.py).
    Alone in its batch: it reads the charge and its earlier refunds under the wallet's lock."""

    transfer_id: int
    amount: int
    reason: str
    window_us: int
    # role/subject of the caller, who must have made the charge; None: an admin.
    caller: str | None
    idempotency: Idempotency | None = None

    def decode(self, data: bytes) -> RefundResult:
        return from_json(RefundResult, data)

    async def apply(self, tx: LedgerTx) -> RefundResult:
        row, total = await corrections.refund(
            tx, self.transfer_id, self.amount, key=_request_key(self.idempotency, "refund"), reason=self.reason,
            caller=self.caller, window_us=self.window_us,
        )
        wallet = tx.accounts[row["credit_account"]]
        return RefundResult(TransferView.of(row, wallet["id"]), wallet["balance"], total)
