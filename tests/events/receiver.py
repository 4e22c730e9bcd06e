"""A real HTTP receiver of the service's webhooks (aiohttp on loopback) that
verifies each delivery with the standardwebhooks library's own verifier."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from flownexus.billing.v1 import events_pb2
from standardwebhooks.webhooks import Webhook

from tests.harness import WAIT, Running, auth

# Settings every webhook test needs: the receiver is on http://127.0.0.1.
WEBHOOK_SETTINGS: dict[str, Any] = {
    "events_allow_http": True,
    "events_allow_private_urls": True,
    "events_poll_seconds": 0.05,
}


@dataclass
class Received:
    id: str
    type: str
    user_id: str
    body: dict[str, Any]
    at: float


@dataclass
class Receiver:
    """mode: "ok" answers 204, "down" 503, "hang" waits `hang_seconds` first."""

    secret: str = ""
    mode: str = "ok"
    hang_seconds: float = 30.0
    delay: float = 0.0  # "ok": answer this long after receiving
    # "ok": take up to this long (at random) before a delivery counts as
    # received: two deliveries in flight at once may then land in either order.
    jitter: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        raw = await request.read()
        if self.mode == "down":
            return web.Response(status=503)
        if self.mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        if self.jitter:
            await asyncio.sleep(random.uniform(0, self.jitter))
        # The library's own verifier: raises on a bad signature or timestamp.
        body = Webhook(self.secret).verify(raw, dict(request.headers))
        self.received.append(Received(request.headers["webhook-id"], body["type"], body["data"]["user_id"], body,
                                      time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=204)

    def ids(self) -> list[str]:
        return [r.id for r in self.received]

    async def wait_for(self, n: int, timeout: float = WAIT) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            assert time.monotonic() < deadline, f"received {len(self.received)} of {n}: {self.ids()}"
            await asyncio.sleep(0.02)
        return self.received


async def create_endpoint(server: Running, receiver: Receiver, types: list[str] | None = None, rid: str = "ep-1") -> str:
    r = await server.s.events.CreateWebhookEndpoint(
        events_pb2.CreateWebhookEndpointRequest(url=receiver.url, event_types=types or [], request_id=rid),
        metadata=auth("platform", "service"),
    )
    receiver.secret = r.secret
    return str(r.endpoint.id)


async def list_events(server: Running, user: str = "", types: list[str] | None = None, after: str = "") -> list[events_pb2.Event]:
    r = await server.s.events.ListEvents(
        events_pb2.ListEventsRequest(user_id=user, types=types or [], page_token=after, page_size=1000),
        metadata=auth("platform", "service"),
    )
    return list(r.events)


def payload(event: events_pb2.Event) -> dict[str, Any]:
    return dict(json.loads(event.payload_json))
