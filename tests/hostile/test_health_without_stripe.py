"""Without Stripe configured, Health/List reports NOT_SERVING for exactly
the services that cannot serve: those whose every RPC answers
STRIPE_NOT_CONFIGURED. Each RPC of the three Stripe-facing services is
called to find out, so the answer is measured, not assumed."""

from __future__ import annotations

from typing import Any

import grpc
from flownexus.billing.v1 import common_pb2, payments_pb2, refill_pb2, tier_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Running, auth, error_info


async def _outcome(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return error_info(exc).reason
    return "OK"


async def test_health_names_exactly_the_services_that_cannot_serve(sqlite_server: Running) -> None:
    s, me, ops = sqlite_server.s, auth("nostripe"), auth("ops", "admin")
    calls: dict[str, list[Any]] = {
        "flownexus.billing.v1.PaymentsService": [
            s.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(amount_cents=1_000, request_id="l"), metadata=me),
            s.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id="pay_1"), metadata=me),
            s.payments.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=me),
            s.payments.TopUp(payments_pb2.TopUpRequest(amount_cents=1_000, request_id="t"), metadata=me),
        ],
        "flownexus.billing.v1.RefillService": [
            s.refill.ConfigureAutoRefill(refill_pb2.ConfigureAutoRefillRequest(
                enabled=True, threshold_millicredits=10_000, amount_cents=1_000, request_id="c"), metadata=me),
            s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=me),
            s.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(request_id="s"), metadata=me),
        ],
        "flownexus.billing.v1.TierService": [
            s.tier.ListTiers(tier_pb2.ListTiersRequest(), metadata=me),
            s.tier.GetTier(tier_pb2.GetTierRequest(), metadata=me),
            s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="p"), metadata=me),
            s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(
                user_id="nostripe", tier=common_pb2.TIER_ENTERPRISE, request_id="e"), metadata=ops),
            s.tier.DowngradeTier(tier_pb2.DowngradeTierRequest(tier=common_pb2.TIER_FREE, request_id="d"), metadata=me),
        ],
    }
    outcomes = {name: [await _outcome(c) for c in cs] for name, cs in calls.items()}
    cannot_serve = {name for name, got in outcomes.items() if set(got) == {"STRIPE_NOT_CONFIGURED"}}
    # What the contract says of each, checked as well: links, payments and
    # TopUp need Stripe; tiers and Enterprise upgrades do not; Pro does.
    assert outcomes["flownexus.billing.v1.TierService"][:2] == ["OK", "OK"]
    assert outcomes["flownexus.billing.v1.TierService"][2] != "OK"
    assert outcomes["flownexus.billing.v1.TierService"][3] == "OK"
    answer = await health_pb2_grpc.HealthStub(s.channel).List(health_pb2.HealthListRequest())
    not_serving = {n for n, r in answer.statuses.items() if r.status != health_pb2.HealthCheckResponse.SERVING}
    assert not_serving == cannot_serve, outcomes
    assert answer.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
