"""TierService: thin servicer over server/tiers/service.py."""

from __future__ import annotations

from flownexus.billing.v1 import common_pb2, tier_pb2, tier_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.payments.events import EventRouter
from server.platform.auth import principal
from server.registry import Registry
from server.tiers.events import TierEvents
from server.tiers.models import TierSpec
from server.tiers.service import TierService

SUBSCRIPTION_STATUS = {
    "none": tier_pb2.SUBSCRIPTION_STATUS_NONE,
    "incomplete": tier_pb2.SUBSCRIPTION_STATUS_INCOMPLETE,
    "active": tier_pb2.SUBSCRIPTION_STATUS_ACTIVE,
    "past_due": tier_pb2.SUBSCRIPTION_STATUS_PAST_DUE,
    "canceled": tier_pb2.SUBSCRIPTION_STATUS_CANCELED,
}
UPGRADE_STATUS = {
    "completed": tier_pb2.UPGRADE_STATUS_COMPLETED,
    "payment_required": tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED,
    "pending": tier_pb2.UPGRADE_STATUS_PENDING,
}


def tier_info(t: TierSpec) -> tier_pb2.TierInfo:
    return tier_pb2.TierInfo(
        tier=convert.tier_pb(t.name),
        display_name=t.display_name,
        monthly_credits_millicredits=t.monthly_millicredits,
        price_cents=t.price_cents,
        custom_price=t.custom_price,
        unlimited=t.unlimited,
        features=list(t.features),
    )


class TierServicer(tier_pb2_grpc.TierServiceServicer):
    def __init__(self, service: TierService) -> None:
        self.service = service

    async def ListTiers(self, request: tier_pb2.ListTiersRequest, context: Ctx) -> tier_pb2.ListTiersResponse:
        principal()
        return tier_pb2.ListTiersResponse(tiers=[tier_info(t) for t in self.service.tiers.values()])

    async def GetTier(self, request: tier_pb2.GetTierRequest, context: Ctx) -> tier_pb2.GetTierResponse:
        v = await self.service.get(
            principal(), validation.user_id(request.user_id), validation.org_id(request.org_id)
        )
        resp = tier_pb2.GetTierResponse(
            tier=convert.tier_pb(v.tier),
            period_start=convert.ts(v.period_start_us),
            period_end=convert.ts(v.period_end_us),
            monthly_credits_millicredits=v.monthly,
            allowance_remaining_millicredits=v.allowance_left,
            subscription_status=SUBSCRIPTION_STATUS.get(v.subscription_status, tier_pb2.SUBSCRIPTION_STATUS_NONE),
            payment_url=v.payment_url,
        )
        if v.pending_tier:
            resp.pending_tier = convert.tier_pb(v.pending_tier)
            at = convert.ts(v.pending_change_at_us)
            if at is not None:
                resp.pending_change_at.CopyFrom(at)
        return resp


    async def UpgradeTier(self, request: tier_pb2.UpgradeTierRequest, context: Ctx) -> tier_pb2.UpgradeTierResponse:
        tier = validation.enum(request.tier, common_pb2.Tier, field="tier")
        c = await self.service.upgrade(
            principal(),
            user_id=validation.user_id(request.user_id),
            tier=convert.tier_name(tier),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("UpgradeTier", request),
            monthly=request.monthly_credits_millicredits,
            org_id=validation.org_id(request.org_id),
        )
        return tier_pb2.UpgradeTierResponse(
            new_tier=convert.tier_pb(c.new_tier),
            monthly_credits_millicredits=c.monthly,
            effective_date=convert.ts(c.effective_us),
            status=UPGRADE_STATUS[c.status],
            payment_url=c.payment_url,
        )

    async def DowngradeTier(
        self, request: tier_pb2.DowngradeTierRequest, context: Ctx
    ) -> tier_pb2.DowngradeTierResponse:
        tier = validation.enum(request.tier, common_pb2.Tier, field="tier", allow_unspecified=True)
        c = await self.service.downgrade(
            principal(),
            user_id=validation.user_id(request.user_id),
            tier=convert.tier_name(tier) if tier else "",
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("DowngradeTier", request),
            org_id=validation.org_id(request.org_id),
        )
        return tier_pb2.DowngradeTierResponse(
            new_tier=convert.tier_pb(c.new_tier),
            monthly_credits_millicredits=c.monthly,
            effective_date=convert.ts(c.effective_us),
        )


def register(reg: Registry, service: TierService, events: TierEvents, stripe_events: EventRouter) -> None:
    reg.servicer(tier_pb2_grpc.add_TierServiceServicer_to_server, TierServicer(service))
    events.register(stripe_events)
    reg.job("cancel_lapsed_subscriptions", service.cancel_lapsed)
