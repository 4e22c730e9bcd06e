"""`flownexus-billing-mcp` (also `python -m server mcp` in the repository).

    stdio (an agent runs it as a subprocess; it acts for BILLING_TOKEN's principal):
        BILLING_GRPC_TARGET=localhost:50051 BILLING_TOKEN=... flownexus-billing-mcp
    streamable HTTP (remote agents; stateless, so replicas can sit behind a load balancer):
        BILLING_JWT_SECRET=... flownexus-billing-mcp --transport http --port 8000 \\
            --resource-url https://mcp.example.com/mcp
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.mcp_server.auth import ApiTokens, McpTokenVerifier
from flownexus_billing_client.mcp_server.server import FlowNexusMcp
from flownexus_billing_client.mcp_server.units import Refusal, cents_of

ORG_ID = re.compile(r"^org_[0-9a-f]{32}$")
ENV_HELP = """environment:
  BILLING_GRPC_TARGET    the billing gRPC API (default localhost:50051)
  BILLING_TOKEN          stdio: the bearer token of the principal it acts for (or a scoped key's secret, fnk_...)
  BILLING_JWT_SECRET     http: the API's HS256 secret; verifies MCP tokens and mints API tokens
  BILLING_JWT_ISSUER     the tokens' issuer (default flownexus-billing)
  BILLING_MCP_RESOURCE_URL          http: this endpoint's public URL, the tokens' audience
  BILLING_MCP_AUTHORIZATION_SERVER  http: listed in the protected-resource metadata
  BILLING_MCP_CONFIRM_ABOVE_USD     payment links above this many USD ask the human first (default 100)
  BILLING_MCP_ORG_ID                the org whose shared wallet the tools act on unless a call names another
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flownexus-billing-mcp", description="The flow-nexus MCP server over the billing gRPC API",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--target", default=os.environ.get("BILLING_GRPC_TARGET", "localhost:50051"), help="gRPC API host:port")
    p.add_argument("--host", default="127.0.0.1", help="http: bind address")
    p.add_argument("--port", type=int, default=8000, help="http: port")
    p.add_argument("--resource-url", default=os.environ.get("BILLING_MCP_RESOURCE_URL", ""),
                   help="http: the public URL of the MCP endpoint (default http://HOST:PORT/mcp); tokens must name it as audience")
    p.add_argument("--authorization-server", default=os.environ.get("BILLING_MCP_AUTHORIZATION_SERVER", ""),
                   help="http: the authorization server named in the protected-resource metadata (default: the resource's origin)")
    p.add_argument("--stateful", action="store_true",
                   help="http: keep MCP sessions in this process (one replica only); default stateless")
    p.add_argument("--confirm-above", default=os.environ.get("BILLING_MCP_CONFIRM_ABOVE_USD", "100"),
                   help="USD: a payment link above this asks the human to confirm first (default 100)")
    p.add_argument("--org", default=os.environ.get("BILLING_MCP_ORG_ID", ""),
                   help="act on this org's wallet (org_...) unless a tool call gives org_id; default: the caller's own")
    p.add_argument("--log-level", default=os.environ.get("BILLING_LOG_LEVEL", "WARNING"))
    return p


def main(argv: list[str] | None = None, *, default_jwt_secret: Callable[[], str] | None = None) -> int:
    args = parser().parse_args(argv)
    # stdout is the protocol on stdio: logs go to stderr only.
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    issuer = os.environ.get("BILLING_JWT_ISSUER", "flownexus-billing")
    try:
        confirm_above = cents_of(args.confirm_above, "confirm_above")
    except Refusal as r:
        print(f"--confirm-above (BILLING_MCP_CONFIRM_ABOVE_USD): {r.message}", file=sys.stderr)
        return 2
    if args.org and not ORG_ID.match(args.org):
        print(f"--org (BILLING_MCP_ORG_ID) must be \"org_\" and 32 lowercase hex digits, not {args.org!r}", file=sys.stderr)
        return 2
    if args.transport == "stdio":
        token = os.environ.get("BILLING_TOKEN", "")
        if not token:
            print("BILLING_TOKEN is required: the bearer token of the principal this server acts for\n"
                  "  (development: export BILLING_TOKEN=$(python -m server token --user alice))", file=sys.stderr)
            return 2
        asyncio.run(serve_stdio(args.target, token, confirm_above, args.org))
        return 0
    secret = os.environ.get("BILLING_JWT_SECRET", "") or (default_jwt_secret() if default_jwt_secret else "")
    if not secret:
        print("BILLING_JWT_SECRET is required over HTTP", file=sys.stderr)
        return 2
    resource = args.resource_url or f"http://{args.host}:{args.port}/mcp"
    if urlparse(resource).hostname in ("0.0.0.0", "::"):
        print("set --resource-url (BILLING_MCP_RESOURCE_URL) to the URL agents use", file=sys.stderr)
        return 2
    url = urlparse(resource)
    authz = args.authorization_server or f"{url.scheme}://{url.netloc}"
    asyncio.run(serve_http(args.target, secret, issuer, resource, authz, args.host, args.port,
                           stateless=not args.stateful, confirm_above=confirm_above, org_id=args.org))
    return 0


async def serve_stdio(target: str, token: str, confirm_above: int, org_id: str = "") -> None:
    from mcp.server.stdio import stdio_server

    async with BillingClient(target, token) as api:
        adapter = FlowNexusMcp(api, confirm_above_cents=confirm_above, org_id=org_id)
        async with stdio_server() as (read, write):
            await adapter.server.run(read, write, adapter.server.create_initialization_options())


async def serve_http(
    target: str, secret: str, issuer: str, resource: str, authorization_server: str, host: str, port: int, *, stateless: bool,
    confirm_above: int, org_id: str = "",
) -> None:
    import uvicorn

    # The API client carries no token of its own: each call gets one minted for its caller.
    async with BillingClient(target, "") as api:
        adapter = FlowNexusMcp(api, tokens=ApiTokens(secret, issuer), verifier=McpTokenVerifier(secret, issuer, resource),
                               confirm_above_cents=confirm_above, org_id=org_id)
        app = adapter.http_app(resource_url=resource, authorization_server=authorization_server, host=host, stateless=stateless)
        announce = f"flow-nexus MCP on {resource} (gRPC API {target})"

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                if self.started:  # announced once the port is bound: whoever waits for the line can connect
                    print(announce, file=sys.stderr, flush=True)

        await Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).serve()


if __name__ == "__main__":
    sys.exit(main())
