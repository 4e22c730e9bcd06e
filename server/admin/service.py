"""Admin rules: admin tokens only; every change and its audit row are one
ledger operation, so they commit together or not at all."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.admin.models import AccountView, Action, AdminActionView, AdminResult
from server.admin.repository import AdminRepository, record_action
from server.events.models import EventType
from server.events.service import emit
from server.ledger import corrections
from server.ledger.model import LotKind, TransferView, from_json, to_json, wallet_id
from server.ledger.ops import Idempotency, Op
from server.ledger.tx import LedgerTx, Row
from server.ledger.writer import LedgerWriter
from server.platform import errors
from server.platform.auth import Principal, Role

# What another domain does when an account's flag changes (refill: pause or resume).
FlagHook = Callable[[LedgerTx, str], Awaitable[None]]
# The refill domain's own view of a user's auto-refill (RefillService.view), read outside batches.
RefillView = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Operator:
    """A caller checked to be an admin. Every AdminService method takes one and
    only `AdminService.operator` makes one: the role is checked once, before
    the servicer reads any input, so a non-admin learns nothing from validation."""

    principal: Principal

    @property
    def subject(self) -> str:
        return self.principal.subject


@dataclass
class AdminChange(Op):
    """One admin change, alone in its batch: `change(tx)` makes it and returns
    (user_id, transfers, flagged_reason); the audit row is staged in the same
    transaction (server/admin/repository.py `record_action`)."""

    result_type = AdminResult
    exclusive = True
    audits_itself = True
    actor: str
    action: Action
    reason: str
    request_id: str
    details: dict[str, Any]
    change: Callable[[LedgerTx], Awaitable[tuple[str, list[Row], str]]]
    # `idempotency` is Op's (set after construction): a field declared here
    # would hide the compiled Op's slot, which the compiled writer reads.
    accounts: set[str] = field(default_factory=set)

    def account_ids(self) -> set[str]:
        return self.accounts

    def decode(self, data: bytes) -> AdminResult:
        result = from_json(AdminResult, data)
        result.transactions = [from_json(TransferView, to_json(t)) for t in result.transactions]
        return result

    async def apply(self, tx: LedgerTx) -> AdminResult:
        user_id, rows, flagged = await self.change(tx)
        action_id = stage_audit(tx, self.actor, str(self.action), user_id, self.reason, self.request_id, self.details, rows)
        views = []
        for r in rows:
            side = r["credit_account"] if r["credit_account"].startswith("wallet:") else r["debit_account"]
            views.append(TransferView.of(r, side))
        credits = tx.accounts[wallet_id(user_id)]["balance"] if wallet_id(user_id) in tx.accounts else 0
        return AdminResult(action_id, user_id, views, credits, flagged)


def stage_audit(
    tx: LedgerTx, actor: str, action: str, user_id: str, reason: str, request_id: str, details: dict[str, Any],
    rows: list[Row],
) -> str:
    """Stage one audit row in the change's own transaction; its id."""
    action_id = f"adm_{uuid.uuid4().hex}"
    record_action(tx, {
        "id": action_id,
        "actor": actor,
        "action": action,
        "user_id": user_id,
        "reason": reason,
        "request_id": request_id,
        "details": json.dumps(details, sort_keys=True),
        "transfer_ids": json.dumps([r["id"] for r in rows]),
        "created_at_us": tx.now_us,
    })
    return action_id


def audit_admin_call(tx: LedgerTx, admin: Principal, op: Op, rows: list[Row]) -> None:
    """The audit row of a change made with an admin token through another
    service (Spend, RefundUsage, AwardCredits, UpgradeTier...): the RPC, the
    user whose wallet it touched (empty when it touched none), the transfers
    it made, and in `details` what the operation names of itself
    (`Op.audit_details`: PublishRateCard's version)."""
    idem = op.idempotency
    wallets = [a for r in rows for a in (r["credit_account"], r["debit_account"])] + sorted(op.account_ids())
    user_id = next((corrections.wallet_user(a) for a in wallets if corrections.wallet_user(a)), "") or ""
    method = idem.method if idem is not None and idem.method else type(op).__name__
    stage_audit(tx, admin.subject, method, user_id, "", idem.request_id if idem else "",
                {**op.audit_details(), "service_call": method}, rows)


class AdminService:
    def __init__(self, writer: LedgerWriter, repo: AdminRepository, on_flag_changed: FlagHook,
                 refill_view: RefillView) -> None:
        self.writer = writer
        self.repo = repo
        self.on_flag_changed = on_flag_changed
        self.refill_view = refill_view
        writer.admin_audit = audit_admin_call

    def operator(self, p: Principal, method: str) -> Operator:
        p.require(Role.ADMIN, what=method)
        return Operator(p)

    async def _submit(self, admin: Operator, action: Action, request_id: str, fingerprint: str, reason: str,
                      details: dict[str, Any], change: Any, accounts: set[str] | None = None) -> AdminResult:
        op = AdminChange(
            actor=admin.subject, action=action, reason=reason, request_id=request_id, details=details, change=change,
            accounts=accounts or set(),
        )
        op.idempotency = Idempotency.of_request(admin.principal, str(action), request_id, fingerprint)
        result: AdminResult = await self.writer.submit(op)
        return result

    async def adjust(
        self, admin: Operator, *, user_id: str, amount: int, reason: str, lot: LotKind | None, expires_at_us: int,
        allow_negative: bool, request_id: str, fingerprint: str,
    ) -> AdminResult:
        if amount == 0:
            raise errors.InvalidAmount("amount must not be zero")
        if amount > 0:
            if lot not in (LotKind.EARNED, LotKind.PURCHASED):
                raise errors.InvalidArgument("a grant goes into LOT_KIND_EARNED or LOT_KIND_PURCHASED", reason="INVALID_LOT")
            if expires_at_us and lot != LotKind.EARNED:
                raise errors.InvalidArgument("only promotional (earned) credits expire", reason="INVALID_EXPIRY")
            if allow_negative:
                raise errors.InvalidArgument("allow_negative is for debits", reason="INVALID_ARGUMENT")
        elif lot is not None or expires_at_us:
            raise errors.InvalidArgument("a debit follows the spend order: no lot or expiry", reason="INVALID_LOT")

        async def change(tx: LedgerTx) -> tuple[str, list[Row], str]:
            if expires_at_us and expires_at_us <= tx.now_us:
                raise errors.InvalidArgument("expires_at must be in the future", reason="INVALID_EXPIRY")
            key = Idempotency.of_request(admin.principal, str(Action.ADJUST_BALANCE), request_id, fingerprint).transfer_key
            row = await corrections.adjust(
                tx, user_id, amount, key=key, reason=reason, lot=lot or LotKind.PURCHASED,
                expires_at_us=expires_at_us, allow_negative=allow_negative,
            )
            return user_id, [row], ""

        details = {"amount_millicredits": amount, "lot": str(lot or ""), "expires_at_us": expires_at_us,
                   "allow_negative": allow_negative}
        return await self._submit(admin, Action.ADJUST_BALANCE, request_id, fingerprint, reason, details, change,
                                  {wallet_id(user_id)})

    async def reverse(self, admin: Operator, *, transaction_id: int, reason: str, request_id: str, fingerprint: str) -> AdminResult:

        async def change(tx: LedgerTx) -> tuple[str, list[Row], str]:
            rows = await corrections.reverse(tx, transaction_id, reason)
            first = rows[0]
            user = corrections.wallet_user(first["credit_account"]) or corrections.wallet_user(first["debit_account"])
            return user or "", rows, ""

        return await self._submit(admin, Action.REVERSE_TRANSACTION, request_id, fingerprint, reason,
                                  {"transaction_id": str(transaction_id)}, change)

    async def set_flag(self, admin: Operator, *, user_id: str, reason: str, request_id: str, fingerprint: str) -> AdminResult:

        async def change(tx: LedgerTx) -> tuple[str, list[Row], str]:
            await tx.wallet(user_id)
            # The reason, whole: who set it is the audit row's actor.
            tx.set_user(user_id, flagged_reason=reason)
            emit(tx, EventType.ACCOUNT_FLAGGED, user_id, {"flagged": True, "reason": reason})
            await self.on_flag_changed(tx, user_id)
            return user_id, [], reason

        return await self._submit(admin, Action.SET_ACCOUNT_FLAG, request_id, fingerprint, reason,
                                  {"flag": "disputed"}, change, {wallet_id(user_id)})

    async def clear_flag(self, admin: Operator, *, user_id: str, reason: str, request_id: str, fingerprint: str) -> AdminResult:

        async def change(tx: LedgerTx) -> tuple[str, list[Row], str]:
            await tx.wallet(user_id)
            if not tx.user(user_id)["flagged_reason"]:
                raise errors.FailedPrecondition("the account is not flagged", reason="ACCOUNT_NOT_FLAGGED")
            tx.set_user(user_id, flagged_reason=None)
            emit(tx, EventType.ACCOUNT_FLAGGED, user_id, {"flagged": False, "reason": reason})
            # Exactly as a won dispute: a refill paused for the flag resumes.
            await self.on_flag_changed(tx, user_id)
            return user_id, [], ""

        return await self._submit(admin, Action.CLEAR_ACCOUNT_FLAG, request_id, fingerprint, reason,
                                  {"flag": "disputed"}, change, {wallet_id(user_id)})

    async def actions(
        self, admin: Operator, *, user_id: str, action: str, actor: str, before: tuple[int, str] | None, limit: int
    ) -> list[AdminActionView]:
        return await self.repo.actions(user_id=user_id, action=action, actor=actor, before=before, limit=limit)

    async def account(self, admin: Operator, user_id: str) -> tuple[AccountView, Any]:
        """GetAccount: the account's rows and its auto-refill view, read on the
        read engine (never through the writer: an unknown user is NOT_FOUND,
        not a new wallet)."""
        view = await self.repo.account(user_id)
        if view is None:
            raise errors.NotFound(f"no account for user {user_id}", reason="ACCOUNT_NOT_FOUND")
        return view, await self.refill_view(user_id)
