"""kill -9 of the server while it delivers webhooks: after a restart every
event arrives, per wallet in order, and a repeat carries the same
webhook-id and body (the server is a subprocess, `python -m server serve`).
Two servers on one database deliver each event once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from flownexus.billing.v1 import events_pb2, usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.platform.clock import ManualClock
from tests.events.receiver import WEBHOOK_SETTINGS, Receiver
from tests.harness import JWT_SECRET, Running, Stubs, auth, free_port

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
SVC = auth("platform", "service")
USERS = [f"k{i}" for i in range(4)]
THRESHOLDS = [99 - 2 * i for i in range(10)]  # ten balance.low per wallet


class Serve:
    def __init__(self, url: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ, "BILLING_DATABASE_URL": url, "BILLING_GRPC_PORT": str(self.port),
            "BILLING_HTTP_PORT": str(free_port()), "BILLING_JWT_SECRET": JWT_SECRET, "BILLING_LOG_LEVEL": "WARNING",
            "BILLING_SHUTDOWN_GRACE_SECONDS": "0", "BILLING_VAR_DIR": str(workdir),
            "BILLING_WORKER_INTERVAL_SECONDS": "3600",
            "BILLING_EVENTS_ALLOW_HTTP": "true", "BILLING_EVENTS_ALLOW_PRIVATE_URLS": "true",
            "BILLING_EVENTS_POLL_SECONDS": "0.05", "BILLING_WEBHOOK_LEASE_SECONDS": "1",
            "BILLING_WEBHOOK_RETRY_BASE_SECONDS": "0.2", "BILLING_WEBHOOK_RETRY_MAX_SECONDS": "1",
        }

    async def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            deadline = time.monotonic() + 60
            while True:
                assert self.proc.poll() is None, (self.workdir / f"serve-{self.starts}.log").read_text()[-2000:]
                try:
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


async def test_kill_9_during_deliveries_loses_nothing(db_url: str, tmp_path: Path) -> None:
    receiver = await Receiver(delay=0.02).start()
    server = Serve(db_url, tmp_path)
    await server.start()
    try:
        stubs = Stubs.connect(f"127.0.0.1:{server.port}")
        made = await stubs.events.CreateWebhookEndpoint(
            events_pb2.CreateWebhookEndpointRequest(url=receiver.url, request_id="ep"), metadata=SVC
        )
        receiver.secret = made.secret
        for u in USERS:
            await stubs.events.SetBalanceAlerts(
                events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[t * 1000 for t in THRESHOLDS],
                                                   request_id="t"), metadata=auth(u),
            )
        for i in range(len(THRESHOLDS)):
            await asyncio.gather(*(
                stubs.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=2_000 if i else 1_500, request_id=f"s{i}"),
                                  metadata=auth(u))
                for u in USERS
            ))
        listed = await stubs.events.ListEvents(events_pb2.ListEventsRequest(page_size=1000), metadata=SVC)
        events = {e.id: e for e in listed.events}
        assert len(events) == len(USERS) * len(THRESHOLDS)
        await stubs.channel.close()
        # Killed mid-way through the deliveries, twice.
        for _ in range(2):
            await receiver.wait_for(len(events) // 4 * server.starts)
            server.kill()
            await server.start()
        deadline = time.monotonic() + 60
        while set(receiver.ids()) != set(events):
            assert time.monotonic() < deadline, f"missing {sorted(set(events) - set(receiver.ids()))}"
            await asyncio.sleep(0.05)
        seen: dict[str, dict[str, object]] = {}
        for r in receiver.received:  # a repeat is the same event: same webhook-id, same body
            assert seen.setdefault(r.id, r.body) == r.body
            assert r.user_id == events[r.id].user_id and r.type == events[r.id].type
        for u in USERS:
            seq = [int(r.id.removeprefix("evt_")) for r in receiver.received if r.user_id == u]
            assert seq == sorted(seq), f"{u}: {seq}"
    finally:
        server.stop()
        await receiver.stop()


async def test_two_serving_processes_never_deliver_an_event_twice(db_url: str, clock: ManualClock) -> None:
    """Two servers on one database (as `serve --workers 2` runs them), both
    delivering to one endpoint: every event arrives exactly once (claims
    lock the endpoint's row and lease each delivery)."""
    receiver = await Receiver(delay=0.02).start()
    first = await Running(db_url, clock, **WEBHOOK_SETTINGS).start()
    second = await Running(db_url, clock, **WEBHOOK_SETTINGS).start()
    try:
        made = await first.s.events.CreateWebhookEndpoint(
            events_pb2.CreateWebhookEndpointRequest(url=receiver.url, request_id="ep"), metadata=SVC
        )
        receiver.secret = made.secret
        for i, u in enumerate(USERS):
            server = (first, second)[i % 2]
            await server.s.events.SetBalanceAlerts(
                events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[t * 1000 for t in THRESHOLDS],
                                                   request_id="t"), metadata=auth(u),
            )
            await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=20_000, request_id="s"),
                                       metadata=auth(u))
        want = len(USERS) * len(THRESHOLDS)
        await receiver.wait_for(want)
        await asyncio.sleep(0.5)  # anything sent twice would have landed by now
        assert sorted(receiver.ids()) == sorted(set(receiver.ids())) and len(receiver.ids()) == want
    finally:
        await second.stop()
        await first.stop()
        await receiver.stop()
