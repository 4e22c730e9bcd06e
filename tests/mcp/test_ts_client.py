"""The flow-nexus MCP server as agent hosts built on the official TypeScript
SDK (`@modelcontextprotocol/sdk`) drive it: initialize, tools/list, then
tools/call, over stdio and streamable HTTP, against the real billing server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from server.platform.auth import Role
from tests.harness import Running
from tests.mcp.node import http_target, run_node, stdio_target
from tests.mcp.servers import http_mcp
from tests.mcp.test_confirmation import nothing_applied

TRANSPORTS = pytest.mark.parametrize("transport", ["stdio", "http"])


@asynccontextmanager
async def targets(billing: Running, transport: str, **principals: tuple[str, Role]) -> AsyncIterator[dict[str, Any]]:
    """Each principal's connection, as the script's MCP_TARGETS."""
    async with http_mcp(billing) as http:
        if transport == "stdio":
            yield {name: stdio_target(billing, user, role) for name, (user, role) in principals.items()}
        else:
            yield {name: http_target(http, user, role) for name, (user, role) in principals.items()}


@TRANSPORTS
async def test_refusals_are_tool_errors_after_tools_list(sqlite_stripe_server: Running, transport: str) -> None:
    """A refusal whose structured body broke the tool's output schema made the client throw -32602."""
    async with targets(sqlite_stripe_server, transport, user=("ts-refusals", Role.USER)) as t:
        await run_node("refusals.mjs", t)


@TRANSPORTS
async def test_every_tool_succeeds_and_refuses_readably(stripe_server: Running, transport: str) -> None:
    user = f"ts-tools-{transport}"
    async with targets(stripe_server, transport, user=(user, Role.USER), service=("ts-svc", Role.SERVICE)) as t:
        await run_node("tools.mjs", t, env={"MCP_USER": user})


@TRANSPORTS
async def test_confirmation_with_a_typescript_host(sqlite_stripe_server: Running, transport: str) -> None:
    billing, user, decliner = sqlite_stripe_server, f"ts-asks-{transport}", f"ts-declines-{transport}"
    async with targets(billing, transport, accepts=(user, Role.USER), declines=(decliner, Role.USER)) as t:
        await run_node("confirm.mjs", t, env={"MCP_USER": user})
    await nothing_applied(billing, decliner)
