"""The flow-nexus MCP server with a scoped key's secret as its credential
(stdio and streamable HTTP, the official MCP client): check_balance shows the
key's remaining budget, what the key may not do is a tool error, and a
refusal by the budget is `budget_exceeded` in the tools' units."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from flownexus_billing_client import BudgetExceeded
from flownexus_billing_client.errors import from_rpc_error
from flownexus_billing_client.mcp_server.server import billing_error_body
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.harness import Running
from tests.keys.helpers import CREDIT, DAY, bearer, create_key, fund, spend_req
from tests.mcp.test_mcp import call, http_mcp, refused, stdio_env
from tests.runbook_tools import ROOT


@asynccontextmanager
async def mcp_with(transport: str, server: Running, secret: str) -> AsyncIterator[Client]:
    if transport == "stdio":
        import sys

        params = StdioServerParameters(command=sys.executable, args=["-m", "server", "mcp"],
                                       env=stdio_env(server, secret), cwd=str(ROOT))
        async with Client(params) as c:
            yield c
        return
    async with http_mcp(server) as http, http.client("", bearer=secret) as c:
        yield c


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_check_balance_with_a_key_shows_its_remaining_budget(sqlite_server: Running, transport: str) -> None:
    server = sqlite_server
    await fund(server, "mo", 1_000 * CREDIT)
    made = await create_key(server, "mo", [(DAY, 100 * CREDIT)], label="nightly")
    await server.s.usage.Spend(spend_req(30 * CREDIT + 500, "s1"), metadata=bearer(made.secret))
    async with mcp_with(transport, server, made.secret) as c:
        body = await call(c, "check_balance")
        assert body["credits"] == 1_100 - 30.5
        assert body["key"] == {
            "key_id": made.key.id, "label": "nightly",
            "budgets": [{"window": "day", "limit": 100, "used": 30.5, "remaining": 69.5,
                         "resets_at": "2031-03-15T00:00:00Z"}],
        }
        # A key may not buy credits or touch auto-refill: a tool error, never a protocol error.
        await refused(c, "create_payment_link", {"amount": 10, "request_id": "p1"}, "key_not_allowed")
        await refused(c, "configure_auto_refill", {"enabled": False, "request_id": "r1"}, "key_not_allowed")


async def test_budget_exceeded_is_a_tool_error_in_tool_units(sqlite_server: Running) -> None:
    server = sqlite_server
    await fund(server, "ned", 1_000 * CREDIT)
    made = await create_key(server, "ned", [(DAY, 10 * CREDIT)])
    try:
        await server.s.usage.Spend(spend_req(11 * CREDIT, "s"), metadata=bearer(made.secret))
    except grpc.aio.AioRpcError as rpc:
        exc = from_rpc_error(rpc)
    else:
        raise AssertionError("the spend was not refused")
    assert isinstance(exc, BudgetExceeded) and exc.window == "day"
    body = billing_error_body(exc)
    assert body["error"] == "budget_exceeded"
    assert {k: body["metadata"][k] for k in ("window", "limit", "used", "requested", "remaining", "resets_at")} == {
        "window": "day", "limit": 10, "used": 0, "requested": 11, "remaining": 10, "resets_at": "2031-03-15T00:00:00Z",
    }
