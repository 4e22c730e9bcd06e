"""Every tool carries a title and the four MCP annotations, each chosen for the
tool (docs/agents.md gives the reasons): hosts ask for confirmation, retry
or run in parallel by them."""

from __future__ import annotations

import pytest

from tests.harness import Running
from tests.mcp.servers import connect, http_mcp

# tool: (title, readOnlyHint, destructiveHint, idempotentHint, openWorldHint)
CHOSEN = {
    "check_balance": ("Check balance", True, False, True, False),
    "ruv_balance": ("Detailed balance", True, False, True, False),
    "ruv_history": ("Credit history", True, False, True, False),
    "get_payment_history": ("Payment history", True, False, True, False),
    "user_stats": ("User statistics", True, False, True, False),
    "create_payment_link": ("Buy credits", False, False, False, True),
    "configure_auto_refill": ("Configure auto-refill", False, True, True, True),
    "user_upgrade": ("Upgrade tier", False, True, True, True),
    "app_store_earn_ruv": ("Award earned credits", False, False, False, False),
}


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_every_tool_has_a_title_and_its_chosen_annotations(sqlite_server: Running, transport: str) -> None:
    async with http_mcp(sqlite_server) as http, connect(transport, sqlite_server, http, "hints") as c:
        tools = (await c.list_tools()).tools
    got = {}
    for t in tools:
        a = t.annotations
        assert a is not None and a.title == t.title, t.name
        got[t.name] = (t.title, a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
    assert got == CHOSEN
