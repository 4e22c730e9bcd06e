"""SetAccountFlagRequest.reason (at most 200 characters) becomes the
account's flagged_reason whole; the actor is the audit row's own field."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import admin_pb2, balance_pb2

from tests.harness import Running, auth, expect_error

ADMIN = auth("a-rather-long-operator-name", "admin")


async def test_a_200_character_reason_is_stored_whole(server: Running) -> None:
    user = "flagme"
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))
    reason = ("suspected fraud: " + "x" * 200)[:200]
    r = await server.s.admin.SetAccountFlag(admin_pb2.SetAccountFlagRequest(
        user_id=user, flag=admin_pb2.ACCOUNT_FLAG_DISPUTED, reason=reason, request_id="f1"), metadata=ADMIN)
    assert r.flagged_reason == reason
    account = await server.s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=user), metadata=ADMIN)
    assert account.flagged_reason == reason
    acts = await server.s.admin.ListAdminActions(
        admin_pb2.ListAdminActionsRequest(action="SetAccountFlag"), metadata=ADMIN)
    assert [(a.actor, a.reason) for a in acts.actions] == [("a-rather-long-operator-name", reason)]
    # One more character is refused before anything changes.
    info = await expect_error(server.s.admin.SetAccountFlag(admin_pb2.SetAccountFlagRequest(
        user_id=user, flag=admin_pb2.ACCOUNT_FLAG_DISPUTED, reason=reason + "y", request_id="f2"), metadata=ADMIN),
        grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG")
    assert info.metadata["field"] == "reason"
