"""Calls the org tests share: create an org, add a member."""

from __future__ import annotations

import itertools

from flownexus.billing.v1 import orgs_pb2, orgs_pb2_grpc

from tests.harness import Running, auth

_ids = itertools.count()
OWNER = orgs_pb2.ORG_ROLE_OWNER
ADMIN_ROLE = orgs_pb2.ORG_ROLE_ADMIN
MEMBER = orgs_pb2.ORG_ROLE_MEMBER


def orgs_stub(server: Running) -> orgs_pb2_grpc.OrgsServiceStub:
    return orgs_pb2_grpc.OrgsServiceStub(server.s.channel)


async def create_org(server: Running, owner: str, name: str = "Team") -> str:
    made = await orgs_stub(server).CreateOrg(
        orgs_pb2.CreateOrgRequest(name=name, request_id=f"org-{next(_ids)}"), metadata=auth(owner))
    return made.org.id


async def add_member(server: Running, org_id: str, user: str, role: int = MEMBER, *, by: str) -> orgs_pb2.Member:
    done = await orgs_stub(server).AddMember(orgs_pb2.AddMemberRequest(
        org_id=org_id, user_id=user, role=role, request_id=f"add-{next(_ids)}"), metadata=auth(by))  # type: ignore[arg-type]
    return done.member


async def remove_member(server: Running, org_id: str, user: str, *, by: str) -> orgs_pb2.Member:
    done = await orgs_stub(server).RemoveMember(orgs_pb2.RemoveMemberRequest(
        org_id=org_id, user_id=user, request_id=f"rm-{next(_ids)}"), metadata=auth(by))
    return done.member
