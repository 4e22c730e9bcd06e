"""Shutdown that load balancers can follow, black-box: a real `python -m
server serve` subprocess gets SIGTERM. From that moment /healthz answers 503
and gRPC health NOT_SERVING, yet for BILLING_SHUTDOWN_GRACE_SECONDS new
connections and calls are still served (a Spend succeeds); then the server
drains and exits 0 with no traceback in its log."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import grpc
from flownexus.billing.v1 import usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Stubs, auth
from tests.ledger.test_crash import Server

GRACE_S = 3.0
DRAIN_S = 1.0


class GracefulServer(Server):
    @property
    def env(self) -> dict[str, str]:
        return {
            **super().env,
            "BILLING_LOG_LEVEL": "INFO",
            "BILLING_SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
            "BILLING_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S),
        }


async def healthz(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status


async def healthz_after_sigterm(port: int, within: float = 1.0) -> int:
    """/healthz's status once it leaves 200, or 200 if it did not within `within` s."""
    for _ in range(int(within / 0.02)):
        status = await healthz(port)
        if status != 200:
            return status
        await asyncio.sleep(0.02)
    return await healthz(port)


async def grpc_health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(r.status)


async def test_sigterm_reports_not_serving_then_drains(db_url: str, tmp_path: Path) -> None:
    server = GracefulServer(db_url, tmp_path)
    await server.start()
    assert server.proc is not None
    try:
        assert await healthz(server.http_port) == 200
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        await stubs.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="before"), metadata=auth("lb-user"))
        await stubs.channel.close()

        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        # /healthz turns 503 at once (well inside the grace period).
        status = await healthz_after_sigterm(server.http_port)
        assert status == 503, "/healthz still answers 200 after SIGTERM"
        assert time.monotonic() - sent < 1.0
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert await grpc_health(server.grpc_port) == not_serving
        assert await grpc_health(server.grpc_port, "flownexus.billing.v1.UsageService") == not_serving
        assert serving != not_serving

        # Still inside the grace: a new connection's Spend succeeds.
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        r = await stubs.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=2_000, request_id="during-grace"), metadata=auth("lb-user"), timeout=5
        )
        assert r.credits_millicredits == 97_000  # 100 free credits less both Spends
        assert time.monotonic() - sent < GRACE_S, "the grace period ended before the Spend was served"
        await stubs.channel.close()
        assert server.proc.poll() is None, "the server exited before its grace period ended"

        # Then it drains and exits cleanly, within grace + drain (+ slack for a busy machine).
        rc = await asyncio.to_thread(server.proc.wait, GRACE_S + DRAIN_S + 20)
        elapsed = time.monotonic() - sent
        assert rc == 0, server.log_tail()
        assert elapsed >= GRACE_S, f"exited after {elapsed:.2f} s, before the {GRACE_S} s grace"
        log = (tmp_path / f"server-{server.starts}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert "shutting down" in log and "draining" in log
    finally:
        server.stop()
    # Both Spends are in the ledger; `verify` passes on what the server left.
    proc = await server.verify()
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def test_second_sigterm_ends_the_grace(db_url: str, tmp_path: Path) -> None:
    server = GracefulServer(db_url, tmp_path)
    await server.start()
    assert server.proc is not None
    try:
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await healthz_after_sigterm(server.http_port) == 503
        server.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(server.proc.wait, 20)
        assert rc == 0, server.log_tail()
        assert time.monotonic() - sent < GRACE_S, "a second SIGTERM did not cut the grace short"
    finally:
        server.stop()
