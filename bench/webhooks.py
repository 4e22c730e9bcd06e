"""`make bench`'s webhook row: events per second delivered to a local
receiver. The server (`python -m server serve`, http and loopback allowed)
gets one endpoint pointing at an aiohttp receiver in this process; then
`BENCH_WEBHOOK_USERS` wallets (default 500) each cross ten balance.low
thresholds with one Spend: ten events per wallet, committed in a burst. The
row is the events received over the time from the first to the last, every
one verified (the standardwebhooks verifier) and counted once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from aiohttp import web
from flownexus.billing.v1 import events_pb2, events_pb2_grpc, usage_pb2, usage_pb2_grpc
from standardwebhooks.webhooks import Webhook

from bench.common import channel, free_port
from server.platform.auth import Role, mint_token

USERS = int(os.environ.get("BENCH_WEBHOOK_USERS", 500))
THRESHOLDS = [99 - i for i in range(10)]


async def webhook_row(target: str, secret: str) -> dict[str, Any]:
    got: dict[str, float] = {}
    signer: list[Webhook] = []
    all_in = asyncio.Event()
    want = USERS * len(THRESHOLDS)

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        signer[0].verify(raw, dict(request.headers))
        got.setdefault(request.headers["webhook-id"], time.monotonic())
        if len(got) >= want:
            all_in.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    service = (("authorization", f"Bearer {mint_token(secret, 'bench-events', Role.SERVICE, ttl_seconds=7200)}"),)
    try:
        async with channel(target) as ch:
            events = events_pb2_grpc.EventsServiceStub(ch)
            usage = usage_pb2_grpc.UsageServiceStub(ch)
            made = await events.CreateWebhookEndpoint(
                events_pb2.CreateWebhookEndpointRequest(url=f"http://127.0.0.1:{port}/hook", request_id="bench"),
                metadata=service,
            )
            signer.append(Webhook(made.secret))
            users = [f"wh{i:04d}" for i in range(USERS)]
            sem = asyncio.Semaphore(32)

            async def cross(u: str) -> None:
                md = (("authorization", f"Bearer {mint_token(secret, u, Role.USER, ttl_seconds=7200)}"),)
                async with sem:
                    await events.SetBalanceAlerts(events_pb2.SetBalanceAlertsRequest(
                        thresholds_millicredits=[t * 1000 for t in THRESHOLDS], request_id="t"), metadata=md)
                    await usage.Spend(usage_pb2.SpendRequest(amount_millicredits=11_000, request_id="x"), metadata=md)

            started = time.monotonic()
            await asyncio.gather(*(cross(u) for u in users))
            committed = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 300)
    finally:
        await runner.cleanup()
    times = sorted(got.values())
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "name": f"Webhooks: events delivered to a local receiver ({len(users)} wallets x {len(THRESHOLDS)})",
        "events": want, "delivered": len(got), "events_per_s": round(len(got) / span, 1) if span else None,
        "commit_seconds": round(committed, 2),
    }
