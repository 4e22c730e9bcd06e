"""RefillService (thin: validate, call the domain, build the proto)."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import refill_pb2, refill_pb2_grpc

from server.grpc import convert, validation
from server.payments.events import EventRouter
from server.platform.auth import principal
from server.refill.models import ViewState
from server.refill.service import AutoRefillView, RefillService, on_stripe_event
from server.refill.worker import RefillWorker
from server.registry import Registry

STATE = {
    ViewState.DISABLED: refill_pb2.AUTO_REFILL_STATE_DISABLED,
    ViewState.IDLE: refill_pb2.AUTO_REFILL_STATE_IDLE,
    ViewState.IN_FLIGHT: refill_pb2.AUTO_REFILL_STATE_IN_FLIGHT,
    ViewState.RETRY_SCHEDULED: refill_pb2.AUTO_REFILL_STATE_RETRY_SCHEDULED,
    ViewState.ACTION_REQUIRED: refill_pb2.AUTO_REFILL_STATE_ACTION_REQUIRED,
    ViewState.PAUSED: refill_pb2.AUTO_REFILL_STATE_PAUSED,
}


def auto_refill_pb(v: AutoRefillView) -> refill_pb2.AutoRefill:
    msg = refill_pb2.AutoRefill(
        enabled=v.enabled,
        threshold_millicredits=v.threshold,
        amount_cents=v.amount_cents,
        credits_amount_millicredits=v.credits,
        next_charge=v.next_charge,
        monthly_cap_cents=v.monthly_cap_cents,
        monthly_used_cents=v.monthly_used_cents,
        state=STATE.get(v.state, refill_pb2.AUTO_REFILL_STATE_UNSPECIFIED),
        paused_reason=v.paused_reason,
        recovery_url=v.recovery_url,
        last_failure_reason=v.last_failure_reason,
    )
    if v.pm_last4:
        msg.payment_method.CopyFrom(
            refill_pb2.PaymentMethod(brand=v.pm_brand, last4=v.pm_last4, exp_month=v.pm_exp_month, exp_year=v.pm_exp_year)
        )
    retry_at = convert.ts(v.next_retry_at_us)
    if retry_at is not None:
        msg.next_retry_at.CopyFrom(retry_at)
    return msg


class RefillServicer(refill_pb2_grpc.RefillServiceServicer):
    def __init__(self, service: RefillService) -> None:
        self.service = service

    async def ConfigureAutoRefill(
        self, request: refill_pb2.ConfigureAutoRefillRequest, context: Any
    ) -> refill_pb2.ConfigureAutoRefillResponse:
        p = principal()
        request_id = validation.request_id(request.request_id)
        view = await self.service.configure(
            p,
            enabled=request.enabled,
            threshold=request.threshold_millicredits,
            amount_cents=request.amount_cents,
            request_id=request_id,
            fingerprint=validation.fingerprint("ConfigureAutoRefill", request),
            org_id=validation.org_id(request.org_id),
        )
        return refill_pb2.ConfigureAutoRefillResponse(auto_refill=auto_refill_pb(view))

    async def GetAutoRefill(
        self, request: refill_pb2.GetAutoRefillRequest, context: Any
    ) -> refill_pb2.GetAutoRefillResponse:
        p = principal()
        view = await self.service.get(p, validation.user_id(request.user_id), validation.org_id(request.org_id))
        return refill_pb2.GetAutoRefillResponse(auto_refill=auto_refill_pb(view))

    async def CreateSetupLink(
        self, request: refill_pb2.CreateSetupLinkRequest, context: Any
    ) -> refill_pb2.CreateSetupLinkResponse:
        p = principal()
        url, expires_us = await self.service.setup_link(
            p, validation.request_id(request.request_id), validation.org_id(request.org_id))
        return refill_pb2.CreateSetupLinkResponse(setup_url=url, expires_at=convert.ts(expires_us))


def register(reg: Registry, service: RefillService, worker: RefillWorker, stripe_events: EventRouter) -> None:
    reg.servicer(refill_pb2_grpc.add_RefillServiceServicer_to_server, RefillServicer(service))
    # The trigger runs in every ledger batch: a spend that crosses the
    # threshold queues its refill in the same transaction.
    reg.ledger_extension(service.trigger)
    stripe_events.after_every_event(on_stripe_event)
    reg.job("auto_refill", worker.run)
