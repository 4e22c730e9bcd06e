"""The flow-nexus MCP server run for tests against a real billing server:
over streamable HTTP in the test's event loop, or on stdio as the subprocess
an agent host starts; and the official Python SDK client's view of results."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import uvicorn
from flownexus_billing_client import BillingClient
from flownexus_billing_client.mcp_server import ApiTokens, FlowNexusMcp, McpTokenVerifier
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from server.platform.auth import Role, mint_token
from tests.calls import deliver
from tests.harness import JWT_SECRET, Running, free_port, token
from tests.runbook_tools import ROOT
from tests.stripe_fake import StripeFake, event

ISSUER = "flownexus-billing"


# ---- running the MCP server ------------------------------------------------------------------

def grpc_target(billing: Running) -> str:
    return billing.target


class Http:
    """The MCP server over streamable HTTP in this event loop (uvicorn)."""

    def __init__(self, url: str, adapter: FlowNexusMcp) -> None:
        self.url = url
        self.adapter = adapter

    def token(self, user: str, role: Role | str = Role.USER, *, audience: str | None = None) -> str:
        return mint_token(JWT_SECRET, user, Role(role), ttl_seconds=600, audience=audience or self.url)

    @asynccontextmanager
    async def client(self, user: str, role: Role | str = Role.USER, *, mode: str = "auto",
                     bearer: str | None = None, **options: Any) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {bearer if bearer is not None else self.token(user, role)}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(self.url, http_client=http), mode=mode, **options) as c:
            yield c


@asynccontextmanager
async def http_mcp(billing: Running, *, stateless: bool = True, **adapter_options: Any) -> AsyncIterator[Http]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with BillingClient(grpc_target(billing), "") as api:
        adapter = FlowNexusMcp(api, tokens=ApiTokens(JWT_SECRET, ISSUER), verifier=McpTokenVerifier(JWT_SECRET, ISSUER, url),
                               **adapter_options)
        app = adapter.http_app(resource_url=url, authorization_server=f"http://127.0.0.1:{port}", stateless=stateless)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                assert not task.done(), "the MCP HTTP server did not start"
                await asyncio.sleep(0.02)
            yield Http(url, adapter)
        finally:
            server.should_exit = True
            await task


def stdio_env(billing: Running, bearer: str, org_id: str = "") -> dict[str, str]:
    return {
        **({"BILLING_MCP_ORG_ID": org_id} if org_id else {}),
        "PATH": os.environ["PATH"],
        # The checkout's packages (pytest's pythonpath), ahead of anything installed.
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "generated", "clients/python/src")),
        "BILLING_GRPC_TARGET": grpc_target(billing),
        "BILLING_TOKEN": bearer,
        # The same clock as the test process, also under a shifted one (faketime):
        # the adapter mints API tokens that this process's server checks.
        **{k: v for k, v in os.environ.items() if k == "LD_PRELOAD" or k.startswith("FAKETIME")},
    }


@asynccontextmanager
async def stdio_mcp(billing: Running, user: str, role: Role | str = Role.USER, *, org_id: str = "",
                    **options: Any) -> AsyncIterator[Client]:
    """`python -m server mcp` as an agent runs it: a subprocess on stdio, acting for one token
    (and started for an org, BILLING_MCP_ORG_ID, when org_id is given)."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server", "mcp"], env=stdio_env(billing, token(user, role), org_id),
        cwd=str(ROOT),
    )
    async with Client(params, **options) as c:
        yield c


@asynccontextmanager
async def connect(transport: str, billing: Running, http: Http | None, user: str,
                  role: Role | str = Role.USER) -> AsyncIterator[Client]:
    if transport == "stdio":
        async with stdio_mcp(billing, user, role) as c:
            yield c
    else:
        assert http is not None
        async with http.client(user, role) as c:
            yield c


# ---- calling tools ----------------------------------------------------------------------------

async def call(c: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A successful call: the SDK client has already checked it against the tool's outputSchema."""
    r = await c.call_tool(tool, args or {})
    assert not r.is_error, f"{tool}({args}) failed: {r.structured_content or r.content}"
    body = r.structured_content
    assert isinstance(body, dict)
    assert json.loads(r.content[0].text) == body  # type: ignore[union-attr]
    return body


async def refused(c: Client, tool: str, args: dict[str, Any] | None, error: str) -> dict[str, Any]:
    """A refusal: a tool result with isError whose text is the JSON error body, never a
    protocol error, and no structuredContent (that would have to match the success schema)."""
    r = await c.call_tool(tool, args or {})
    assert r.is_error, f"{tool}({args}) was expected to fail with {error}: {r.content}"
    assert r.structured_content is None, r.structured_content
    assert len(r.content) == 1 and r.content[0].type == "text", r.content
    text = r.content[0].text
    body = json.loads(text)
    assert isinstance(body, dict) and body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["metadata"], dict) and isinstance(body["retryable"], bool)
    assert "Traceback" not in text
    return body


async def pay(billing: Running, fake: StripeFake, link: dict[str, Any]) -> None:
    """The customer pays a payment link; Stripe's signed webhook arrives."""
    session = fake.sessions[link["payment_url"].rsplit("/", 1)[-1]]
    await fake.pay(session["id"])
    assert await deliver(billing, event("checkout.session.completed", copy.deepcopy(session))) == 200


