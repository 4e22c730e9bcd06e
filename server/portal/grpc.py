"""PortalService (thin: validate, call the domain, build the proto) and the
portal's pages on the HTTP listener."""

from __future__ import annotations

from flownexus.billing.v1 import portal_pb2, portal_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.platform.auth import principal
from server.portal.pages import Domains, page_routes, setup_templates
from server.portal.service import PortalService
from server.registry import Registry


class PortalServicer(portal_pb2_grpc.PortalServiceServicer):
    def __init__(self, service: PortalService) -> None:
        self.service = service

    async def CreatePortalSession(
        self, request: portal_pb2.CreatePortalSessionRequest, context: Ctx
    ) -> portal_pb2.CreatePortalSessionResponse:
        link = await self.service.create_session(
            principal(),
            user_id=validation.user_id(request.user_id),
            org_id=validation.org_id(request.org_id),
            return_url=request.return_url,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("CreatePortalSession", request),
        )
        return portal_pb2.CreatePortalSessionResponse(
            url=link.url, expires_at=convert.ts(link.expires_at_us), user_id=link.user_id
        )


def register(reg: Registry, service: PortalService, domains: Domains) -> None:
    reg.servicer(portal_pb2_grpc.add_PortalServiceServicer_to_server, PortalServicer(service))
    reg.routes.extend(page_routes(service, domains))
    reg.http_setup.append(setup_templates)
