"""Node scripts under tests/mcp/js (the official TypeScript MCP SDK client and
the MCP Inspector CLI, installed by `make test` with `npm ci` from the
committed package-lock.json), run from pytest against the real billing server."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import pytest

from server.platform.auth import Role
from tests.harness import Running, run_cmd, token
from tests.mcp.servers import Http, stdio_env
from tests.runbook_tools import ROOT

JS = ROOT / "tests" / "mcp" / "js"


def require_node_modules() -> None:
    """A missing install fails the test: it is never counted as a pass."""
    if shutil.which("node") is None:
        pytest.fail("node is required (it is on every developer and CI machine)")
    if not (JS / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json").exists():
        pytest.fail("tests/mcp/js is not installed: run `make test` (or `cd tests/mcp/js && npm ci`)")


def stdio_target(billing: Running, user: str, role: Role | str = Role.USER, *, org_id: str = "") -> dict[str, Any]:
    """How a host starts the server on stdio: `python -m server mcp` acting for one token
    (for an org's wallet when org_id is given)."""
    return {"transport": "stdio", "command": sys.executable, "args": ["-m", "server", "mcp"],
            "env": stdio_env(billing, token(user, role), org_id), "cwd": str(ROOT)}


def http_target(http: Http, user: str, role: Role | str = Role.USER) -> dict[str, Any]:
    return {"transport": "http", "url": http.url, "bearer": http.token(user, role)}


async def run_node(script: str, targets: dict[str, dict[str, Any]], *args: str, timeout: float = 180,
                   env: dict[str, str] | None = None) -> str:
    """Runs tests/mcp/js/<script>; its assertions failing fail the test, with its output."""
    require_node_modules()
    rc, out, err = await run_cmd(
        "node", str(JS / script), *args, cwd=JS, timeout=timeout,
        env={"PATH": os.environ["PATH"], "MCP_TARGETS": json.dumps(targets), **(env or {})},
    )
    assert rc == 0, f"{script} failed ({rc}):\n{out}\n{err}"
    return out
