"""The caller's live balance as an MCP resource, `billing://balance`.

`resources/read` returns what check_balance returns (JSON). With
`resources/subscribe` the server follows the API's balance watch
(BalanceService/WatchBalance) for that caller and sends
`notifications/resources/updated` on every change it reports (a spend, a
purchase, a refill or its failure, a tier change, a coalesced snapshot); the
client then reads the resource again. A subscription lives on its connection:
the stdio process, or a session of a `--stateful` HTTP server (its standalone
stream carries the notifications). Stateless HTTP has no channel to notify on,
so there a subscription is refused. On 2026-07-28, which has no
resources/subscribe, a client on stdio opens a `subscriptions/listen` stream
naming the resource instead; the same watch feeds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import mcp_types as types
from flownexus.billing.v1 import balance_pb2
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.mcp_server.tools import TOOLS, Args

log = logging.getLogger("flownexus_billing_client.mcp")

BALANCE_URI = "billing://balance"
RESOURCE_NOT_FOUND = -32002  # the MCP specification's code for an unknown resource URI
BALANCE = types.Resource(
    uri=BALANCE_URI,
    name="balance",
    title="Your balance",
    description=(
        "Your credits now, as check_balance returns them (JSON). Subscribe to be told of every change: "
        "spends, purchases, refills and their failures, tier changes."
    ),
    mime_type="application/json",
)


def _known(uri: str) -> None:
    if uri != BALANCE_URI:
        raise MCPError(RESOURCE_NOT_FOUND, f"no resource {uri!r}; there is {BALANCE_URI}")


class BalanceResource:
    """`api_for(ctx)` is the API client acting for the caller; `connection(ctx)`
    the key of the connection a subscription lives on, None when it has none;
    `org_id` the org whose wallet it shows ("" for the caller's own)."""

    def __init__(
        self, api_for: Callable[[Any], BillingClient], connection: Callable[[Any], str | None], org_id: str = ""
    ) -> None:
        self.api_for = api_for
        self.org_id = org_id
        self.connection = connection
        self.watches: dict[str, asyncio.Task[None]] = {}
        self.bus = InMemorySubscriptionBus()
        self.streams = ListenHandler(self.bus)

    async def list(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[BALANCE])

    async def read(self, ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        _known(params.uri)
        check = TOOLS["check_balance"]
        body = await check.handler(self.api_for(ctx), Args({}, check.input_schema, org_id=self.org_id), _no_request_id)
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=BALANCE_URI, mime_type="application/json", text=text)]
        )

    async def subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        _known(params.uri)
        key = self.connection(ctx)
        if key is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions need a connection that lasts: stdio, or a --stateful HTTP session")
        await self._follow(ctx, key, ctx.session.send_resource_updated)
        return types.EmptyResult()

    async def listen(self, ctx: Any, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        """2026-07-28, stdio: one principal per process, so one watch feeds every stream."""
        if BALANCE_URI in (params.notifications.resource_subscriptions or ()):
            await self._follow(ctx, "listen", self._publish)
        return await self.streams(ctx, params)

    async def _publish(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))

    async def _follow(self, ctx: Any, key: str, updated: Callable[[str], Awaitable[None]]) -> None:
        if key in self.watches and not self.watches[key].done():
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._watch(self.api_for(ctx), updated, ready))
        self.watches[key] = task
        task.add_done_callback(lambda t: self.watches.pop(key, None) if self.watches.get(key) is t else None)
        await ready  # the watch is open: every change from now on is told

    async def unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        _known(params.uri)
        key = self.connection(ctx)
        task = self.watches.pop(key, None) if key else None
        if task is not None:
            task.cancel()
        return types.EmptyResult()

    async def _watch(self, api: BillingClient, updated: Callable[[str], Awaitable[None]], ready: asyncio.Future[None]) -> None:
        try:
            async for _event in api.balance.WatchBalance(balance_pb2.WatchBalanceRequest(org_id=self.org_id)):
                if not ready.done():
                    ready.set_result(None)  # the first message is the current state
                    continue
                await updated(BALANCE_URI)
        except grpc.aio.AioRpcError as exc:
            log.warning("balance watch ended: %s", exc.code().name)
        except Exception:  # the connection went away: nobody left to tell
            log.debug("balance watch stopped", exc_info=True)
        finally:
            if not ready.done():
                ready.set_exception(MCPError(types.INTERNAL_ERROR, "the balance watch could not start; try again"))


def _no_request_id() -> str:
    raise AssertionError("reading a resource changes nothing")
