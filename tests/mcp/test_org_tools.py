"""The MCP tools on an org's shared wallet, through the official Python client:
`org_id` on a call, or the server started for an org (BILLING_MCP_ORG_ID on
stdio, the adapter's org over HTTP). Members read; only owners and admins buy,
change auto-refill or the tier, and a member's or a stranger's attempt is the
tool's normal refusal (org_role_required, not_org_member), never a protocol
error. The TypeScript SDK's view too (js/org.mjs)."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.harness import Running
from tests.mcp.node import http_target, run_node, stdio_target
from tests.mcp.servers import call, http_mcp, pay, refused, stdio_mcp
from tests.orgs.helpers import add_member, create_org
from tests.stripe_fake import StripeFake

FREE = 100  # credits: every user's Free allowance


async def check_the_role_rules(c_owner: Client, c_member: Client, c_stranger: Client, billing: Running,
                               stripe_fake: StripeFake, org: str, explicit: dict[str, str]) -> None:
    """`explicit` is {"org_id": org} when the tool is told the org, {} when the server was started for it."""
    link = await call(c_owner, "create_payment_link", {"amount": 20, "request_id": "own-1", **explicit})
    assert link["org_id"] == org and link["credits_amount"] == 200
    await pay(billing, stripe_fake, link)

    seen = await call(c_member, "check_balance", explicit)
    assert (seen["credits"], seen["org_id"]) == (200, org)
    detail = await call(c_member, "ruv_balance", {"user_id": "mia", **explicit})
    assert detail["credits"] == 200 and detail["org_id"] == org
    history = await call(c_member, "ruv_history", {"user_id": "mia", "limit": 10, **explicit})
    assert [(t["amount"], t["type"]) for t in history["transactions"]] == [(200, "purchase")]
    stats = await call(c_owner, "user_stats", {"user_id": "olga", **explicit})
    assert stats["org_id"] == org

    # A member neither buys, changes auto-refill or the tier, nor lists the payments.
    for tool, args in [
        ("create_payment_link", {"amount": 20, "request_id": "m-1"}),
        ("configure_auto_refill", {"enabled": False, "request_id": "m-2"}),
        ("user_upgrade", {"user_id": "mia", "tier": "pro", "confirm": True, "request_id": "m-3"}),
        ("get_payment_history", {"limit": 10}),
    ]:
        body = await refused(c_member, tool, {**args, **explicit}, "org_role_required")
        assert body["metadata"]["role"] == "member" and body["metadata"]["required"], body
    # A stranger reads nothing of the org's.
    await refused(c_stranger, "check_balance", {"org_id": org}, "not_org_member")
    # The owner does.
    paid = await call(c_owner, "get_payment_history", {"limit": 10, **explicit})
    assert [(p["amount"], p["status"]) for p in paid["payments"]] == [(20, "paid")]
    refill = await call(c_owner, "configure_auto_refill", {"enabled": False, "request_id": "o-2", **explicit})
    assert refill["enabled"] is False and refill["org_id"] == org
    up = await call(c_owner, "user_upgrade", {"user_id": "olga", "tier": "pro", "confirm": True, "request_id": "o-3",
                                              **explicit})
    # The card the purchase saved is the org's: it pays the subscription at once.
    assert up["status"] in ("pending", "completed") and up["org_id"] == org


@pytest.mark.parametrize("db_kind", ["sqlite", "postgres"])
async def test_tools_given_org_id_over_http(stripe_server: Running, stripe_fake: StripeFake) -> None:
    billing = stripe_server
    org = await create_org(billing, "olga")
    await add_member(billing, org, "mia", by="olga")
    async with http_mcp(billing) as http, http.client("olga") as owner, http.client("mia") as member, \
            http.client("eve") as stranger:
        await check_the_role_rules(owner, member, stranger, billing, stripe_fake, org, {"org_id": org})
        # Without org_id: the caller's own wallet, as before.
        mine = await call(member, "check_balance")
        assert mine["credits"] == FREE and "org_id" not in mine
        await refused(member, "check_balance", {"org_id": "team"}, "invalid_org_id")


async def test_a_stdio_server_started_for_an_org(sqlite_stripe_server: Running, stripe_fake: StripeFake) -> None:
    billing = sqlite_stripe_server
    org = await create_org(billing, "olga")
    await add_member(billing, org, "mia", by="olga")
    async with stdio_mcp(billing, "olga", org_id=org) as owner, stdio_mcp(billing, "mia", org_id=org) as member, \
            stdio_mcp(billing, "eve") as stranger:
        await check_the_role_rules(owner, member, stranger, billing, stripe_fake, org, {})
        # org_id "" on a call: the caller's own wallet even on a server started for an org.
        mine = await call(member, "check_balance", {"org_id": ""})
        assert mine["credits"] == FREE and "org_id" not in mine
        # The billing://balance resource shows the org's wallet too.
        read = await member.read_resource("billing://balance")
        assert '"org_id":"' + org + '"' in read.contents[0].text  # type: ignore[union-attr]
    async with http_mcp(billing, org_id=org) as http, http.client("mia") as member:
        seen = await call(member, "check_balance")
        assert (seen["credits"], seen["org_id"]) == (200, org)


async def test_a_typescript_host_on_an_orgs_wallet(sqlite_stripe_server: Running) -> None:
    billing = sqlite_stripe_server
    org = await create_org(billing, "olga")
    await add_member(billing, org, "mia", by="olga")
    async with http_mcp(billing) as http:
        targets = {"member": stdio_target(billing, "mia", org_id=org), "owner": http_target(http, "olga")}
        await run_node("org.mjs", targets, env={"MCP_ORG": org})
