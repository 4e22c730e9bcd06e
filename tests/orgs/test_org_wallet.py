"""Choosing the wallet: members spend from and read the org's wallet by
naming it (org_id); a stranger cannot; a removed member is refused on their
very next call; a service spends for a named member; holds on the org's
wallet are settled by its members."""

from __future__ import annotations

import json

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    common_pb2,
    earnings_pb2,
    history_pb2,
    usage_pb2,
)
from sqlalchemy import select, update

from server.db.schema import idempotency
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import ADMIN_ROLE, add_member, create_org, remove_member

ADMIN = auth("ops", "admin")
SERVICE = auth("sandbox-runner", "service")
CREDIT = 1000
UNKNOWN = "org_" + "f" * 32
PD = grpc.StatusCode.PERMISSION_DENIED


async def fund_org(server: Running, org: str, millicredits: int, request_id: str = "fund") -> None:
    """An operator finds the org's account by its id, as a user's."""
    await server.s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
        user_id=org, amount_millicredits=millicredits, reason="test funds", lot=common_pb2.LOT_KIND_PURCHASED,
        request_id=request_id), metadata=ADMIN)


def spend_req(amount: int, request_id: str, org: str, **fields: object) -> usage_pb2.SpendRequest:
    return usage_pb2.SpendRequest(amount_millicredits=amount, request_id=request_id, category="sandbox", org_id=org,
                                  **fields)  # type: ignore[arg-type]


async def test_members_spend_from_and_read_the_org_wallet_and_strangers_cannot(server: Running) -> None:
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await fund_org(server, org, 50 * CREDIT)
    own_before = (await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("mia")))

    spent = await server.s.usage.Spend(spend_req(5 * CREDIT, "s1", org), metadata=auth("mia"))
    assert spent.credits_millicredits == 45 * CREDIT
    # The org's wallet paid, not the member's own.
    own_after = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("mia"))
    assert own_after.credits_millicredits == own_before.credits_millicredits
    for who in ("mia", "olga"):
        checked = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=auth(who))
        assert checked.credits_millicredits == 45 * CREDIT
        got = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=auth(who))
        assert got.credits_millicredits == 45 * CREDIT
        listed = await server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(org_id=org), metadata=auth(who))
        assert [t.amount_millicredits for t in listed.transactions] == [-5 * CREDIT, 50 * CREDIT]
        report = await server.s.history.GetSpendingReport(
            history_pb2.GetSpendingReportRequest(org_id=org), metadata=auth(who))
        assert report.total_spent_millicredits == 5 * CREDIT and report.credits_millicredits == 45 * CREDIT
    # The org's stats, for its members; an operator finds its account by its id.
    stats = await server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(org_id=org), metadata=auth("mia"))
    assert (stats.user_id, stats.credits_spent_millicredits) == (org, 5 * CREDIT)
    account = await server.s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=org), metadata=ADMIN)
    assert account.user_id == org and account.credits_millicredits == 45 * CREDIT
    # The member's own history holds nothing of the org's.
    mine = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=auth("mia"))
    assert all(t.amount_millicredits != -5 * CREDIT for t in mine.transactions)

    # A stranger neither spends nor reads; an unknown org is said to be unknown.
    eve = auth("eve")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "e1", org), metadata=eve), PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=eve),
                       PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=eve),
                       PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(org_id=org), metadata=eve),
                       PD, "NOT_ORG_MEMBER")
    await expect_error(
        server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org), metadata=eve),
        PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(org_id=org), metadata=eve),
                       PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=CREDIT, request_id="e2", org_id=org), metadata=eve), PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "u1", UNKNOWN), metadata=auth("mia")),
                       grpc.StatusCode.NOT_FOUND, "ORG_NOT_FOUND")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "u2", "org_nope"), metadata=auth("mia")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORG_ID")
    # Nothing from the stranger reached the wallet.
    after = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=auth("olga"))
    assert after.credits_millicredits == 45 * CREDIT

    # Removal ends access with the very next call; past spends stay on the org's history.
    await remove_member(server, org, "mia", by="olga")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "s2", org), metadata=auth("mia")), PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=auth("mia")),
                       PD, "NOT_ORG_MEMBER")
    kept = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(org_id=org), metadata=auth("olga"))
    assert [t.amount_millicredits for t in kept.transactions] == [-5 * CREDIT, 50 * CREDIT]


async def test_a_service_spends_for_a_named_member(server: Running) -> None:
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await fund_org(server, org, 10 * CREDIT)
    done = await server.s.usage.Spend(spend_req(2 * CREDIT, "svc1", org, user_id="mia"), metadata=SERVICE)
    assert done.credits_millicredits == 8 * CREDIT
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "svc2", org, user_id="eve"), metadata=SERVICE),
                       PD, "NOT_ORG_MEMBER")
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "svc3", org), metadata=SERVICE),
                       grpc.StatusCode.INVALID_ARGUMENT, "USER_ID_REQUIRED")
    # A user token acts only as itself, also on an org.
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "u1", org, user_id="olga"), metadata=auth("mia")),
                       PD, "NOT_YOUR_ACCOUNT")
    # A batch: each item answered on its own, the org asked once per member.
    batch = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=[
        spend_req(CREDIT, "b1", org, user_id="mia"),
        spend_req(CREDIT, "b2", org, user_id="eve"),
        spend_req(CREDIT, "b3", org, user_id="mia"),
        usage_pb2.SpendRequest(amount_millicredits=CREDIT, request_id="b4", user_id="mia"),
    ]), metadata=SERVICE)
    outcome = [r.error.reason if r.HasField("error") else r.response.credits_millicredits for r in batch.results]
    assert outcome[0] == 7 * CREDIT and outcome[1] == "NOT_ORG_MEMBER" and outcome[2] == 6 * CREDIT
    assert outcome[3] == 99 * CREDIT  # mia's own wallet: her free credits less 1
    # A service reads an org's wallet as it reads any user's.
    got = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=SERVICE)
    assert got.credits_millicredits == 6 * CREDIT


async def test_holds_on_the_org_wallet_are_settled_by_its_members(server: Running) -> None:
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await add_member(server, org, "adam", ADMIN_ROLE, by="olga")
    await fund_org(server, org, 10 * CREDIT)
    hold = (await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=4 * CREDIT, request_id="r1", org_id=org), metadata=auth("mia"))).hold
    # Without naming the org, the hold is not the member's.
    await expect_error(server.s.usage.Capture(usage_pb2.CaptureRequest(
        hold_id=hold.id, amount_millicredits=CREDIT, request_id="c0"), metadata=auth("mia")),
        grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")
    captured = await server.s.usage.Capture(usage_pb2.CaptureRequest(
        hold_id=hold.id, amount_millicredits=3 * CREDIT, request_id="c1", org_id=org), metadata=auth("mia"))
    assert captured.credits_millicredits == 7 * CREDIT
    other = (await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=2 * CREDIT, request_id="r2", org_id=org), metadata=auth("mia"))).hold
    await expect_error(server.s.usage.Release(usage_pb2.ReleaseRequest(
        hold_id=other.id, request_id="x1", org_id=org), metadata=auth("eve")), PD, "NOT_ORG_MEMBER")
    released = await server.s.usage.Release(usage_pb2.ReleaseRequest(
        hold_id=other.id, request_id="x2", org_id=org), metadata=auth("adam"))
    assert released.credits_millicredits == 7 * CREDIT


async def test_a_member_watches_the_org_wallet_and_a_stranger_cannot(server: Running) -> None:
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await fund_org(server, org, 10 * CREDIT)
    call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(org_id=org), metadata=auth("mia"), timeout=10)
    snapshot = await call.read()
    assert (snapshot.user_id, snapshot.credits_millicredits) == (org, 10 * CREDIT)
    await server.s.usage.Spend(spend_req(3 * CREDIT, "w1", org), metadata=auth("olga"))
    change = await call.read()
    assert (change.user_id, change.credits_millicredits) == (org, 7 * CREDIT)
    assert change.transaction.member_id == "olga"
    call.cancel()
    stranger = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(org_id=org), metadata=auth("eve"),
                                             timeout=10)
    await expect_error(stranger.read(), PD, "NOT_ORG_MEMBER")


async def test_a_hold_stored_before_members_existed_replays(server: Running) -> None:
    """A Reserve whose stored response predates the transfers' member_id (an
    earlier release) is answered from it, the member empty, never INTERNAL."""
    req = usage_pb2.ReserveRequest(amount_millicredits=CREDIT, request_id="old-hold", category="sandbox")
    first = await server.s.usage.Reserve(req, metadata=auth("ned"))
    async with server.read() as conn:
        (key, response), = (await conn.execute(select(idempotency.c.key, idempotency.c.response).where(
            idempotency.c.key.like("%old-hold%")))).all()
    stored = json.loads(response)
    del stored["transaction"]["member_id"]
    async with server.started.db.writer.begin() as conn:
        await conn.execute(update(idempotency).where(idempotency.c.key == key).values(
            response=json.dumps(stored).encode()))
    again = await server.s.usage.Reserve(req, metadata=auth("ned"))
    assert again.hold.id == first.hold.id and again.credits_millicredits == first.credits_millicredits
