"""Thin gRPC servicers: validate the proto, call the domain, build the proto.

Authorization and rules live in the domain services; errors map to status in
server/api/interceptors.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from flownexus.billing.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    common_pb2,
    earnings_pb2,
    earnings_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server import errors
from server.api import convert, validation
from server.auth import principal
from server.domain.ledger import LedgerService
from server.ledger.model import BalanceEvent
from server.watch import RESYNC, WatchHub

Ctx: TypeAlias = grpc.aio.ServicerContext


class BalanceServicer(balance_pb2_grpc.BalanceServiceServicer):
    def __init__(self, ledger: LedgerService, hub: WatchHub) -> None:
        self.ledger = ledger
        self.hub = hub

    async def CheckBalance(self, request: balance_pb2.CheckBalanceRequest, context: Ctx) -> balance_pb2.CheckBalanceResponse:
        state, refill = await self.ledger.check_balance(principal())
        return balance_pb2.CheckBalanceResponse(
            credits_millicredits=state.credits,
            auto_refill=refill.enabled,
            threshold_millicredits=refill.threshold,
            tier=convert.tier_pb(state.tier),  # type: ignore[arg-type]
            pending_millicredits=state.pending,
            auto_refill_paused_reason=refill.paused_reason,
        )

    async def GetBalance(self, request: balance_pb2.GetBalanceRequest, context: Ctx) -> balance_pb2.GetBalanceResponse:
        user = validation.user_id(request.user_id)
        return convert.balance(await self.ledger.get_balance(principal(), user))

    async def WatchBalance(
        self, request: balance_pb2.WatchBalanceRequest, context: Ctx
    ) -> AsyncIterator[balance_pb2.WatchBalanceResponse]:
        user = principal().resolve_user(validation.user_id(request.user_id))
        await self.ledger.wallet(user)  # a new wallet's first grant belongs to the snapshot
        # Subscribe before the snapshot so that no change falls in between.
        sub = self.hub.subscribe(user)
        try:
            yield await self._snapshot(user, coalesced=False)
            while True:
                event = await sub.queue.get()
                if event is RESYNC:
                    yield await self._snapshot(user, coalesced=True)
                else:
                    yield self._event(event)
        finally:
            self.hub.unsubscribe(sub)

    async def _snapshot(self, user: str, *, coalesced: bool) -> balance_pb2.WatchBalanceResponse:
        state = await self.ledger.wallet(user)
        return balance_pb2.WatchBalanceResponse(
            type=balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT,
            user_id=user,
            credits_millicredits=state.credits,
            pending_millicredits=state.pending,
            time=convert.ts(self.ledger.clock.now_us()),
            coalesced=coalesced,
            tier=convert.tier_pb(state.tier),  # type: ignore[arg-type]
        )

    def _event(self, event: BalanceEvent) -> balance_pb2.WatchBalanceResponse:
        msg = balance_pb2.WatchBalanceResponse(
            type=EVENT_TYPES.get(event.kind, balance_pb2.BALANCE_EVENT_TYPE_UNSPECIFIED),
            user_id=event.user_id,
            message=event.message,
            payment_url=event.payment_url,
            time=convert.ts(event.transfer.created_at_us if event.transfer else self.ledger.clock.now_us()),
        )
        if event.credits is not None:
            msg.credits_millicredits = event.credits
        if event.pending is not None:
            msg.pending_millicredits = event.pending
        if event.transfer is not None:
            msg.transaction.CopyFrom(convert.transaction(event.transfer))
        return msg


EVENT_TYPES = {
    "transfer": balance_pb2.BALANCE_EVENT_TYPE_TRANSFER,
    "refill_succeeded": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED,
    "refill_failed": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_FAILED,
    "refill_paused": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_PAUSED,
    "action_required": balance_pb2.BALANCE_EVENT_TYPE_ACTION_REQUIRED,
    "tier_changed": balance_pb2.BALANCE_EVENT_TYPE_TIER_CHANGED,
    "payment_failed": balance_pb2.BALANCE_EVENT_TYPE_PAYMENT_FAILED,
}


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def Spend(self, request: usage_pb2.SpendRequest, context: Ctx) -> usage_pb2.SpendResponse:
        result = await self.ledger.spend(
            principal(),
            user_id=validation.user_id(request.user_id),
            amount=validation.amount(request.amount_millicredits),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Spend", request),
            category=validation.category(request.category),
            description=validation.text(request.description, field="description"),
            metadata=validation.metadata(request.metadata),
            app_id=validation.text(request.app_id, field="app_id", max_len=128),
            publisher_user_id=validation.user_id(request.publisher_user_id, field="publisher_user_id"),
        )
        return usage_pb2.SpendResponse(
            transaction=convert.transaction(result.transaction), credits_millicredits=result.credits
        )

    async def Reserve(self, request: usage_pb2.ReserveRequest, context: Ctx) -> usage_pb2.ReserveResponse:
        ttl = request.ttl.seconds + request.ttl.nanos / 1e9 if request.HasField("ttl") else 0.0
        result = await self.ledger.reserve(
            principal(),
            user_id=validation.user_id(request.user_id),
            amount=validation.amount(request.amount_millicredits),
            ttl_seconds=ttl,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Reserve", request),
            category=validation.category(request.category),
            description=validation.text(request.description, field="description"),
        )
        return usage_pb2.ReserveResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)

    async def Capture(self, request: usage_pb2.CaptureRequest, context: Ctx) -> usage_pb2.CaptureResponse:
        if request.amount_millicredits < 0:
            validation.amount(request.amount_millicredits)
        result = await self.ledger.capture(
            principal(),
            hold_id=validation.opaque_id(request.hold_id, field="hold_id", reason="INVALID_HOLD_ID"),
            amount=request.amount_millicredits,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Capture", request),
            description=validation.text(request.description, field="description"),
            app_id=validation.text(request.app_id, field="app_id", max_len=128),
            publisher_user_id=validation.user_id(request.publisher_user_id, field="publisher_user_id"),
        )
        resp = usage_pb2.CaptureResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)
        if result.transaction:
            resp.transaction.CopyFrom(convert.transaction(result.transaction))
        return resp

    async def Release(self, request: usage_pb2.ReleaseRequest, context: Ctx) -> usage_pb2.ReleaseResponse:
        result = await self.ledger.release(
            principal(),
            hold_id=validation.opaque_id(request.hold_id, field="hold_id", reason="INVALID_HOLD_ID"),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Release", request),
        )
        return usage_pb2.ReleaseResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def ListTransactions(
        self, request: history_pb2.ListTransactionsRequest, context: Ctx
    ) -> history_pb2.ListTransactionsResponse:
        user = validation.user_id(request.user_id)
        size = validation.page_size(request.page_size)
        kinds = [
            convert.kind_of(validation.enum(t, common_pb2.TransactionType, field="types"))
            for t in request.types
        ]
        start = convert.us_of(request.start_time, request.HasField("start_time"))
        end = convert.us_of(request.end_time, request.HasField("end_time"))
        sig = validation.filters_signature(user, sorted(kinds), start, end)
        before = validation.decode_page_token(request.page_token, sig)
        if before is not None and not isinstance(before, int):
            raise errors.InvalidArgument("page_token is invalid", reason="INVALID_PAGE_TOKEN")
        rows = await self.ledger.history(
            principal(), user_id=user, limit=size + 1, before_id=before, kinds=kinds, start_us=start, end_us=end
        )
        resp = history_pb2.ListTransactionsResponse(transactions=[convert.transaction(t) for t in rows[:size]])
        if len(rows) > size:
            resp.next_page_token = validation.encode_page_token(rows[size - 1].id, sig)
        return resp

    async def GetSpendingReport(
        self, request: history_pb2.GetSpendingReportRequest, context: Ctx
    ) -> history_pb2.GetSpendingReportResponse:
        state, rows, start, end = await self.ledger.spending_report(
            principal(),
            validation.user_id(request.user_id),
            convert.us_of(request.start_time, request.HasField("start_time")),
            convert.us_of(request.end_time, request.HasField("end_time")),
        )
        total = sum(r[1] for r in rows)
        # The burn rate is per elapsed day: a window reaching into the future
        # must not dilute it (and a wholly future window has none).
        elapsed = min(end, self.ledger.clock.now_us()) - start
        burn = int(total / max(elapsed / 86_400_000_000, 1 / 24)) if elapsed > 0 else 0
        return history_pb2.GetSpendingReportResponse(
            categories=[history_pb2.CategorySpend(category=c, spent_millicredits=s, operations=n) for c, s, n in rows],
            total_spent_millicredits=total,
            burn_rate_millicredits_per_day=burn,
            credits_millicredits=state.credits,
            days_left=round(max(state.credits, 0) / burn, 1) if burn > 0 else -1.0,
            start_time=convert.ts(start),
            end_time=convert.ts(end),
        )


class EarningsServicer(earnings_pb2_grpc.EarningsServiceServicer):
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def AwardCredits(
        self, request: earnings_pb2.AwardCreditsRequest, context: Ctx
    ) -> earnings_pb2.AwardCreditsResponse:
        result = await self.ledger.award(
            principal(),
            user_id=validation.user_id(request.user_id, required=True),
            amount=validation.amount(request.amount_millicredits),
            reason=validation.text(request.reason, field="reason"),
            source=convert.source_name(validation.enum(request.source, common_pb2.EarningSource, field="source")),
            source_ref=validation.text(request.source_ref, field="source_ref", max_len=128),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("AwardCredits", request),
        )
        return earnings_pb2.AwardCreditsResponse(
            transaction=convert.transaction(result.transaction), credits_millicredits=result.credits
        )

    async def GetUserStats(
        self, request: earnings_pb2.GetUserStatsRequest, context: Ctx
    ) -> earnings_pb2.GetUserStatsResponse:
        p = principal()
        user = p.resolve_user(validation.user_id(request.user_id))
        s = await self.ledger.stats(p, user)
        return earnings_pb2.GetUserStatsResponse(
            user_id=user,
            credits_earned_millicredits=s.credits_earned,
            credits_spent_millicredits=s.credits_spent,
            apps_published=s.apps_published,
            challenges_completed=s.challenges_completed,
            app_revenue_millicredits=s.app_revenue,
        )
