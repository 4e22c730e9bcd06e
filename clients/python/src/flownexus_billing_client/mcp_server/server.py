"""The `flow-nexus` MCP server: the seed's tools over the gRPC API.

One `mcp.server.lowlevel.Server` serves both transports:
- stdio: it acts for the one principal of the token it was started with;
- streamable HTTP: a resource server acting for each verified bearer token's
  principal with an API token of its own (see auth.py).

Every refusal is a tool result with isError whose one text content is the
JSON error body `{error, message, metadata, retryable[, request_id]}`: the
API's ErrorInfo reason in lower case (insufficient_credits, payment_failed,
...) with its metadata in the tools' units, or the adapter's own reason
(invalid_argument, invalid_amount, request_id_required, ...). Never a stack
trace or a protocol error. A refusal carries no structuredContent: clients
validate structuredContent against the tool's output schema, which describes
the success (the TypeScript SDK throws -32602 on a mismatch, error or not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlparse

import grpc
import mcp_types as types
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import ProtectedResourceMetadata
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.errors import BillingError
from flownexus_billing_client.mcp_server.auth import ApiTokens, Caller, McpTokenVerifier
from flownexus_billing_client.mcp_server.confirmation import confirm
from flownexus_billing_client.mcp_server.resources import BalanceResource
from flownexus_billing_client.mcp_server.tools import TOOLS, Args, ToolSpec
from flownexus_billing_client.mcp_server.units import FIELDS, Refusal, error_metadata

log = logging.getLogger("flownexus_billing_client.mcp")

NAME = "flow-nexus"
# Payment links above this many cents ask the human first (BILLING_MCP_CONFIRM_ABOVE_USD).
CONFIRM_ABOVE_CENTS = 100_00
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
INSTRUCTIONS = (
    "Flow Nexus billing: rUv credits, purchases, auto-refill, tiers and earnings. Credits are whole credits "
    "(JSON numbers, up to 3 decimals); money is USD; dates are ISO 8601 UTC. Mutating tools take an optional "
    "request_id: reuse it when you retry so the call applies once. Refusals come back as isError results "
    "whose body names the error (insufficient_credits, payment_failed, invalid_amount, auto_refill_failed, "
    "tier_upgrade_failed, ...). Enabling auto-refill, upgrading to Pro and large payment links are "
    "confirmed by the human first. Read the resource billing://balance for your balance; subscribe to it to be "
    "told when it changes."
)


def _key(*parts: str) -> str:
    """Length-prefixed, so no two different tuples hash alike."""
    return "".join(f"{len(p)}:{p}|" for p in parts)


def _text(body: dict[str, Any]) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=json.dumps(body, ensure_ascii=False, separators=(",", ":")))]


def _result(body: dict[str, Any]) -> types.CallToolResult:
    # The JSON text too: clients that predate structuredContent read that.
    return types.CallToolResult(content=_text(body), structured_content=body)


def _refusal(body: dict[str, Any]) -> types.CallToolResult:
    # The body in the text only: structuredContent must match the success schema.
    return types.CallToolResult(content=_text(body), is_error=True)


def refusal_body(error: str, message: str, metadata: dict[str, Any], *, retryable: bool = False) -> dict[str, Any]:
    return {"error": error, "message": message, "metadata": metadata, "retryable": retryable}


def billing_error_body(exc: BillingError) -> dict[str, Any]:
    meta = error_metadata(exc.metadata)
    unit = {"_cents": "USD", "_millicredits": "credits"}
    api_field = exc.metadata.get("field", "")
    suffix = next((s for s in unit if api_field.endswith(s)), None)
    if suffix and "min" in meta and "max" in meta:
        message = f"{meta['field']} must be between {meta['min']} and {meta['max']} {unit[suffix]}"
    else:
        message = exc.message
        for api_name, name in FIELDS.items():
            message = message.replace(api_name, name)
    reason = (exc.reason or exc.code.name).lower()
    return refusal_body(reason, message, meta, retryable=exc.code in RETRYABLE)


class FlowNexusMcp:
    """The adapter. `principal` gives, per request, the API client to call with
    and the idempotency connection key (None when the transport has none)."""

    def __init__(
        self, api: BillingClient, *, tokens: ApiTokens | None = None, verifier: McpTokenVerifier | None = None,
        confirm_above_cents: int = CONFIRM_ABOVE_CENTS, org_id: str = "",
    ) -> None:
        self.api = api
        # The org whose wallet the tools act on unless a call names another (org_id): BILLING_MCP_ORG_ID.
        self.org_id = org_id
        self.confirm_above_cents = confirm_above_cents
        self.tokens = tokens  # HTTP: mint per caller; None: stdio, one principal
        self.verifier = verifier
        # stdio serves one client connection per process: the process is the session.
        self.nonce = secrets.token_hex(16)
        self.stateful = False  # HTTP: set by http_app
        self.balance = BalanceResource(self._api_for, self._connection, org_id)
        self.server: Server[Any] = Server(
            NAME,
            version=_version(),
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self.balance.list,
            on_read_resource=self.balance.read,
            on_subscribe_resource=self.balance.subscribe,
            on_unsubscribe_resource=self.balance.unsubscribe,
            # Listen streams need a response stream; the HTTP app answers in JSON, so stdio only.
            on_subscriptions_listen=self.balance.listen if tokens is None else None,
        )

    # ---- MCP handlers -----------------------------------------------------------------

    async def _list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_tool(t) for t in TOOLS.values()])

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult | types.InputRequiredResult:
        spec = TOOLS.get(params.name)
        if spec is None:
            return _refusal(refusal_body("unknown_tool", f"no tool named {params.name!r}", {"tool": params.name}))
        used: list[tuple[str, str]] = []

        def request_id() -> str:
            if not used:
                used.append(self._request_id(ctx, spec, args.values))
            return used[0][0]

        try:
            args = Args(dict(params.arguments or {}), spec.input_schema, org_id=self.org_id)
            api = self._api_for(ctx)
            charge = await spec.charge(api, args, self.confirm_above_cents) if spec.charge else None
            if charge is not None and (asking := await confirm(ctx, params, charge, args.values)) is not None:
                return asking
            body = await spec.handler(api, args, request_id)
            if spec.mutating:
                assert used, f"{spec.name} is mutating but sent no request_id"
                body.update(request_id=used[0][0], request_id_source=used[0][1])
            return _result(body)
        except Refusal as r:
            out = refusal_body(r.error, r.message, r.metadata)
        except BillingError as exc:
            out = billing_error_body(exc)
        except Exception:
            log.exception("tool %s failed", spec.name)
            out = refusal_body("internal", "internal error; a retry with the same request_id is safe", {}, retryable=True)
        if used:
            out["request_id"] = used[0][0]
        return _refusal(out)

    # ---- who is calling ---------------------------------------------------------------

    def _api_for(self, ctx: Any) -> BillingClient:
        if self.tokens is None:
            return self.api
        who = self._caller(ctx)
        if who is None:  # the bearer middleware lets no such request through
            raise Refusal("unauthenticated", "a bearer token issued for this MCP server is required", {})
        if who.key_secret:
            return self.api.with_token(who.key_secret)
        return self.api.with_token(self.tokens.for_caller(who))

    def _caller(self, ctx: Any) -> Caller | None:
        # The HTTP request this message came in (its scope holds the verified
        # token), else the SDK's per-request context variable.
        scope = getattr(getattr(ctx, "request", None), "scope", None) or {}
        user = scope.get("user")
        token: AccessToken | None = user.access_token if isinstance(user, AuthenticatedUser) else get_access_token()
        if token is None or self.verifier is None:
            return None
        # Verified again here, cheaply: the role lives in the token, not in a session.
        return self.verifier.caller(token.token)

    def _connection(self, ctx: Any) -> str | None:
        if self.tokens is None:
            return "stdio|" + self.nonce
        # A session id counts only where the SDK checked it: a stateful server on a
        # handshake-era protocol (it answers 404 to an id it did not issue).
        if not self.stateful or getattr(ctx, "protocol_version", None) not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        headers = getattr(getattr(ctx, "request", None), "headers", None) or {}
        session = headers.get("mcp-session-id")
        return f"session|{session}" if session else None

    def _request_id(self, ctx: Any, spec: ToolSpec, args: dict[str, Any]) -> tuple[str, str]:
        given = args.get("request_id")
        if given is not None:
            if not isinstance(given, str) or not REQUEST_ID.match(given):
                raise Refusal("invalid_request_id", "request_id must be 1 to 128 printable ASCII characters", {"field": "request_id"})
            return given, "given"
        connection = self._connection(ctx)
        if connection is None:
            raise Refusal(
                "request_id_required",
                f"{spec.name} changes billing state and this connection has no session, so a retry cannot be "
                "told from a new call: pass request_id (any unique string; send the same one when you retry)",
                {"field": "request_id"},
            )
        # The same JSON-RPC request on the same connection (a resend) gives the same key;
        # another request id, connection or argument gives another.
        canonical = json.dumps({k: v for k, v in args.items() if k != "request_id"}, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(_key(connection, str(ctx.request_id), spec.name, canonical).encode()).hexdigest()
        return "mcp-" + digest[:40], "derived"

    # ---- HTTP -------------------------------------------------------------------------

    def http_app(
        self,
        *,
        resource_url: str,
        authorization_server: str,
        host: str = "127.0.0.1",
        stateless: bool = True,
    ) -> Starlette:
        """The streamable HTTP app at the resource URL's path, with the RFC 9728
        protected-resource metadata and bearer-token checks from the SDK."""
        assert self.verifier is not None, "HTTP needs a token verifier"
        self.stateful = not stateless
        url = urlparse(resource_url)
        # From strings: the models keep a path-less URL as written (issuers compare exactly).
        auth = AuthSettings.model_validate(
            {"issuer_url": authorization_server, "resource_server_url": resource_url, "validate_token_resource": True}
        )
        metadata = ProtectedResourceMetadata.model_validate(
            {"resource": resource_url, "authorization_servers": [authorization_server]}
        )

        async def root_metadata(request: Request) -> Response:
            return JSONResponse(metadata.model_dump(mode="json", exclude_none=True))

        # The SDK serves /.well-known/oauth-protected-resource/<path> (RFC 9728 §3.1);
        # some clients look at the root document, so the same one is served there too.
        routes = [Route("/.well-known/oauth-protected-resource", root_metadata, methods=["GET"])] if url.path not in ("", "/") else []
        security = None
        if host in ("127.0.0.1", "localhost", "::1"):
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=[url.netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=[f"{url.scheme}://{url.netloc}", "http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        return self.server.streamable_http_app(
            streamable_http_path=url.path or "/",
            stateless_http=stateless,
            json_response=True,
            transport_security=security,
            host=host,
            auth=auth,
            token_verifier=self.verifier,
            custom_starlette_routes=routes,
        )


def _tool(spec: ToolSpec) -> types.Tool:
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=types.ToolAnnotations(
            title=spec.title,
            read_only_hint=spec.hints.read_only,
            destructive_hint=spec.hints.destructive,
            idempotent_hint=spec.hints.idempotent,
            open_world_hint=spec.hints.open_world,
        ),
    )


def _version() -> str:
    from flownexus_billing_client import __version__

    return __version__

