"""BalanceService: proto in, balance rules, proto out; the watch stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flownexus.billing.v1 import balance_pb2, balance_pb2_grpc

from server.balance.service import BalanceService
from server.balance.watch import RESYNC, WatchHub
from server.grpc import Ctx, convert, validation
from server.ledger.model import BalanceEvent
from server.platform import errors
from server.platform.auth import Principal, Role, principal
from server.platform.clock import Clock
from server.registry import Registry


class BalanceServicer(balance_pb2_grpc.BalanceServiceServicer):
    def __init__(self, balance: BalanceService, hub: WatchHub, clock: Clock) -> None:
        self.balance = balance
        self.hub = hub
        self.clock = clock

    async def CheckBalance(self, request: balance_pb2.CheckBalanceRequest, context: Ctx) -> balance_pb2.CheckBalanceResponse:
        state, refill = await self.balance.check_balance(principal(), validation.org_id(request.org_id))
        return balance_pb2.CheckBalanceResponse(
            credits_millicredits=state.credits,
            auto_refill=refill.enabled,
            threshold_millicredits=refill.threshold,
            tier=convert.tier_pb(state.tier),
            pending_millicredits=state.pending,
            auto_refill_paused_reason=refill.paused_reason,
        )

    async def GetBalance(self, request: balance_pb2.GetBalanceRequest, context: Ctx) -> balance_pb2.GetBalanceResponse:
        user = validation.user_id(request.user_id)
        return convert.balance(await self.balance.get_balance(principal(), user, validation.org_id(request.org_id)))

    async def WatchBalance(
        self, request: balance_pb2.WatchBalanceRequest, context: Ctx
    ) -> AsyncIterator[balance_pb2.WatchBalanceResponse]:
        p, user_id, org_id = principal(), validation.user_id(request.user_id), validation.org_id(request.org_id)
        user = await self.balance.watched(p, user_id, org_id)
        member = _stream_member(p, user_id, org_id)
        await self.balance.wallet(user)  # a new wallet's first grant belongs to the snapshot
        # Subscribe before the snapshot so that no change falls in between.
        sub = self.hub.subscribe(user)
        try:
            yield await self._snapshot(user, coalesced=False)
            while True:
                event = await sub.queue.get()
                if event is RESYNC:
                    if member:  # events were dropped, a removal perhaps: asked again (one indexed read)
                        await self.balance.watched(p, user_id, org_id)
                    yield await self._snapshot(user, coalesced=True)
                elif event.kind == MEMBER_REMOVED:
                    if member and event.member == member:
                        # The member's access ended with the removal's commit: so does the stream.
                        raise errors.PermissionDenied(
                            "the caller is no longer a member of this org", reason="NOT_ORG_MEMBER",
                            metadata={"org_id": user},
                        )
                else:
                    yield self._event(event)
        finally:
            self.hub.unsubscribe(sub)

    async def _snapshot(self, user: str, *, coalesced: bool) -> balance_pb2.WatchBalanceResponse:
        state = await self.balance.wallet(user)
        return balance_pb2.WatchBalanceResponse(
            type=balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT,
            user_id=user,
            credits_millicredits=state.credits,
            pending_millicredits=state.pending,
            time=convert.ts(self.clock.now_us()),
            coalesced=coalesced,
            tier=convert.tier_pb(state.tier),
        )

    def _event(self, event: BalanceEvent) -> balance_pb2.WatchBalanceResponse:
        msg = balance_pb2.WatchBalanceResponse(
            type=EVENT_TYPES.get(event.kind, balance_pb2.BALANCE_EVENT_TYPE_UNSPECIFIED),
            user_id=event.user_id,
            message=event.message,
            payment_url=event.payment_url,
            time=convert.ts(event.transfer.created_at_us if event.transfer else self.clock.now_us()),
            key_id=event.key_id,
        )
        if event.credits is not None:
            msg.credits_millicredits = event.credits
        if event.pending is not None:
            msg.pending_millicredits = event.pending
        if event.transfer is not None:
            msg.transaction.CopyFrom(convert.transaction(event.transfer))
        return msg


def _stream_member(p: Principal, user_id: str, org_id: str) -> str:
    """The org member a stream reads for, whose removal ends it ("" for none)."""
    if p.key_id:
        return p.member  # a key made on an org's wallet: its maker
    if not org_id:
        return ""
    if p.role == Role.USER:
        return p.subject
    return user_id if p.role == Role.SERVICE else ""


# An org member's removal, told to the org wallet's open streams (not an API event type).
MEMBER_REMOVED = "member_removed"

EVENT_TYPES = {
    "transfer": balance_pb2.BALANCE_EVENT_TYPE_TRANSFER,
    "refill_succeeded": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED,
    "refill_failed": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_FAILED,
    "refill_paused": balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_PAUSED,
    "action_required": balance_pb2.BALANCE_EVENT_TYPE_ACTION_REQUIRED,
    "tier_changed": balance_pb2.BALANCE_EVENT_TYPE_TIER_CHANGED,
    "payment_failed": balance_pb2.BALANCE_EVENT_TYPE_PAYMENT_FAILED,
    "budget_warning": balance_pb2.BALANCE_EVENT_TYPE_BUDGET_WARNING,
    "budget_exhausted": balance_pb2.BALANCE_EVENT_TYPE_BUDGET_EXHAUSTED,
    "budget_reset": balance_pb2.BALANCE_EVENT_TYPE_BUDGET_RESET,
    "balance_low": balance_pb2.BALANCE_EVENT_TYPE_BALANCE_LOW,
    "balance_recovered": balance_pb2.BALANCE_EVENT_TYPE_BALANCE_RECOVERED,
}


def register(reg: Registry, service: BalanceService, hub: WatchHub, clock: Clock) -> None:
    reg.servicer(balance_pb2_grpc.add_BalanceServiceServicer_to_server, BalanceServicer(service, hub, clock))
