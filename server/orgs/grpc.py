"""OrgsService: proto in, org rules, proto out."""

from __future__ import annotations

from flownexus.billing.v1 import orgs_pb2, orgs_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.keys.grpc import budget_limits, budget_pbs
from server.orgs.budgets import MemberBudgets, refused_events
from server.orgs.models import MemberView, OrgRole, OrgView
from server.orgs.service import OrgsService
from server.platform import errors
from server.platform.auth import principal
from server.registry import Registry

ROLE_OF = {
    orgs_pb2.ORG_ROLE_OWNER: OrgRole.OWNER,
    orgs_pb2.ORG_ROLE_ADMIN: OrgRole.ADMIN,
    orgs_pb2.ORG_ROLE_MEMBER: OrgRole.MEMBER,
}
PB_ROLE = {r: pb for pb, r in ROLE_OF.items()}
UPDATABLE = ("role", "budgets")


def _role(value: int) -> OrgRole:
    role = ROLE_OF.get(value)  # type: ignore[call-overload]
    if role is None:
        raise errors.InvalidArgument(
            "role must be OWNER, ADMIN or MEMBER", reason="INVALID_ORG_ROLE",
            metadata={"field": "role", "got": value},
        )
    return role


def org_pb(view: OrgView) -> orgs_pb2.Org:
    return orgs_pb2.Org(
        id=view.id, name=view.name, role=PB_ROLE.get(OrgRole(view.role)) if view.role else None,
        create_time=convert.ts(view.created_at_us), created_by=view.created_by,
    )


def member_pb(view: MemberView) -> orgs_pb2.Member:
    return orgs_pb2.Member(
        org_id=view.org_id, user_id=view.user_id, role=PB_ROLE[OrgRole(view.role)],
        add_time=convert.ts(view.added_at_us), budgets=budget_pbs(view.budgets),
    )


class OrgsServicer(orgs_pb2_grpc.OrgsServiceServicer):
    def __init__(self, orgs: OrgsService) -> None:
        self.orgs = orgs

    async def CreateOrg(self, request: orgs_pb2.CreateOrgRequest, context: Ctx) -> orgs_pb2.CreateOrgResponse:
        view = await self.orgs.create(
            principal(), name=request.name,
            owner_user_id=validation.user_id(request.owner_user_id, field="owner_user_id"),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("CreateOrg", request),
        )
        return orgs_pb2.CreateOrgResponse(org=org_pb(view))

    async def GetOrg(self, request: orgs_pb2.GetOrgRequest, context: Ctx) -> orgs_pb2.GetOrgResponse:
        view = await self.orgs.get(principal(), validation.org_id(request.org_id, required=True))
        return orgs_pb2.GetOrgResponse(org=org_pb(view))

    async def ListOrgs(self, request: orgs_pb2.ListOrgsRequest, context: Ctx) -> orgs_pb2.ListOrgsResponse:
        user = validation.user_id(request.user_id)
        size = validation.page_size(request.page_size)
        sig = validation.filters_signature("orgs", user)
        after = validation.decode_page_token(request.page_token, sig, int, str)
        found = await self.orgs.list_for(principal(), user, size + 1, tuple(after) if after else None)
        resp = orgs_pb2.ListOrgsResponse(orgs=[org_pb(v) for v, _ in found[:size]])
        if len(found) > size:
            last, at = found[size - 1]
            resp.next_page_token = validation.encode_page_token([at, last.id], sig)
        return resp

    async def AddMember(self, request: orgs_pb2.AddMemberRequest, context: Ctx) -> orgs_pb2.AddMemberResponse:
        view = await self.orgs.add_member(
            principal(), org_id=validation.org_id(request.org_id, required=True),
            user_id=validation.user_id(request.user_id, required=True), role=_role(request.role),
            budgets=budget_limits(list(request.budgets)),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("AddMember", request),
        )
        return orgs_pb2.AddMemberResponse(member=member_pb(view))

    async def UpdateMember(
        self, request: orgs_pb2.UpdateMemberRequest, context: Ctx
    ) -> orgs_pb2.UpdateMemberResponse:
        paths = validation.update_mask(list(request.update_mask.paths), UPDATABLE)
        view = await self.orgs.update_member(
            principal(), org_id=validation.org_id(request.org_id, required=True),
            user_id=validation.user_id(request.user_id, required=True),
            role=_role(request.role) if "role" in paths else None,
            budgets=budget_limits(list(request.budgets)) if "budgets" in paths else None,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("UpdateMember", request),
        )
        return orgs_pb2.UpdateMemberResponse(member=member_pb(view))

    async def RemoveMember(
        self, request: orgs_pb2.RemoveMemberRequest, context: Ctx
    ) -> orgs_pb2.RemoveMemberResponse:
        view = await self.orgs.remove_member(
            principal(), org_id=validation.org_id(request.org_id, required=True),
            user_id=validation.user_id(request.user_id, required=True),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("RemoveMember", request),
        )
        return orgs_pb2.RemoveMemberResponse(member=member_pb(view))

    async def ListMembers(self, request: orgs_pb2.ListMembersRequest, context: Ctx) -> orgs_pb2.ListMembersResponse:
        org_id = validation.org_id(request.org_id, required=True)
        size = validation.page_size(request.page_size)
        sig = validation.filters_signature("members", org_id)
        after = validation.decode_page_token(request.page_token, sig, int, str)
        views = await self.orgs.members(principal(), org_id, size + 1, tuple(after) if after else None)
        resp = orgs_pb2.ListMembersResponse(members=[member_pb(v) for v in views[:size]])
        if len(views) > size:
            last = views[size - 1]
            resp.next_page_token = validation.encode_page_token([last.added_at_us, last.user_id], sig)
        return resp


def register(reg: Registry, service: OrgsService) -> None:
    reg.servicer(orgs_pb2_grpc.add_OrgsServiceServicer_to_server, OrgsServicer(service))
    reg.member_guard(MemberBudgets())
    reg.ledger_extension(refused_events)
