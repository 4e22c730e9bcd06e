"""Member budgets on an org's wallet: set by owners and admins, with the
windows and BUDGET_EXCEEDED of key budgets, enforced in the ledger's
transaction (the concurrency property: two members at their budgets at
once); every transfer records its member, and history filters and groups by member."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import balance_pb2, common_pb2, history_pb2, keys_pb2, orgs_pb2, usage_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from tests.harness import Running, auth, error_info, expect_error
from tests.orgs.helpers import ADMIN_ROLE, MEMBER, create_org, orgs_stub
from tests.orgs.test_org_wallet import CREDIT, fund_org, spend_req

DAY = keys_pb2.BUDGET_WINDOW_DAY
LIFETIME = keys_pb2.BUDGET_WINDOW_LIFETIME


def budgets(*pairs: tuple[int, int]) -> list[keys_pb2.Budget]:
    return [keys_pb2.Budget(window=w, limit_millicredits=v) for w, v in pairs]


async def add(server: Running, org: str, user: str, *limits: tuple[int, int], by: str = "olga",
              role: int = MEMBER) -> orgs_pb2.Member:
    done = await orgs_stub(server).AddMember(orgs_pb2.AddMemberRequest(
        org_id=org, user_id=user, role=role, budgets=budgets(*limits), request_id=f"add-{user}"),  # type: ignore[arg-type]
        metadata=auth(by))
    return done.member


async def test_a_member_is_held_to_their_budget_while_others_go_on(server: Running) -> None:
    org = await create_org(server, "olga")
    await fund_org(server, org, 100 * CREDIT)
    added = await add(server, org, "mia", (DAY, 10 * CREDIT))
    assert [(b.window, b.limit_millicredits, b.used_millicredits) for b in added.budgets] == [(DAY, 10 * CREDIT, 0)]
    await add(server, org, "adam", role=ADMIN_ROLE)
    await server.s.usage.Spend(spend_req(6 * CREDIT, "m1", org), metadata=auth("mia"))
    refused = await expect_error(server.s.usage.Spend(spend_req(5 * CREDIT, "m2", org), metadata=auth("mia")),
                                 grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    assert refused.metadata["member"] == "mia" and refused.metadata["org_id"] == org
    assert refused.metadata["window"] == "day" and refused.metadata["remaining_millicredits"] == str(4 * CREDIT)
    assert "resets_at" in refused.metadata
    # A hold counts from Reserve on; its release gives the budget back.
    hold = (await server.s.usage.Reserve(usage_pb2.ReserveRequest(
        amount_millicredits=4 * CREDIT, request_id="h1", org_id=org), metadata=auth("mia"))).hold
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "m3", org), metadata=auth("mia")),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold.id, request_id="h2", org_id=org),
                                 metadata=auth("mia"))
    await server.s.usage.Spend(spend_req(CREDIT, "m4", org), metadata=auth("mia"))
    # The others go on; the wallet paid only what was allowed.
    await server.s.usage.Spend(spend_req(20 * CREDIT, "o1", org), metadata=auth("olga"))
    await server.s.usage.Spend(spend_req(5 * CREDIT, "a1", org), metadata=auth("adam"))
    left = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=auth("olga"))
    assert left.credits_millicredits == (100 - 6 - 1 - 20 - 5) * CREDIT
    # A plain member sets no budget; an admin raises it, in effect for the next spend.
    mask = FieldMask(paths=["budgets"])
    await expect_error(orgs_stub(server).UpdateMember(orgs_pb2.UpdateMemberRequest(
        org_id=org, user_id="mia", budgets=budgets((DAY, 99 * CREDIT)), update_mask=mask, request_id="u0"),
        metadata=auth("mia")), grpc.StatusCode.PERMISSION_DENIED, "ORG_ROLE_REQUIRED")
    raised = await orgs_stub(server).UpdateMember(orgs_pb2.UpdateMemberRequest(
        org_id=org, user_id="mia", budgets=budgets((DAY, 20 * CREDIT), (LIFETIME, 50 * CREDIT)), update_mask=mask,
        request_id="u1"), metadata=auth("adam"))
    assert {(b.window, b.used_millicredits) for b in raised.member.budgets} == {(DAY, 7 * CREDIT), (LIFETIME, 7 * CREDIT)}
    assert raised.member.role == MEMBER
    await server.s.usage.Spend(spend_req(5 * CREDIT, "m5", org), metadata=auth("mia"))

    # Every transfer records its member; history filters and groups by member.
    mine = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(
        org_id=org, member_id="mia", types=[]), metadata=auth("olga"))
    assert {t.member_id for t in mine.transactions} == {"mia"}
    spends = [t.amount_millicredits for t in mine.transactions if t.type == common_pb2.TRANSACTION_TYPE_SPEND]
    assert sorted(spends) == [-6 * CREDIT, -5 * CREDIT, -CREDIT]
    report = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org),
                                                      metadata=auth("olga"))
    assert {m.member_id: m.spent_millicredits for m in report.members} == {
        "mia": 12 * CREDIT, "olga": 20 * CREDIT, "adam": 5 * CREDIT}
    only = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org, member_id="adam"),
                                                    metadata=auth("olga"))
    assert only.total_spent_millicredits == 5 * CREDIT and [m.member_id for m in only.members] == ["adam"]


async def test_two_members_at_their_budgets_at_once_get_exactly_their_share(server: Running) -> None:
    """Each of two members has 500 credits a day and sends 20 concurrent
    Spends of 75: each gets exactly 6 (450), and the wallet loses exactly 900."""
    org = await create_org(server, "olga")
    await fund_org(server, org, 10_000 * CREDIT)
    for user in ("ann", "bob"):
        await add(server, org, user, (DAY, 500 * CREDIT))

    async def one(user: str, i: int) -> str:
        try:
            await server.s.usage.Spend(spend_req(75 * CREDIT, f"{user}-{i}", org), metadata=auth(user))
            return "ok"
        except grpc.aio.AioRpcError as exc:
            info = error_info(exc)
            return info.reason if info else exc.code().name

    outcomes = await asyncio.gather(*(one(u, i) for u in ("ann", "bob") for i in range(20)))
    for k, user in enumerate(("ann", "bob")):
        mine = outcomes[k * 20:(k + 1) * 20]
        assert mine.count("ok") == 6, (user, mine)
        assert set(mine) == {"ok", "BUDGET_EXCEEDED"}
    left = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(org_id=org), metadata=auth("olga"))
    assert left.credits_millicredits == (10_000 - 900) * CREDIT
    members = await orgs_stub(server).ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("olga"))
    used = {m.user_id: [b.used_millicredits for b in m.budgets] for m in members.members}
    assert used == {"olga": [], "ann": [450 * CREDIT], "bob": [450 * CREDIT]}
