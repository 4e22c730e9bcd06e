"""PaymentsService (thin: validate, call the domain, build the proto) and the
Stripe webhook HTTP route."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from flownexus.billing.v1 import payments_pb2, payments_pb2_grpc

from server.grpc import convert, validation
from server.payments import webhooks
from server.payments.models import PaymentKind, PaymentRow, PaymentStatus
from server.payments.pages import page_routes
from server.payments.service import PaymentsService, WebhookRejected
from server.platform.auth import principal
from server.registry import Registry

log = logging.getLogger(__name__)

STATUS: dict[str, payments_pb2.PaymentStatus] = {
    PaymentStatus.PENDING: payments_pb2.PAYMENT_STATUS_PENDING,
    PaymentStatus.PAID: payments_pb2.PAYMENT_STATUS_PAID,
    PaymentStatus.FAILED: payments_pb2.PAYMENT_STATUS_FAILED,
    PaymentStatus.EXPIRED: payments_pb2.PAYMENT_STATUS_EXPIRED,
    PaymentStatus.REFUNDED: payments_pb2.PAYMENT_STATUS_REFUNDED,
    PaymentStatus.PARTIALLY_REFUNDED: payments_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED,
    PaymentStatus.DISPUTED: payments_pb2.PAYMENT_STATUS_DISPUTED,
    PaymentStatus.AMOUNT_MISMATCH: payments_pb2.PAYMENT_STATUS_AMOUNT_MISMATCH,
}
KIND: dict[str, payments_pb2.PaymentKind] = {
    PaymentKind.CHECKOUT: payments_pb2.PAYMENT_KIND_CHECKOUT,
    PaymentKind.AUTO_REFILL: payments_pb2.PAYMENT_KIND_AUTO_REFILL,
    PaymentKind.SUBSCRIPTION: payments_pb2.PAYMENT_KIND_SUBSCRIPTION,
    PaymentKind.TOP_UP: payments_pb2.PAYMENT_KIND_TOP_UP,
}


def payment_pb(row: PaymentRow) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        id=row["id"],
        user_id=row["user_id"],
        date=convert.ts(row["created_at_us"]),
        amount_cents=row["amount_cents"],
        currency=row["currency"],
        status=STATUS.get(row["status"], payments_pb2.PAYMENT_STATUS_UNSPECIFIED),
        credits_millicredits=row["credits"],
        invoice_url=row["receipt_url"] or "",
        kind=KIND.get(row["kind"], payments_pb2.PAYMENT_KIND_UNSPECIFIED),
        failure_reason=row["failure_reason"] or "",
        refunded_cents=row["refunded_cents"],
        payment_url=row["payment_url"] if row["status"] == PaymentStatus.PENDING else "",
    )


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, service: PaymentsService) -> None:
        self.service = service

    async def CreatePaymentLink(
        self, request: payments_pb2.CreatePaymentLinkRequest, context: Any
    ) -> payments_pb2.CreatePaymentLinkResponse:
        link = await self.service.create_link(
            principal(),
            amount_cents=request.amount_cents,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("CreatePaymentLink", request),
            org_id=validation.org_id(request.org_id),
        )
        return payments_pb2.CreatePaymentLinkResponse(
            payment_url=link.payment_url,
            expires_at=convert.ts(link.expires_at_us),
            credits_amount_millicredits=link.credits,
            payment_id=link.payment_id,
        )

    async def TopUp(self, request: payments_pb2.TopUpRequest, context: Any) -> payments_pb2.TopUpResponse:
        done = await self.service.top_up(
            principal(),
            amount_cents=request.amount_cents,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("TopUp", request),
            org_id=validation.org_id(request.org_id),
        )
        return payments_pb2.TopUpResponse(
            payment=payment_pb(done.payment), payment_url=done.payment_url, balance_millicredits=done.balance
        )

    async def GetPayment(self, request: payments_pb2.GetPaymentRequest, context: Any) -> payments_pb2.GetPaymentResponse:
        pid = validation.opaque_id(request.payment_id, field="payment_id", reason="INVALID_PAYMENT_ID")
        return payments_pb2.GetPaymentResponse(payment=payment_pb(await self.service.get(principal(), pid)))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Any
    ) -> payments_pb2.ListPaymentsResponse:
        p = principal()
        size = validation.page_size(request.page_size)
        user = validation.user_id(request.user_id)
        org_id = validation.org_id(request.org_id)
        sig = validation.filters_signature("payments", org_id or p.resolve_user(user))
        before = validation.decode_page_token(request.page_token, sig, int, str)
        rows = await self.service.list(p, user, limit=size + 1, before=before, org_id=org_id)
        resp = payments_pb2.ListPaymentsResponse(payments=[payment_pb(r) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            resp.next_page_token = validation.encode_page_token([last["created_at_us"], last["id"]], sig)
        return resp


def webhook_routes(service: PaymentsService) -> list[web.RouteDef]:
    async def stripe_webhook(request: web.Request) -> web.Response:
        payload = await request.read()  # the raw body: the signature covers these bytes
        try:
            outcome = await service.receive_webhook(payload, request.headers.get("Stripe-Signature"))
        except WebhookRejected as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        except Exception:
            # Nothing was applied (one transaction); Stripe retries on 5xx.
            log.exception("stripe webhook handling failed")
            return web.json_response({"error": "handler failed, retry later"}, status=500)
        return web.json_response({"received": True, "outcome": outcome})

    return [web.post("/webhooks/stripe", stripe_webhook)]


def register(reg: Registry, service: PaymentsService) -> None:
    reg.servicer(payments_pb2_grpc.add_PaymentsServiceServicer_to_server, PaymentsServicer(service))
    webhooks.register(service.events)  # purchases, refunds, disputes: payments' own Stripe events
    reg.routes.extend(webhook_routes(service))
    reg.routes.extend(page_routes(service))
    reg.job("reconcile_payments", service.reconcile)
    reg.on_stop.append(service.gateway.close)
