"""The `flow-nexus` MCP server (flownexus_billing_client.mcp_server), through
the official MCP Python SDK client, against the real billing server on
loopback: stdio (`python -m server mcp` as a subprocess) and streamable HTTP
(stateless, in this event loop, and once as `python -m server mcp --transport
http`), on SQLite and PostgreSQL where the ledger is touched.

What is checked: the nine tools and their schemas; each tool's happy path and
main refusals as isError results with a structured body; units (whole
credits, USD, ISO dates, no rounding); retries applied once; two callers with
one request_id kept apart; paging past 100; the role matrix; token audiences;
the protected-resource metadata; the seed's Quick Start sequence.
"""

from __future__ import annotations

import asyncio
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import grpc
import httpx2
import jwt
import pytest
from flownexus.billing.v1 import balance_pb2, history_pb2, usage_pb2
from flownexus_billing_client import BillingClient, InsufficientCredits, PaymentFailed
from flownexus_billing_client.mcp_server import TOOLS, ApiTokens, FlowNexusMcp, McpTokenVerifier
from flownexus_billing_client.mcp_server.server import billing_error_body
from flownexus_billing_client.mcp_server.units import (
    cents_of,
    credits,
    error_metadata,
    millicredits_of,
    usd,
)
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from server.__main__ import main as server_main
from server.platform.auth import Role
from tests.client_fixtures import client_site, client_wheel  # noqa: F401
from tests.harness import JWT_SECRET, Running, auth, expect_error, free_port, run_cmd, token
from tests.mcp.servers import (
    ISSUER,
    call,
    connect,
    grpc_target,
    http_mcp,
    pay,
    refused,
    stdio_env,
    stdio_mcp,
)
from tests.runbook_tools import ROOT
from tests.stripe_fake import StripeFake

FREE = 100  # the free tier's monthly credits

SEED_ARGS = {
    "check_balance": set(),
    "ruv_balance": {"user_id"},
    "create_payment_link": {"amount"},
    "configure_auto_refill": {"enabled"},  # threshold and amount: to enable (the seed disables with {enabled: false})
    "ruv_history": {"user_id", "limit"},
    "get_payment_history": {"limit"},
    "user_upgrade": {"user_id", "tier"},
    "app_store_earn_ruv": {"user_id", "amount", "reason", "source"},
    "user_stats": {"user_id"},
}
SEED_RETURNS = {
    "check_balance": {"credits", "auto_refill", "threshold", "tier"},
    "ruv_balance": {"credits", "pending", "earned_total", "spent_total"},
    "create_payment_link": {"payment_url", "expires_at", "credits_amount"},
    "configure_auto_refill": {"enabled", "threshold", "amount", "next_charge"},
    "ruv_history": {"transactions"},
    "get_payment_history": {"payments"},
    "user_upgrade": {"new_tier", "monthly_credits", "effective_date"},
    "app_store_earn_ruv": {"transaction", "credits"},
    "user_stats": {"credits_earned", "credits_spent", "apps_published", "challenges_completed"},
}


# stdio on one database: the ledger is the same whatever the transport, and HTTP runs on both.
TRANSPORTS = pytest.mark.parametrize(("transport", "db_kind"), [("stdio", "sqlite"), ("http", "sqlite"), ("http", "postgres")])


# ---- the tool list ----------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_tools_have_the_seeds_names_arguments_and_returns(sqlite_server: Running, transport: str) -> None:
    async with http_mcp(sqlite_server) as http, connect(transport, sqlite_server, http, "alice") as c:
        assert c.server_info is None or c.server_info.name == "flow-nexus"
        listed = {t.name: t for t in (await c.list_tools()).tools}
    assert set(listed) == set(SEED_ARGS)
    for name, tool in listed.items():
        inp, out = tool.input_schema, tool.output_schema
        assert inp["type"] == "object" and out is not None and out["type"] == "object", name
        assert SEED_ARGS[name] <= set(inp["properties"]) and set(inp["required"]) == SEED_ARGS[name], name
        assert SEED_RETURNS[name] <= set(out["required"]), name
        assert tool.description and len(tool.description) > 80, name
        mutating = "request_id" in inp["properties"]
        assert mutating == TOOLS[name].mutating
        assert tool.annotations is not None and tool.annotations.read_only_hint is not mutating
        if mutating:
            assert {"request_id", "request_id_source"} <= set(out["required"]), name
    # The descriptions carry the units and the limits an agent needs.
    assert "USD" in listed["create_payment_link"].description and "$10,000" in listed["create_payment_link"].description
    assert "cursor" in listed["ruv_history"].description and "100" in listed["ruv_history"].description
    assert "payment_url" in listed["user_upgrade"].description
    assert "credits" in listed["check_balance"].description.lower()
    assert set(listed["configure_auto_refill"].input_schema["properties"]) >= {"enabled", "threshold", "amount"}
    assert listed["app_store_earn_ruv"].input_schema["properties"]["source"]["enum"] == ["challenge", "app_usage", "referral"]
    assert listed["user_upgrade"].input_schema["properties"]["tier"]["enum"] == ["pro", "enterprise"]


# ---- the seed's Quick Start, through MCP ------------------------------------------------------

async def test_the_seeds_quick_start(stripe_server: Running, stripe_fake: StripeFake) -> None:
    """check balance, create a payment link, configure auto-refill, read history: the
    seed's own sequence and arguments, as an agent on stdio makes it."""
    billing, user = stripe_server, "quick"
    async with stdio_mcp(billing, user) as c:
        balance = await call(c, "check_balance")
        assert balance == {"credits": FREE, "auto_refill": False, "threshold": 0, "tier": "free", "pending": 0,
                           "auto_refill_paused_reason": None}

        link = await call(c, "create_payment_link", {"amount": 50})  # USD minimum $10
        assert link["payment_url"].startswith("http://127.0.0.1:") and link["credits_amount"] == 500
        assert link["amount"] == 50 and link["expires_at"].endswith("Z")
        assert link["request_id_source"] == "derived" and link["request_id"].startswith("mcp-")
        await pay(billing, stripe_fake, link)  # the user pays: 500 credits, and the card is saved

        refill = await call(c, "configure_auto_refill", {"enabled": True, "threshold": 100, "amount": 50, "confirm": True})
        assert (refill["enabled"], refill["threshold"], refill["amount"]) == (True, 100, 50)
        assert refill["next_charge"] and refill["credits_amount"] == 500 and refill["state"] == "idle"
        assert refill["payment_method"]["last4"] == "4242"

        history = await call(c, "ruv_history", {"user_id": user, "limit": 20})
        got = [(t["amount"], t["type"]) for t in history["transactions"]]
        assert got == [(500, "purchase"), (FREE, "allowance_grant")]
        assert history["next_cursor"] is None
        assert all(t["date"].endswith("Z") and t["description"] for t in history["transactions"])

        balance = await call(c, "check_balance")
        assert (balance["credits"], balance["auto_refill"], balance["threshold"]) == (600, True, 100)
        payments = (await call(c, "get_payment_history", {"limit": 10}))["payments"]
        assert [(p["amount"], p["status"], p["kind"]) for p in payments] == [(50, "paid", "checkout")]
        assert set(payments[0]) >= {"date", "amount", "status", "invoice_url"}


# ---- every tool, happy path and main refusals, both transports ---------------------------------

@TRANSPORTS
async def test_each_tool_and_its_refusals(stripe_server: Running, stripe_fake: StripeFake, transport: str) -> None:
    billing, user = stripe_server, f"tools-{transport}"
    rid = iter(f"{transport}-{i}" for i in range(100))
    async with http_mcp(billing) as http:
        async with connect(transport, billing, http, "svc", Role.SERVICE) as svc:
            award = await call(svc, "app_store_earn_ruv", {
                "user_id": user, "amount": 12.345, "reason": "Challenge completion: Advanced Algorithm",
                "source": "challenge", "source_ref": "ch-1", "request_id": next(rid)})
            t = award["transaction"]
            assert (t["amount"], t["type"], t["description"]) == (12.345, "award", "Challenge completion: Advanced Algorithm")
            assert award["credits"] == 112.345 and award["request_id_source"] == "given"
            await refused(svc, "app_store_earn_ruv", {"user_id": user, "amount": 1, "reason": "again", "source": "challenge",
                                                      "source_ref": "ch-1", "request_id": next(rid)}, "already_awarded")
            body = await refused(svc, "app_store_earn_ruv", {"user_id": user, "amount": 0.0001, "reason": "x",
                                                             "source": "referral", "request_id": next(rid)}, "invalid_amount")
            assert body["metadata"]["field"] == "amount"
            await refused(svc, "app_store_earn_ruv", {"user_id": user, "amount": 1, "reason": "x", "source": "lottery"},
                          "invalid_argument")

        async with connect(transport, billing, http, user) as c:
            b = await call(c, "check_balance")
            assert (b["credits"], b["tier"], b["auto_refill"]) == (112.345, "free", False)
            detail = await call(c, "ruv_balance", {"user_id": user})
            assert (detail["credits"], detail["earned_total"], detail["spent_total"], detail["pending"]) == (112.345, 12.345, 0, 0)
            assert {lot["kind"] for lot in detail["lots"]} == {"allowance", "earned"}
            stats = await call(c, "user_stats", {"user_id": user})
            assert (stats["credits_earned"], stats["credits_spent"], stats["challenges_completed"], stats["apps_published"]) == (12.345, 0, 1, 0)

            # create_payment_link: USD in, exact; the limits are the API's, in USD.
            link = await call(c, "create_payment_link", {"amount": 25.5, "request_id": next(rid)})
            assert (link["credits_amount"], link["amount"]) == (255, 25.5)
            low = await refused(c, "create_payment_link", {"amount": 5, "request_id": next(rid)}, "invalid_amount")
            assert (low["metadata"]["min"], low["metadata"]["max"], low["metadata"]["field"]) == (10, 10000, "amount")
            assert "USD" in low["message"] and "request_id" in low
            await refused(c, "create_payment_link", {"amount": 10.005, "request_id": next(rid)}, "invalid_amount")
            await refused(c, "create_payment_link", {"amount": "fifty", "request_id": next(rid)}, "invalid_argument")
            await refused(c, "create_payment_link", {"amount": 50, "request_id": "has space"}, "invalid_request_id")
            await refused(c, "create_payment_link", {"amount": 50, "amout": 50}, "invalid_argument")

            # configure_auto_refill: no card yet; enabling needs threshold and amount; disabling always works.
            await refused(c, "configure_auto_refill", {"enabled": True, "threshold": 100, "amount": 50, "confirm": True, "request_id": next(rid)},
                          "payment_method_required")
            await refused(c, "configure_auto_refill", {"enabled": True, "amount": 50}, "invalid_argument")
            off = await call(c, "configure_auto_refill", {"enabled": False, "request_id": next(rid)})
            assert (off["enabled"], off["state"]) == (False, "disabled")

            # History and payments; limit at most 100.
            h = await call(c, "ruv_history", {"user_id": user, "limit": 5})
            assert [x["amount"] for x in h["transactions"]] == [12.345, FREE] and h["next_cursor"] is None
            await refused(c, "ruv_history", {"user_id": user, "limit": 101}, "invalid_limit")
            await refused(c, "ruv_history", {"user_id": user, "limit": 5, "cursor": "bogus"}, "invalid_page_token")
            p = (await call(c, "get_payment_history", {"limit": 100}))["payments"]
            assert [(x["amount"], x["status"], x["invoice_url"], x["credits"]) for x in p] == [(25.5, "pending", None, 255)]
            assert p[0]["payment_url"] == link["payment_url"]
            await refused(c, "get_payment_history", {"limit": 0}, "invalid_limit")

            # user_upgrade to Pro needs a payment: the link and the pending status, not a pretended upgrade.
            up = await call(c, "user_upgrade", {"user_id": user, "tier": "pro", "confirm": True, "request_id": next(rid)})
            assert (up["new_tier"], up["status"], up["completed"], up["effective_date"]) == ("pro", "payment_required", False, None)
            assert up["payment_url"] and up["monthly_credits"] == 1000
            assert (await call(c, "check_balance"))["tier"] == "free"
            again = await refused(c, "user_upgrade", {"user_id": user, "tier": "pro", "confirm": True, "request_id": next(rid)}, "tier_upgrade_failed")
            assert again["metadata"]["payment_url"] == up["payment_url"]
            await refused(c, "user_upgrade", {"user_id": user, "tier": "gold"}, "invalid_argument")

            await refused(c, "no_such_tool", {}, "unknown_tool")


# ---- idempotency -------------------------------------------------------------------------------

@TRANSPORTS
async def test_a_retried_mutation_applies_once(server: Running, transport: str) -> None:
    billing, user = server, f"retry-{transport}"
    args = {"user_id": user, "amount": 7, "reason": "Referral bonus", "source": "referral", "request_id": "award-7"}
    async with http_mcp(billing) as http, connect(transport, billing, http, "svc", Role.SERVICE) as c:
        first = await call(c, "app_store_earn_ruv", args)
        retry = await call(c, "app_store_earn_ruv", args)
        assert retry == first and first["credits"] == FREE + 7
        reused = await refused(c, "app_store_earn_ruv", {**args, "amount": 8}, "request_id_reused")
        assert reused["request_id"] == "award-7"
        if transport == "stdio":
            # No request_id: each tool call gets its own derived key, said so in the result.
            bare = {k: v for k, v in args.items() if k != "request_id"}
            one, two = await call(c, "app_store_earn_ruv", bare), await call(c, "app_store_earn_ruv", bare)
            assert one["request_id_source"] == two["request_id_source"] == "derived"
            assert one["request_id"] != two["request_id"]
            # A derived key sent back as request_id is a retry of that call.
            assert await call(c, "app_store_earn_ruv", {**bare, "request_id": one["request_id"]}) == {**one, "request_id_source": "given"}
            expected = FREE + 7 * 3
        else:
            # Over HTTP without a session a retry cannot be told from a new call: a key is required.
            body = await refused(c, "app_store_earn_ruv", {k: v for k, v in args.items() if k != "request_id"}, "request_id_required")
            assert body["metadata"] == {"field": "request_id"}
            expected = FREE + 7
        assert (await call(c, "ruv_balance", {"user_id": user}))["credits"] == expected
    assert (await billing.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))).credits_millicredits == expected * 1000


async def test_a_resent_tool_call_gets_the_same_derived_key(sqlite_server: Running) -> None:
    """The derived key is stable across a resend of one JSON-RPC request (same id, same
    session or stdio process) and differs for any other request, session or argument."""
    async with BillingClient(grpc_target(sqlite_server), token("kit")) as api:
        stdio, other = FlowNexusMcp(api), FlowNexusMcp(api)
        spec = TOOLS["create_payment_link"]

        class Ctx:
            def __init__(self, request_id: int) -> None:
                self.request_id = request_id

        key = stdio._request_id(Ctx(7), spec, {"amount": 50})
        assert key == stdio._request_id(Ctx(7), spec, {"amount": 50}) and key[1] == "derived"
        assert key != stdio._request_id(Ctx(8), spec, {"amount": 50})
        assert key != stdio._request_id(Ctx(7), spec, {"amount": 51})
        assert key != other._request_id(Ctx(7), spec, {"amount": 50})  # another process, another connection


async def test_a_legacy_session_over_stateful_http_gets_derived_keys(sqlite_stripe_server: Running) -> None:
    async with http_mcp(sqlite_stripe_server, stateless=False) as http:
        async with http.client("sess", mode="legacy") as c:
            one = await call(c, "create_payment_link", {"amount": 10})
            two = await call(c, "create_payment_link", {"amount": 10})
            assert one["request_id_source"] == "derived" and one["payment_id"] != two["payment_id"]
        async with http.client("sess") as modern:  # the 2026-07-28 protocol has no session
            await refused(modern, "create_payment_link", {"amount": 10}, "request_id_required")


async def test_two_callers_with_one_request_id_stay_apart(stripe_server: Running) -> None:
    """The HTTP server acts for many principals: each keeps its own idempotency scope."""
    billing = stripe_server
    async with http_mcp(billing) as http:
        links = {}
        for user in ("ann", "ben"):
            async with http.client(user) as c:
                links[user] = await call(c, "create_payment_link", {"amount": 20, "request_id": "same"})
        assert links["ann"]["payment_id"] != links["ben"]["payment_id"]
        for user in ("ann", "ben"):
            async with http.client(user) as c:
                paid = (await call(c, "get_payment_history", {"limit": 10}))["payments"]
                assert [p["id"] for p in paid] == [links[user]["payment_id"]]
        for svc in ("challenge-engine", "app-store"):
            async with http.client(svc, Role.SERVICE) as c:
                await call(c, "app_store_earn_ruv", {"user_id": "cat", "amount": 5, "reason": f"from {svc}",
                                                     "source": "app_usage", "request_id": "award-1"})
        async with http.client("cat") as c:
            assert (await call(c, "check_balance"))["credits"] == FREE + 10
        # Concurrent calls of different callers never borrow each other's identity.
        async with http.client("ann") as ann, http.client("ben") as ben:
            seen = await asyncio.gather(*(call(c, "ruv_balance", {"user_id": u}) for _ in range(10)
                                          for c, u in ((ann, "ann"), (ben, "ben"))))
            assert [s["user_id"] for s in seen] == ["ann", "ben"] * 10


# ---- paging -------------------------------------------------------------------------------------

async def test_ruv_history_pages_past_100(server: Running) -> None:
    billing, user = server, "pager"
    spends = [
        billing.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1 + i, request_id=f"s-{i}", category="api"), metadata=auth(user))
        for i in range(120)
    ]
    await asyncio.gather(*spends)
    expected = []
    page = ""
    while True:
        r = await billing.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(page_size=100, page_token=page), metadata=auth(user))
        expected += [t.id for t in r.transactions]
        page = r.next_page_token
        if not page:
            break
    assert len(expected) == 121  # 120 spends and the free allowance
    async with http_mcp(billing) as http, http.client(user) as c:
        got, cursor, pages = [], None, 0
        while True:
            args: dict[str, Any] = {"user_id": user, "limit": 100}
            if cursor:
                args["cursor"] = cursor
            body = await call(c, "ruv_history", args)
            got += body["transactions"]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert pages == 2 and [t["id"] for t in got] == expected
    assert sorted(t["amount"] for t in got if t["type"] == "spend") == sorted(-(1 + i) / 1000 for i in range(120))


# ---- roles --------------------------------------------------------------------------------------

async def test_the_role_matrix(stripe_server: Running) -> None:
    """Through MCP, exactly the gRPC API's role rules: a user reaches only its own account;
    service and admin read and award for others; tiers of others and Enterprise are admin-only."""
    billing = stripe_server
    async with http_mcp(billing) as http:
        async with http.client("alice") as alice, http.client("svc", Role.SERVICE) as svc, \
                http.client("root", Role.ADMIN) as admin:
            for tool in ("ruv_balance", "user_stats"):
                await call(alice, tool, {"user_id": "alice"})
                await refused(alice, tool, {"user_id": "bob"}, "not_your_account")
                assert (await call(svc, tool, {"user_id": "bob"}))["user_id"] == "bob"
                assert (await call(admin, tool, {"user_id": "bob"}))["user_id"] == "bob"
            await call(alice, "ruv_history", {"user_id": "alice", "limit": 10})
            await refused(alice, "ruv_history", {"user_id": "bob", "limit": 10}, "not_your_account")
            await call(svc, "ruv_history", {"user_id": "bob", "limit": 10})
            await call(admin, "ruv_history", {"user_id": "bob", "limit": 10})

            award = {"amount": 1, "reason": "r", "source": "challenge"}
            denied = await refused(alice, "app_store_earn_ruv", {**award, "user_id": "bob", "request_id": "a1"}, "role_required")
            assert denied["metadata"]["role"] == "user"
            await refused(alice, "app_store_earn_ruv", {**award, "user_id": "alice", "request_id": "a2"}, "role_required")
            await call(svc, "app_store_earn_ruv", {**award, "user_id": "bob", "request_id": "a3"})
            await call(admin, "app_store_earn_ruv", {**award, "user_id": "bob", "request_id": "a4"})
            await refused(svc, "app_store_earn_ruv", {**award, "user_id": "svc", "request_id": "a5"}, "self_award")

            await refused(alice, "user_upgrade", {"user_id": "bob", "tier": "pro", "confirm": True, "request_id": "u1"}, "role_required")
            await refused(svc, "user_upgrade", {"user_id": "bob", "tier": "pro", "confirm": True, "request_id": "u2"}, "role_required")
            await refused(alice, "user_upgrade", {"user_id": "alice", "tier": "enterprise", "request_id": "u3"}, "role_required")
            await refused(svc, "user_upgrade", {"user_id": "svc", "tier": "enterprise", "request_id": "u4"}, "role_required")
            own = await call(alice, "user_upgrade", {"user_id": "alice", "tier": "pro", "confirm": True, "request_id": "u5"})
            assert own["status"] == "payment_required"
            other = await call(admin, "user_upgrade", {"user_id": "carl", "tier": "pro", "confirm": True, "request_id": "u6"})
            assert (other["user_id"], other["status"]) == ("carl", "payment_required")
            ent = await call(admin, "user_upgrade", {"user_id": "bob", "tier": "enterprise", "monthly_credits": 5000, "request_id": "u7"})
            assert (ent["new_tier"], ent["status"], ent["completed"], ent["monthly_credits"]) == ("enterprise", "completed", True, 5000)
            assert ent["effective_date"].endswith("Z")
            assert (await call(svc, "ruv_balance", {"user_id": "bob"}))["tier"] == "enterprise"

            # The caller-only tools act on the caller's own account; a service or
            # admin token has none (its subject is never a user's wallet).
            await call(alice, "create_payment_link", {"amount": 10, "request_id": "l1"})
            await refused(svc, "create_payment_link", {"amount": 10, "request_id": "l2"}, "user_token_required")
            assert len((await call(alice, "get_payment_history", {"limit": 10}))["payments"]) == 1
            await refused(admin, "check_balance", {}, "user_token_required")


# ---- auth: audiences, the resource metadata, the HTTP CLI --------------------------------------

async def test_tokens_are_for_one_audience_and_the_resource_metadata_is_served(sqlite_server: Running) -> None:
    billing = sqlite_server
    async with http_mcp(billing) as http:
        mcp_token = http.token("alice")
        # The gRPC API refuses a token minted for the MCP endpoint.
        await expect_error(
            billing.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(("authorization", f"Bearer {mcp_token}"),)),
            grpc.StatusCode.UNAUTHENTICATED, "WRONG_AUDIENCE",
        )
        metadata_url = http.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        async with httpx2.AsyncClient() as h:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            head = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
            # No token, an API token (no audience), a token for another MCP server: 401, pointing at the metadata.
            for bearer in (None, token("alice"), http.token("alice", audience="http://elsewhere.example/mcp")):
                extra = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                r = await h.post(http.url, json=ping, headers={**head, **extra})
                assert r.status_code == 401, r.text
                assert f'resource_metadata="{metadata_url}"' in r.headers["www-authenticate"]
            r = await h.post(http.url, json=ping, headers={**head, "Authorization": f"Bearer {mcp_token}"})
            assert r.status_code == 200 and len(r.json()["result"]["tools"]) == 9
            doc = (await h.get(metadata_url)).json()
            assert doc["resource"] == http.url and doc["bearer_methods_supported"] == ["header"], doc
            assert doc["authorization_servers"] == [http.url.removesuffix("/mcp")]
            assert (await h.get(http.url.replace("/mcp", "/.well-known/oauth-protected-resource"))).json() == doc
    # What the adapter sends the API is its own token for the caller, never the caller's.
    tokens = ApiTokens(JWT_SECRET, ISSUER)
    who = McpTokenVerifier(JWT_SECRET, ISSUER, http.url).caller(mcp_token)
    assert who is not None and (who.subject, who.role) == ("alice", "user")
    sent = tokens.for_caller(who)
    claims = jwt.decode(sent, JWT_SECRET, algorithms=["HS256"], issuer=ISSUER)
    assert sent != mcp_token and "aud" not in claims and claims["act"] == {"sub": "flow-nexus-mcp"}
    assert claims["exp"] <= who.expires_at and (claims["sub"], claims["role"]) == ("alice", "user")
    assert McpTokenVerifier(JWT_SECRET, ISSUER, http.url).caller(sent) is None


async def test_the_http_command(sqlite_server: Running) -> None:
    """`python -m server token --audience` and `python -m server mcp --transport http`."""
    billing, port = sqlite_server, free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = {**stdio_env(billing, ""), "BILLING_JWT_SECRET": JWT_SECRET}
    del env["BILLING_TOKEN"]
    rc, out, err = await run_cmd(sys.executable, "-m", "server", "token", "--user", "dana", "--audience", url, env=env, cwd=ROOT)
    assert rc == 0, err
    bearer = out.strip()
    assert jwt.decode(bearer, JWT_SECRET, algorithms=["HS256"], audience=url)["sub"] == "dana"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "mcp", "--transport", "http", "--port", str(port), env=env, cwd=str(ROOT),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert url.encode() in line, line
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}) as h, \
                Client(streamable_http_client(url, http_client=h)) as c:
            assert (await call(c, "check_balance"))["credits"] == FREE
            assert (await call(c, "ruv_balance", {"user_id": "dana"}))["user_id"] == "dana"
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_client_wheel_ships_the_mcp_server(
    sqlite_server: Running, client_wheel: Path, client_site: Path  # noqa: F811
) -> None:
    """`flownexus-billing-client[mcp]`: the extra, the console script, and the script working
    on stdio with only the installed wheel on the path (no server/, no generated/)."""
    with zipfile.ZipFile(client_wheel) as whl:
        names = whl.namelist()
        meta = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "flownexus_billing_client/mcp_server/server.py" in names
    assert "Provides-Extra: mcp" in meta and 'Requires-Dist: mcp<3,>=2.3; extra == "mcp"' in meta, meta
    assert "flownexus-billing-mcp = flownexus_billing_client.mcp_server.cli:main" in entry
    script = client_site / "bin" / "flownexus-billing-mcp"
    env = {**stdio_env(sqlite_server, token("wheel")), "PYTHONPATH": str(client_site)}
    async with Client(StdioServerParameters(command=str(script), env=env, cwd="/")) as c:
        assert (await call(c, "check_balance"))["credits"] == FREE


def test_stdio_needs_a_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BILLING_TOKEN", raising=False)
    assert server_main(["mcp"]) == 2
    assert "BILLING_TOKEN is required" in capsys.readouterr().err


# ---- units and error bodies ----------------------------------------------------------------------

def test_units_are_exact() -> None:
    assert credits(12_345) == 12.345 and credits(100_000) == 100 and isinstance(credits(100_000), int)
    assert credits(-1) == -0.001 and credits(999_999_999_999_999) == 999_999_999_999.999
    assert json.dumps(credits(123_456_789_012)) == "123456789.012"
    assert usd(1999) == 19.99 and usd(5000) == 50
    assert cents_of(50) == 5000 and cents_of(10.1) == 1010 and cents_of("19.99") == 1999 and cents_of(0.29) == 29
    assert millicredits_of(12.345, "amount") == 12_345 and millicredits_of(100, "threshold") == 100_000
    for bad, error in ((10.005, "invalid_amount"), (1e30, "invalid_amount"), (10**20, "invalid_amount"), (float("nan"), "invalid_amount"), (True, "invalid_argument"), ("1e3", "invalid_argument")):
        with pytest.raises(Exception) as info:
            cents_of(bad)
        assert getattr(info.value, "error", None) == error, bad
    with pytest.raises(Exception, match="whole number of millicredits"):
        millicredits_of(0.0001, "amount")


def test_error_bodies_carry_the_seed_names_and_the_metadata_in_tool_units() -> None:
    short = InsufficientCredits(grpc.StatusCode.FAILED_PRECONDITION, "insufficient credits", "INSUFFICIENT_CREDITS",
                                {"balance_millicredits": "500", "required_millicredits": "2000", "shortfall_millicredits": "1500"})
    assert billing_error_body(short) == {
        "error": "insufficient_credits", "message": "insufficient credits",
        "metadata": {"balance": 0.5, "required": 2, "shortfall": 1.5}, "retryable": False,
    }
    declined = billing_error_body(PaymentFailed(grpc.StatusCode.FAILED_PRECONDITION, "card declined", "PAYMENT_FAILED", {"decline_code": "card_declined"}))
    assert declined["error"] == "payment_failed" and declined["metadata"] == {"decline_code": "card_declined"}
    assert error_metadata({"field": "threshold_millicredits", "max": "1000000000", "got": "0"}) == {"field": "threshold", "max": 1_000_000, "got": 0}
