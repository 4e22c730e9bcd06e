"""AdminService: proto in, admin rules, proto out."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import admin_pb2, admin_pb2_grpc, common_pb2, tier_pb2

from server.admin.service import AdminService
from server.grpc import Ctx, convert, validation
from server.ledger.model import HoldView, LotKind
from server.payments.grpc import payment_pb
from server.platform import errors
from server.platform.auth import principal
from server.refill.grpc import auto_refill_pb
from server.registry import Registry
from server.tiers.grpc import SUBSCRIPTION_STATUS

_LOTS = {common_pb2.LOT_KIND_EARNED: LotKind.EARNED, common_pb2.LOT_KIND_PURCHASED: LotKind.PURCHASED,
         common_pb2.LOT_KIND_ALLOWANCE: LotKind.ALLOWANCE}


def _refill_attempt(job: dict[str, Any]) -> admin_pb2.RefillAttempt:
    return admin_pb2.RefillAttempt(
        id=job["id"], status=job["status"], amount_cents=job["amount_cents"], credits_millicredits=job["credits"],
        attempts=job["attempts"], payment_id=job["payment_id"] or "", last_error=job["last_error"] or "",
        create_time=convert.ts(job["created_at_us"]), update_time=convert.ts(job["updated_at_us"]),
        next_run_time=convert.ts(job["next_run_at_us"]),
    )


def _account_payment(row: dict[str, Any]) -> admin_pb2.AccountPayment:
    return admin_pb2.AccountPayment(
        payment=payment_pb(row),  # type: ignore[arg-type]
        checkout_session_id=row["checkout_session_id"] or "", payment_intent_id=row["payment_intent_id"] or "",
        charge_id=row["charge_id"] or "", dispute_id=row["dispute_id"] or "", paid_time=convert.ts(row["paid_at_us"]),
    )


def _reason(value: str, max_len: int = 500) -> str:
    reason = validation.text(value, field="reason", max_len=max_len)
    if not reason.strip():
        raise errors.InvalidArgument("reason is required", reason="REASON_REQUIRED", metadata={"field": "reason"})
    return reason


FLAG_REASON_MAX = 200


def _flag(value: int) -> None:
    validation.enum(value, admin_pb2.AccountFlag, field="flag")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: AdminService) -> None:
        self.admin = admin

    async def AdjustBalance(self, request: admin_pb2.AdjustBalanceRequest, context: Ctx) -> admin_pb2.AdjustBalanceResponse:
        p = self.admin.operator(principal(), "AdjustBalance")
        amount = request.amount_millicredits
        validation.amount(abs(amount) if amount != -(2**63) else 2**63)
        lot = None
        if request.lot:
            validation.enum(request.lot, common_pb2.LotKind, field="lot")
            lot = _LOTS[request.lot]
        expires = validation.timestamp(request.expires_at, request.HasField("expires_at"), field="expires_at") or 0
        result = await self.admin.adjust(
            p,
            user_id=validation.wallet_owner(request.user_id, required=True),
            amount=amount,
            reason=_reason(request.reason),
            lot=lot,
            expires_at_us=expires,
            allow_negative=request.allow_negative,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("AdjustBalance", request),
        )
        return admin_pb2.AdjustBalanceResponse(
            transaction=convert.transaction(result.transactions[0]), credits_millicredits=result.credits,
            action_id=result.action_id,
        )

    async def ReverseTransaction(
        self, request: admin_pb2.ReverseTransactionRequest, context: Ctx
    ) -> admin_pb2.ReverseTransactionResponse:
        p = self.admin.operator(principal(), "ReverseTransaction")
        result = await self.admin.reverse(
            p,
            transaction_id=validation.transaction_id(request.transaction_id),
            reason=_reason(request.reason),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("ReverseTransaction", request),
        )
        return admin_pb2.ReverseTransactionResponse(
            transactions=[convert.transaction(t) for t in result.transactions], action_id=result.action_id
        )

    async def SetAccountFlag(self, request: admin_pb2.SetAccountFlagRequest, context: Ctx) -> admin_pb2.SetAccountFlagResponse:
        p = self.admin.operator(principal(), "SetAccountFlag")
        _flag(request.flag)
        result = await self.admin.set_flag(
            p,
            user_id=validation.wallet_owner(request.user_id, required=True),
            # It becomes the account's flagged_reason, whole (at most 200 characters).
            reason=_reason(request.reason, max_len=FLAG_REASON_MAX),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("SetAccountFlag", request),
        )
        return admin_pb2.SetAccountFlagResponse(
            user_id=result.user_id, flagged_reason=result.flagged_reason, action_id=result.action_id
        )

    async def ClearAccountFlag(
        self, request: admin_pb2.ClearAccountFlagRequest, context: Ctx
    ) -> admin_pb2.ClearAccountFlagResponse:
        p = self.admin.operator(principal(), "ClearAccountFlag")
        _flag(request.flag)
        result = await self.admin.clear_flag(
            p,
            user_id=validation.wallet_owner(request.user_id, required=True),
            reason=_reason(request.reason),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("ClearAccountFlag", request),
        )
        return admin_pb2.ClearAccountFlagResponse(user_id=result.user_id, action_id=result.action_id)

    async def ListAdminActions(
        self, request: admin_pb2.ListAdminActionsRequest, context: Ctx
    ) -> admin_pb2.ListAdminActionsResponse:
        p = self.admin.operator(principal(), "ListAdminActions")
        size = validation.page_size(request.page_size)
        user_id = validation.wallet_owner(request.user_id)
        action = validation.text(request.action, field="action", max_len=64)
        actor = validation.text(request.actor, field="actor", max_len=128)
        sig = validation.filters_signature(user_id, action, actor)
        before = validation.decode_page_token(request.page_token, sig, int, str)
        rows = await self.admin.actions(
            p, user_id=user_id, action=action, actor=actor, before=before, limit=size + 1,
        )
        resp = admin_pb2.ListAdminActionsResponse()
        for a in rows[:size]:
            resp.actions.append(admin_pb2.AdminAction(
                id=a.id, actor=a.actor, action=a.action, user_id=a.user_id, reason=a.reason, request_id=a.request_id,
                transaction_ids=[str(i) for i in a.transfer_ids], create_time=convert.ts(a.created_at_us),
                details_json=a.details,
            ))
        if len(rows) > size:
            last = rows[size - 1]
            resp.next_page_token = validation.encode_page_token([last.created_at_us, last.id], sig)
        return resp

    async def GetAccount(self, request: admin_pb2.GetAccountRequest, context: Ctx) -> admin_pb2.GetAccountResponse:
        p = self.admin.operator(principal(), "GetAccount")
        view, refill = await self.admin.account(p, validation.wallet_owner(request.user_id, required=True))
        w, sub = view.wallet, view.subscription or {}
        return admin_pb2.GetAccountResponse(
            user_id=view.user_id,
            credits_millicredits=w["balance"],
            pending_millicredits=w["pending"],
            earned_total_millicredits=w["earned_total"],
            spent_total_millicredits=w["spent_total"],
            unlimited_overdraft=bool(w["unlimited_overdraft"]),
            lots=[convert.lot(r) for r in view.lots],
            active_holds=[convert.hold(HoldView(
                id=h["id"], user_id=h["user_id"], amount=h["amount"], status=h["status"],
                expires_at_us=h["expires_at_us"], captured=h["captured"], category=h["category"],
            )) for h in view.holds],
            flagged_reason=w["flagged_reason"] or "",
            tier=convert.tier_pb(w["tier"]),
            period_start=convert.ts(w["period_start_us"]),
            period_end=convert.ts(w["period_end_us"]),
            subscription_status=SUBSCRIPTION_STATUS.get(sub.get("status") or "none", tier_pb2.SUBSCRIPTION_STATUS_NONE),
            stripe_subscription_id=sub.get("stripe_subscription_id") or "",
            stripe_customer_id=w["stripe_customer_id"] or sub.get("stripe_customer_id") or "",
            auto_refill=auto_refill_pb(refill),
            refill_attempts=[_refill_attempt(j) for j in view.refill_jobs],
            payments=[_account_payment(r) for r in view.payments],
        )


def register(reg: Registry, service: AdminService) -> None:
    reg.servicer(admin_pb2_grpc.add_AdminServiceServicer_to_server, AdminServicer(service))
