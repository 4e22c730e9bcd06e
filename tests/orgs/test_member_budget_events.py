"""A member's budget tells the org as a key's does: budget.warning at 80 %,
budget.exhausted when used up and when a spend is refused, and budget.reset
when a window that had use ends, by the reset_member_budgets job at the
boundary (once per member and window) or by the member's next spend,
whichever comes first. Each event is on the org's wallet and names the member."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import events_pb2, keys_pb2, orgs_pb2

from tests.events.receiver import list_events, payload
from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import ADMIN_ROLE, create_org, orgs_stub
from tests.orgs.test_member_budgets import add
from tests.orgs.test_org_wallet import CREDIT, fund_org, spend_req

HOUR = keys_pb2.BUDGET_WINDOW_HOUR
HOUR_US = 3_600_000_000
KINDS = ["budget.warning", "budget.exhausted", "budget.reset"]


async def seen(server: Running, org: str) -> list[tuple[str, str, str]]:
    return [(e.type, payload(e).get("member_id", ""), payload(e).get("window", ""))
            for e in await list_events(server, org, KINDS)]


async def test_member_budget_events_and_the_boundary_job(server: Running) -> None:
    org = await create_org(server, "olga")
    await fund_org(server, org, 1_000 * CREDIT)
    await add(server, org, "ann", (HOUR, 100 * CREDIT))
    await add(server, org, "bob", (HOUR, 100 * CREDIT))  # no use: no event, nothing to reset
    await server.s.usage.Spend(spend_req(79 * CREDIT, "a1", org), metadata=auth("ann"))
    assert await seen(server, org) == []
    await server.s.usage.Spend(spend_req(6 * CREDIT, "a2", org), metadata=auth("ann"))
    assert await seen(server, org) == [("budget.warning", "ann", "")]
    await server.s.usage.Spend(spend_req(15 * CREDIT, "a3", org), metadata=auth("ann"))
    await expect_error(server.s.usage.Spend(spend_req(CREDIT, "a4", org), metadata=auth("ann")),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    events = await list_events(server, org, KINDS)
    assert [(e.type, payload(e)["member_id"]) for e in events] == [
        ("budget.warning", "ann"), ("budget.exhausted", "ann"), ("budget.exhausted", "ann")]
    assert "80 % of their hour budget" in payload(events[0])["message"]
    assert "refused" in payload(events[2])["message"]
    # The org's owners and admins read its events with org_id; a member does
    # not (they tell of every member's use), nor a stranger.
    await add(server, org, "adam", role=ADMIN_ROLE)
    for reader in ("olga", "adam"):
        own = await server.s.events.ListEvents(events_pb2.ListEventsRequest(org_id=org, types=KINDS),
                                               metadata=auth(reader))
        assert [e.id for e in own.events] == [e.id for e in events]
    await expect_error(server.s.events.ListEvents(events_pb2.ListEventsRequest(org_id=org), metadata=auth("ann")),
                       grpc.StatusCode.PERMISSION_DENIED, "ORG_ROLE_REQUIRED")
    await expect_error(server.s.events.ListEvents(events_pb2.ListEventsRequest(org_id=org), metadata=auth("eve")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER")
    await expect_error(server.s.events.ListEvents(events_pb2.ListEventsRequest(org_id=org, user_id="olga"),
                                                  metadata=auth("ann")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    assert await server.run_job("reset_member_budgets") == 0  # the hour has not ended

    # Past the hour's end: the job moves ann's counter and says so, once.
    boundary = (server.clock.now_us() // HOUR_US + 1) * HOUR_US
    server.clock.advance((boundary - server.clock.now_us()) / 1e6 + 1)
    assert await server.run_job("reset_member_budgets") == 1
    assert await server.run_job("reset_member_budgets") == 0
    await server.s.usage.Spend(spend_req(5 * CREDIT, "a5", org), metadata=auth("ann"))  # the new window
    assert (await seen(server, org))[3:] == [("budget.reset", "ann", "hour")]
    members = await orgs_stub(server).ListMembers(orgs_pb2.ListMembersRequest(org_id=org), metadata=auth("olga"))
    used = {m.user_id: [b.used_millicredits for b in m.budgets] for m in members.members}
    assert used == {"olga": [], "adam": [], "ann": [5 * CREDIT], "bob": [0]}


async def test_a_members_first_spend_after_the_boundary_resets_before_the_job(server: Running) -> None:
    org = await create_org(server, "olga")
    await fund_org(server, org, 1_000 * CREDIT)
    await add(server, org, "ann", (HOUR, 100 * CREDIT))
    await server.s.usage.Spend(spend_req(10 * CREDIT, "a1", org), metadata=auth("ann"))
    boundary = (server.clock.now_us() // HOUR_US + 1) * HOUR_US
    server.clock.advance((boundary - server.clock.now_us()) / 1e6 + 1)
    await server.s.usage.Spend(spend_req(10 * CREDIT, "a2", org), metadata=auth("ann"))
    assert await server.run_job("reset_member_budgets") == 0  # already moved by the spend
    assert await seen(server, org) == [("budget.reset", "ann", "hour")]
