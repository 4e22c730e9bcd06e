"""Membership changes raced against each other: the same user added many times
at once (other request ids), and added and removed at once. One wins, the
others get their reason; never a failed batch (UNAVAILABLE) or INTERNAL."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import orgs_pb2

from tests.harness import Running, auth
from tests.orgs.helpers import MEMBER, add_member, create_org, orgs_stub


def _outcome(result: object) -> str:
    if isinstance(result, grpc.aio.AioRpcError):
        return result.code().name
    assert not isinstance(result, BaseException), repr(result)
    return "OK"


async def test_the_same_member_added_at_once(server: Running) -> None:
    org = await create_org(server, "olga")
    stub = orgs_stub(server)
    calls = [
        stub.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="newbie", role=MEMBER, request_id=f"dup-{i}"),
                       metadata=auth("olga"))
        for i in range(12)
    ]
    outcomes = [_outcome(r) for r in await asyncio.gather(*calls, return_exceptions=True)]
    assert sorted(outcomes) == ["ALREADY_EXISTS"] * 11 + ["OK"], outcomes
    members = await stub.ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("olga"))
    assert sorted(m.user_id for m in members.members) == ["newbie", "olga"]
    await server.verify()


async def test_a_member_added_and_removed_at_once(server: Running) -> None:
    org = await create_org(server, "olga")
    await add_member(server, org, "nina", by="olga")
    stub = orgs_stub(server)
    calls = []
    for i in range(6):
        calls.append(stub.RemoveMember(orgs_pb2.RemoveMemberRequest(org_id=org, user_id="nina", request_id=f"rm-{i}"),
                                       metadata=auth("olga")))
        calls.append(stub.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="nina", role=MEMBER, request_id=f"add-{i}"),
                                    metadata=auth("olga")))
    outcomes = {_outcome(r) for r in await asyncio.gather(*calls, return_exceptions=True)}
    assert outcomes <= {"OK", "ALREADY_EXISTS", "NOT_FOUND"}, outcomes
    await server.verify()
