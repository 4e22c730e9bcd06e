"""The MCP tool ruv_history shows what a spend priced from usage used (meter
and quantity), through the official Python client and the TypeScript SDK
(which checks each result against the tool's output schema)."""

from __future__ import annotations

import pytest
from flownexus.billing.v1 import usage_pb2

from tests.harness import Running
from tests.mcp.node import http_target, run_node, stdio_target
from tests.mcp.servers import call, connect, http_mcp
from tests.pricing.usage_calls import SVC, spend_usage, used

TRANSPORTS = pytest.mark.parametrize(("transport", "db_kind"), [("stdio", "sqlite"), ("http", "postgres")])


async def _spend(billing: Running, user: str) -> None:
    await spend_usage(billing, user, used("sandbox.seconds", 1_500, size="large"), "mcp-u1", category="sandbox")
    await billing.s.usage.Spend(
        usage_pb2.SpendRequest(user_id=user, amount_millicredits=250, request_id="mcp-a1"), metadata=SVC)


@TRANSPORTS
async def test_ruv_history_items_carry_meter_and_quantity(server: Running, transport: str) -> None:
    user = f"mcp-meter-{transport}"
    await _spend(server, user)
    async with http_mcp(server) as http, connect(transport, server, http, user) as c:
        out = await call(c, "ruv_history", {"user_id": user, "limit": 10})
    by_amount, by_usage = out["transactions"][0], out["transactions"][1]
    assert (by_usage["meter"], by_usage["quantity"], by_usage["amount"]) == ("sandbox.seconds", 1_500, -6)
    assert (by_amount["meter"], by_amount["quantity"], by_amount["amount"]) == (None, None, -0.25)
    assert out["transactions"][-1]["type"] == "allowance_grant"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_ruv_history_meter_with_a_typescript_host(sqlite_server: Running, transport: str) -> None:
    user = f"ts-meter-{transport}"
    await _spend(sqlite_server, user)
    async with http_mcp(sqlite_server) as http:
        target = stdio_target(sqlite_server, user) if transport == "stdio" else http_target(http, user)
        await run_node("meter.mjs", {"user": target}, env={"MCP_USER": user})
