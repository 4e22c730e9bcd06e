"""EarningsService: proto in, earnings rules, proto out."""

from __future__ import annotations

from flownexus.billing.v1 import common_pb2, earnings_pb2, earnings_pb2_grpc

from server.earnings.service import EarningsService
from server.grpc import Ctx, convert, validation
from server.platform.auth import principal
from server.registry import Registry


class EarningsServicer(earnings_pb2_grpc.EarningsServiceServicer):
    def __init__(self, earnings: EarningsService) -> None:
        self.earnings = earnings

    async def AwardCredits(
        self, request: earnings_pb2.AwardCreditsRequest, context: Ctx
    ) -> earnings_pb2.AwardCreditsResponse:
        result = await self.earnings.award(
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
        user = await self.earnings.wallet(p, validation.user_id(request.user_id), validation.org_id(request.org_id))
        s = await self.earnings.wallet_stats(user)
        return earnings_pb2.GetUserStatsResponse(
            user_id=user,
            credits_earned_millicredits=s.credits_earned,
            credits_spent_millicredits=s.credits_spent,
            apps_published=s.apps_published,
            challenges_completed=s.challenges_completed,
            app_revenue_millicredits=s.app_revenue,
        )


def register(reg: Registry, service: EarningsService) -> None:
    reg.servicer(earnings_pb2_grpc.add_EarningsServiceServicer_to_server, EarningsServicer(service))
