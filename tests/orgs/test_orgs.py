"""OrgsService: creating an org, its members and roles, the rules that keep
an owner, and bad input, each refusal with its ErrorInfo reason."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import balance_pb2, orgs_pb2, usage_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select

from server.db.schema import accounts
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import (
    ADMIN_ROLE,
    MEMBER,
    OWNER,
    add_member,
    create_org,
    orgs_stub,
    remove_member,
)

ADMIN = auth("ops", "admin")
SERVICE = auth("sandbox-runner", "service")
UNKNOWN = "org_" + "0" * 32


def _roles(members: list[orgs_pb2.Member]) -> dict[str, int]:
    return {m.user_id: m.role for m in members}


async def test_an_org_is_created_with_its_owner_and_its_own_wallet(server: Running) -> None:
    s = orgs_stub(server)
    made = await s.CreateOrg(orgs_pb2.CreateOrgRequest(name="Acme", request_id="c1"), metadata=auth("olga"))
    org = made.org
    assert org.id.startswith("org_") and org.name == "Acme" and org.role == OWNER and org.created_by == "olga"
    # The same request again: the same org, no second one.
    again = await s.CreateOrg(orgs_pb2.CreateOrgRequest(name="Acme", request_id="c1"), metadata=auth("olga"))
    assert again.org.id == org.id
    await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name="Other", request_id="c1"), metadata=auth("olga")),
                       grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    got = await s.GetOrg(orgs_pb2.GetOrgRequest(org_id=org.id), metadata=auth("olga"))
    assert got.org == org
    listed = await s.ListOrgs(orgs_pb2.ListOrgsRequest(), metadata=auth("olga"))
    assert [o.id for o in listed.orgs] == [org.id]
    members = await s.ListMembers(orgs_pb2.ListMembersRequest(org_id=org.id), metadata=auth("olga"))
    assert _roles(list(members.members)) == {"olga": OWNER}
    # Its own wallet in the ledger, with no free credits of its own (those are a person's).
    async with server.read() as conn:
        rows = (await conn.execute(select(accounts.c.id, accounts.c.balance).where(
            accounts.c.id == f"wallet:{org.id}"))).all()
    assert [tuple(r) for r in rows] == [(f"wallet:{org.id}", 0)]


async def test_members_roles_and_the_last_owner(server: Running) -> None:
    s = orgs_stub(server)
    org = await create_org(server, "olga")
    added = await add_member(server, org, "adam", ADMIN_ROLE, by="olga")
    assert (added.org_id, added.user_id, added.role) == (org, "adam", ADMIN_ROLE)
    await add_member(server, org, "mia", MEMBER, by="adam")  # an admin adds members
    # A member twice.
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="mia", role=MEMBER, request_id="twice"),
                    metadata=auth("olga")),
        grpc.StatusCode.ALREADY_EXISTS, "MEMBER_EXISTS")
    # Only an owner makes an owner; a plain member manages nobody.
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="ned", role=OWNER, request_id="o1"),
                    metadata=auth("adam")),
        grpc.StatusCode.PERMISSION_DENIED, "ORG_ROLE_REQUIRED")
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="ned", role=MEMBER, request_id="m1"),
                    metadata=auth("mia")),
        grpc.StatusCode.PERMISSION_DENIED, "ORG_ROLE_REQUIRED")
    # The last owner cannot step down or be removed, not even by themselves.
    await expect_error(
        s.UpdateMember(orgs_pb2.UpdateMemberRequest(
            org_id=org, user_id="olga", role=ADMIN_ROLE, update_mask=FieldMask(paths=["role"]), request_id="u1"),
            metadata=auth("olga")),
        grpc.StatusCode.FAILED_PRECONDITION, "LAST_OWNER")
    await expect_error(
        s.RemoveMember(orgs_pb2.RemoveMemberRequest(org_id=org, user_id="olga", request_id="r1"), metadata=auth("olga")),
        grpc.StatusCode.FAILED_PRECONDITION, "LAST_OWNER")
    # With a second owner, the first may step down.
    promoted = await s.UpdateMember(orgs_pb2.UpdateMemberRequest(
        org_id=org, user_id="adam", role=OWNER, update_mask=FieldMask(paths=["role"]), request_id="u2"),
        metadata=auth("olga"))
    assert promoted.member.role == OWNER
    await s.UpdateMember(orgs_pb2.UpdateMemberRequest(
        org_id=org, user_id="olga", role=MEMBER, update_mask=FieldMask(paths=["role"]), request_id="u3"),
        metadata=auth("olga"))
    listed = await s.ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("mia"))
    assert _roles(list(listed.members)) == {"olga": MEMBER, "adam": OWNER, "mia": MEMBER}
    # Removal: gone from the list and from their orgs; the org is closed to them at once.
    gone = await remove_member(server, org, "mia", by="adam")
    assert gone.user_id == "mia" and gone.role == MEMBER
    listed = await s.ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("adam"))
    assert "mia" not in _roles(list(listed.members))
    assert not (await s.ListOrgs(orgs_pb2.ListOrgsRequest(), metadata=auth("mia"))).orgs
    await expect_error(s.GetOrg(orgs_pb2.GetOrgRequest(org_id=org), metadata=auth("mia")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(remove_member(server, org, "mia", by="adam"), grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    # Added again, as anyone new.
    back = await add_member(server, org, "mia", ADMIN_ROLE, by="adam")
    assert back.role == ADMIN_ROLE
    # Any member may leave.
    await remove_member(server, org, "olga", by="olga")


async def test_bad_input_and_strangers_get_clear_errors(server: Running) -> None:
    s = orgs_stub(server)
    org = await create_org(server, "olga")
    await expect_error(s.GetOrg(orgs_pb2.GetOrgRequest(org_id=UNKNOWN), metadata=auth("olga")),
                       grpc.StatusCode.NOT_FOUND, "ORG_NOT_FOUND")
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=UNKNOWN, user_id="x", role=MEMBER, request_id="a"),
                    metadata=auth("olga")),
        grpc.StatusCode.NOT_FOUND, "ORG_NOT_FOUND")
    await expect_error(s.GetOrg(orgs_pb2.GetOrgRequest(org_id="acme"), metadata=auth("olga")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_ID")
    await expect_error(s.GetOrg(orgs_pb2.GetOrgRequest(org_id=org), metadata=auth("eve")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(s.ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("eve")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="eve", role=MEMBER, request_id="a"),
                    metadata=auth("eve")),
        grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="x", request_id="b"), metadata=auth("olga")),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_ROLE")
    # An org's id is never a user's: it cannot be made a member (or a token's subject).
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id=org, role=MEMBER, request_id="c"),
                    metadata=auth("olga")),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")
    await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name="", request_id="n"), metadata=auth("olga")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_NAME")
    await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name="x\n", request_id="n2"), metadata=auth("olga")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_NAME")
    # A name that does not read as itself: a right-to-left override, an
    # isolate, a zero-width space or joiner, a BOM (the same rule as key labels).
    hidden = [("Acme\u202egnp.exe", "U+202E"), ("Acme\u2067x", "U+2067"), ("Ac\u200bme", "U+200B"),
              ("Ac\u200dme", "U+200D"), ("\ufeffAcme", "U+FEFF")]
    for i, (name, char) in enumerate(hidden):
        err = await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name=name, request_id=f"h{i}"),
                                             metadata=auth("olga")),
                                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_NAME")
        assert err.metadata["character"] == char
    # A joiner between two pictographs is an emoji sequence, shown as one picture.
    for i, name in enumerate(["\U0001f469\u200d\U0001f4bb Acme", "\U0001f3f3\ufe0f\u200d\U0001f308",
                              "\U0001f9d1\U0001f3fd\u200d\U0001f527 fixers"]):
        made = await s.CreateOrg(orgs_pb2.CreateOrgRequest(name=name, request_id=f"e{i}"), metadata=auth("olga"))
        assert made.org.name == name
    for i, name in enumerate(["Acme\U0001f4bb\u200d", "\U0001f4bb\u200d\u200d\U0001f4bb", "\U0001f4bb\u200dAcme"]):
        err = await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name=name, request_id=f"z{i}"),
                                             metadata=auth("olga")),
                                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_NAME")
        assert err.metadata["character"] == "U+200D"
    await expect_error(
        s.UpdateMember(orgs_pb2.UpdateMemberRequest(org_id=org, user_id="olga", role=MEMBER, request_id="u"),
                       metadata=auth("olga")),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")
    # A service token manages no org; an admin names the owner.
    await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name="S", request_id="s"), metadata=SERVICE),
                       grpc.StatusCode.PERMISSION_DENIED, "USER_TOKEN_REQUIRED")
    await expect_error(s.CreateOrg(orgs_pb2.CreateOrgRequest(name="A", request_id="s"), metadata=ADMIN),
                       grpc.StatusCode.INVALID_ARGUMENT, "USER_ID_REQUIRED")
    by_admin = await s.CreateOrg(orgs_pb2.CreateOrgRequest(name="A", owner_user_id="zed", request_id="s"),
                                 metadata=ADMIN)
    assert by_admin.org.created_by == "zed" and by_admin.org.role == orgs_pb2.ORG_ROLE_UNSPECIFIED
    zed = await s.ListOrgs(orgs_pb2.ListOrgsRequest(), metadata=auth("zed"))
    assert [(o.id, o.role) for o in zed.orgs] == [(by_admin.org.id, OWNER)]
    await expect_error(
        s.AddMember(orgs_pb2.AddMemberRequest(org_id=org, user_id="x", role=MEMBER, request_id="sv"), metadata=SERVICE),
        grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")


async def test_lists_page_through_orgs_and_members(sqlite_server: Running) -> None:
    s = orgs_stub(sqlite_server)
    made = [await create_org(sqlite_server, "pat", name=f"T{i}") for i in range(3)]
    for i in range(4):
        await add_member(sqlite_server, made[0], f"u{i}", by="pat")
    seen, token = [], ""
    while True:
        page = await s.ListOrgs(orgs_pb2.ListOrgsRequest(page_size=2, page_token=token), metadata=auth("pat"))
        seen += [o.id for o in page.orgs]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 3 and sorted(seen) == sorted(made)  # one instant on the test clock: by id
    users, token = [], ""
    while True:
        mp = await s.ListMembers(orgs_pb2.ListMembersRequest(org_id=made[0], page_size=2, page_token=token),
                                 metadata=auth("u1"))
        users += [m.user_id for m in mp.members]
        token = mp.next_page_token
        if not token:
            break
    assert users == ["pat", "u0", "u1", "u2", "u3"]


async def test_an_org_id_is_never_a_token_subject_or_a_user_id(sqlite_server: Running) -> None:
    """Else a token minted for "org_..." (or a service naming it as user_id)
    would reach the org's wallet without being a member."""
    org = await create_org(sqlite_server, "olga")
    await expect_error(sqlite_server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(org)),
                       grpc.StatusCode.UNAUTHENTICATED, "INVALID_SUBJECT")
    await expect_error(sqlite_server.s.usage.Spend(usage_pb2.SpendRequest(
        user_id=org, amount_millicredits=1, request_id="s"), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")
