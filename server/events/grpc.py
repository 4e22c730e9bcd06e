"""EventsService: proto in, events rules, proto out; the event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flownexus.billing.v1 import events_pb2, events_pb2_grpc

from server.events.delivery import DeliveryWorker, check_url
from server.events.models import (
    ID_PREFIX,
    AlertsView,
    DeliveryStatus,
    DeliveryView,
    EndpointView,
    EventView,
    event_name,
)
from server.events.repository import ALERT_TABLES
from server.events.service import EventsService, known_types
from server.grpc import Ctx, convert, validation
from server.platform import errors
from server.platform.auth import principal
from server.registry import Registry

_ENDPOINT_STATUS = {
    "enabled": events_pb2.WEBHOOK_ENDPOINT_STATUS_ENABLED,
    "disabled": events_pb2.WEBHOOK_ENDPOINT_STATUS_DISABLED,
}
_DELIVERY_STATUS = {
    DeliveryStatus.PENDING: events_pb2.WEBHOOK_DELIVERY_STATUS_PENDING,
    DeliveryStatus.SUCCEEDED: events_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED,
    DeliveryStatus.FAILED: events_pb2.WEBHOOK_DELIVERY_STATUS_FAILED,
}
_DELIVERY_FILTER = {v: k for k, v in _DELIVERY_STATUS.items()}
# WatchEvents reads committed events in pages of this many.
WATCH_PAGE = 500


def event_pb(e: EventView) -> events_pb2.Event:
    return events_pb2.Event(
        id=event_name(e.id), type=e.type, user_id=e.user_id, create_time=convert.ts(e.created_at_us),
        payload_json=e.payload,
    )


def endpoint_pb(v: EndpointView) -> events_pb2.WebhookEndpoint:
    return events_pb2.WebhookEndpoint(
        id=v.id, url=v.url, event_types=v.event_types, description=v.description,
        status=_ENDPOINT_STATUS.get(v.status, events_pb2.WEBHOOK_ENDPOINT_STATUS_UNSPECIFIED),
        create_time=convert.ts(v.created_at_us), update_time=convert.ts(v.updated_at_us),
        failing_since=convert.ts(v.failing_since_us) if v.failing_since_us else None,
    )


def delivery_pb(v: DeliveryView) -> events_pb2.WebhookDelivery:
    return events_pb2.WebhookDelivery(
        endpoint_id=v.endpoint_id, event_id=event_name(v.event_id), event_type=v.event_type,
        status=_DELIVERY_STATUS.get(v.status, events_pb2.WEBHOOK_DELIVERY_STATUS_UNSPECIFIED),  # type: ignore[call-overload]
        attempts=v.attempts, last_response_code=v.last_response_code, last_error=v.last_error,
        create_time=convert.ts(v.created_at_us), update_time=convert.ts(v.updated_at_us),
        next_attempt_time=convert.ts(v.next_attempt_at_us) if v.status == DeliveryStatus.PENDING else None,
    )


def event_id(value: str, *, field: str) -> int:
    """An event id ("evt_" and a positive number) as its number; empty is 0."""
    if not value:
        return 0
    digits = value[len(ID_PREFIX):] if value.startswith(ID_PREFIX) else ""
    # ASCII digits only: str.isdigit() also takes "²" (int() refuses it) and
    # other scripts' digits (int() reads them: a second spelling of one id).
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise errors.InvalidArgument(f"{field} is not an event id", reason="INVALID_EVENT_ID", metadata={"field": field})
    return int(digits)


def _delivery_position(value: str | None) -> int:
    """The event id a deliveries page token holds (as its decimal text): a
    forged one of other text, or beyond what an event id can be, is refused."""
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) == 0:
        raise errors.InvalidArgument(
            "page_token is invalid or does not match the request's filters", reason="INVALID_PAGE_TOKEN"
        )
    return int(value)


def _types(values: list[str]) -> list[str]:
    return known_types(values)


def _endpoint_id(value: str) -> str:
    return validation.opaque_id(value, field="endpoint_id", reason="INVALID_ENDPOINT_ID")


class EventsServicer(events_pb2_grpc.EventsServiceServicer):
    def __init__(self, service: EventsService) -> None:
        self.service = service

    async def ListEvents(self, request: events_pb2.ListEventsRequest, context: Ctx) -> events_pb2.ListEventsResponse:
        scope = await self.service.scope_of(
            principal(), validation.wallet_owner(request.user_id), validation.org_id(request.org_id))
        types = _types(list(request.types))
        limit = validation.page_size(request.page_size)
        after = event_id(request.page_token, field="page_token")
        found = await self.service.list_events(scope, types, after, limit)
        last = found[-1].id if found else after
        return events_pb2.ListEventsResponse(events=[event_pb(e) for e in found], next_page_token=event_name(last))

    async def WatchEvents(
        self, request: events_pb2.WatchEventsRequest, context: Ctx
    ) -> AsyncIterator[events_pb2.WatchEventsResponse]:
        scope = await self.service.scope_of(
            principal(), validation.wallet_owner(request.user_id), validation.org_id(request.org_id))
        types = _types(list(request.types))
        # Ids are given out in commit order, so reading on from the last id
        # sent never skips an event (no gap) nor repeats one (no duplicate).
        cursor = event_id(request.cursor, field="cursor") if request.cursor else await self.service.last_event_id()
        poll = self.service.settings.events_poll_seconds
        while True:
            found = await self.service.list_events(scope, types, cursor, WATCH_PAGE)
            for e in found:
                yield events_pb2.WatchEventsResponse(event=event_pb(e))
                cursor = e.id
            if len(found) < WATCH_PAGE:
                await self.service.committed(poll)

    async def SetBalanceAlerts(
        self, request: events_pb2.SetBalanceAlertsRequest, context: Ctx
    ) -> events_pb2.SetBalanceAlertsResponse:
        view = await self.service.set_alerts(
            principal(), validation.user_id(request.user_id),
            thresholds=[validation.amount(t, field="thresholds_millicredits") for t in request.thresholds_millicredits],
            expiry_lead_seconds=request.expiry_lead_seconds, forecast_days=request.forecast_days,
            reset=request.reset_to_defaults, request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("SetBalanceAlerts", request),
        )
        return events_pb2.SetBalanceAlertsResponse(alerts=_alerts_pb(view))

    async def GetBalanceAlerts(
        self, request: events_pb2.GetBalanceAlertsRequest, context: Ctx
    ) -> events_pb2.GetBalanceAlertsResponse:
        view = await self.service.get_alerts(principal(), validation.user_id(request.user_id))
        return events_pb2.GetBalanceAlertsResponse(alerts=_alerts_pb(view))

    async def CreateWebhookEndpoint(
        self, request: events_pb2.CreateWebhookEndpointRequest, context: Ctx
    ) -> events_pb2.CreateWebhookEndpointResponse:
        p = principal()
        self.service.operator(p)
        request_id = validation.request_id(request.request_id)
        url = await check_url(request.url, self.service.settings)
        created = await self.service.create_endpoint(
            p, url=url, event_types=list(request.event_types),
            description=validation.text(request.description, field="description"),
            request_id=request_id, fingerprint=validation.fingerprint("CreateWebhookEndpoint", request),
        )
        return events_pb2.CreateWebhookEndpointResponse(endpoint=endpoint_pb(created.endpoint), secret=created.secret)

    async def ListWebhookEndpoints(
        self, request: events_pb2.ListWebhookEndpointsRequest, context: Ctx
    ) -> events_pb2.ListWebhookEndpointsResponse:
        limit = validation.page_size(request.page_size)
        after = validation.decode_page_token(request.page_token, "endpoints", str) or ""
        page = await self.service.list_endpoints(principal(), after, limit)
        token = validation.encode_page_token(page.next_token, "endpoints") if page.next_token else ""
        return events_pb2.ListWebhookEndpointsResponse(endpoints=[endpoint_pb(v) for v in page.endpoints],
                                                       next_page_token=token)

    async def UpdateWebhookEndpoint(
        self, request: events_pb2.UpdateWebhookEndpointRequest, context: Ctx
    ) -> events_pb2.UpdateWebhookEndpointResponse:
        p = principal()
        self.service.operator(p)
        request_id = validation.request_id(request.request_id)
        url = await check_url(request.url, self.service.settings) if request.url else ""
        view = await self.service.update_endpoint(
            p, _endpoint_id(request.endpoint_id), url=url,
            event_types=list(request.event_types) if request.update_event_types else None,
            description=validation.text(request.description, field="description")
            if request.HasField("description") else None,
            enabled=request.enabled if request.HasField("enabled") else None,
            request_id=request_id, fingerprint=validation.fingerprint("UpdateWebhookEndpoint", request),
        )
        return events_pb2.UpdateWebhookEndpointResponse(endpoint=endpoint_pb(view))

    async def DeleteWebhookEndpoint(
        self, request: events_pb2.DeleteWebhookEndpointRequest, context: Ctx
    ) -> events_pb2.DeleteWebhookEndpointResponse:
        done = await self.service.delete_endpoint(
            principal(), _endpoint_id(request.endpoint_id), request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("DeleteWebhookEndpoint", request),
        )
        return events_pb2.DeleteWebhookEndpointResponse(endpoint_id=done)

    async def RotateWebhookSecret(
        self, request: events_pb2.RotateWebhookSecretRequest, context: Ctx
    ) -> events_pb2.RotateWebhookSecretResponse:
        rotated = await self.service.rotate_secret(
            principal(), _endpoint_id(request.endpoint_id), request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("RotateWebhookSecret", request),
        )
        return events_pb2.RotateWebhookSecretResponse(
            secret=rotated.secret, previous_secret_expire_time=convert.ts(rotated.previous_until_us)
        )

    async def ListWebhookDeliveries(
        self, request: events_pb2.ListWebhookDeliveriesRequest, context: Ctx
    ) -> events_pb2.ListWebhookDeliveriesResponse:
        validation.enum(request.status, events_pb2.WebhookDeliveryStatus, field="status", allow_unspecified=True)
        endpoint = _endpoint_id(request.endpoint_id)
        status = _DELIVERY_FILTER.get(request.status, "")
        filters = validation.filters_signature(endpoint, status)
        before = _delivery_position(validation.decode_page_token(request.page_token, filters, str))
        limit = validation.page_size(request.page_size)
        page = await self.service.list_deliveries(principal(), endpoint, status, before or 2**62, limit)
        token = validation.encode_page_token(page.next_token, filters) if page.next_token else ""
        return events_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(v) for v in page.deliveries], next_page_token=token
        )

    async def RedeliverEvent(
        self, request: events_pb2.RedeliverEventRequest, context: Ctx
    ) -> events_pb2.RedeliverEventResponse:
        view = await self.service.redeliver(
            principal(), _endpoint_id(request.endpoint_id), event_id(request.event_id, field="event_id") or -1,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("RedeliverEvent", request),
        )
        return events_pb2.RedeliverEventResponse(delivery=delivery_pb(view))


def _alerts_pb(view: AlertsView) -> events_pb2.BalanceAlerts:
    return events_pb2.BalanceAlerts(
        user_id=view.user_id, thresholds_millicredits=view.thresholds, expiry_lead_seconds=view.expiry_lead_seconds,
        forecast_days=view.forecast_days, defaults=view.defaults,
    )


def register(reg: Registry, service: EventsService) -> DeliveryWorker:
    reg.servicer(events_pb2_grpc.add_EventsServiceServicer_to_server, EventsServicer(service))
    # Last of the domains' hooks: it writes what the others emitted in the batch.
    reg.ledger_extension(service.before_flush, wallet_tables=ALERT_TABLES)
    worker = DeliveryWorker(service)
    reg.on_start.append(worker.start)
    reg.on_stop.append(worker.stop)
    reg.job("credits_expiring", service.scan_expiring)
    reg.job("forecast_runs_out", service.scan_forecast)
    reg.job("prune_events", service.prune)
    return worker
