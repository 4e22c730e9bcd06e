"""One conformance pass with the MCP Inspector's CLI mode
(`@modelcontextprotocol/inspector --cli`, from tests/mcp/js): over stdio and
streamable HTTP it lists the tools (with --strict, which fails on any
error-severity schema portability problem) and calls tools, a success and a
refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Running, run_cmd
from tests.mcp.node import JS, require_node_modules, stdio_target
from tests.mcp.servers import http_mcp


async def inspector(target: dict[str, Any], tmp: Path, *args: str, exit_code: int = 0) -> dict[str, Any]:
    require_node_modules()
    if target["transport"] == "stdio":
        where = [*(f"-e{k}={v}" for k, v in target["env"].items()), "--cwd", target["cwd"],
                 "--transport", "stdio", "--", target["command"], *target["args"]]
    else:
        where = ["--transport", "http", "--server-url", target["url"], "--header", f"Authorization: Bearer {target['bearer']}"]
    rc, out, err = await run_cmd(
        str(JS / "node_modules" / ".bin" / "mcp-inspector"), "--cli", "--format", "json", *args, *where,
        cwd=JS, timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp), "MCP_CATALOG_PATH": str(tmp / "catalog.json")},
    )
    assert rc == exit_code, f"inspector {args} exited {rc}:\n{out}\n{err}"
    if "--strict" in args:  # no schema portability problem, not even a warning
        assert "Warning:" not in err and "Error:" not in err, err
    return dict(json.loads(out)["result"])


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_inspector_lists_and_calls_tools(sqlite_stripe_server: Running, transport: str, tmp_path: Path) -> None:
    billing = sqlite_stripe_server
    async with http_mcp(billing) as http:
        target = stdio_target(billing, "inspected") if transport == "stdio" else \
            {"transport": "http", "url": http.url, "bearer": http.token("inspected")}
        listed = await inspector(target, tmp_path, "--method", "tools/list", "--strict")
        tools = {t["name"]: t for t in listed["tools"]}
        assert len(tools) == 9 and tools["check_balance"]["annotations"]["readOnlyHint"] is True
        balance = await inspector(target, tmp_path, "--method", "tools/call", "--tool-name", "check_balance")
        assert balance["structuredContent"]["credits"] == 100 and not balance.get("isError")
        low = await inspector(target, tmp_path, "--method", "tools/call", "--tool-name", "create_payment_link",
                              "--tool-args-json", json.dumps({"amount": 5, "request_id": "inspector-low"}),
                              exit_code=5)  # the CLI's exit code for a tool's isError result
        assert low["isError"] is True and "structuredContent" not in low
        assert json.loads(low["content"][0]["text"])["error"] == "invalid_amount"
