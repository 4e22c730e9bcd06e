"""Shutdown that load balancers can follow, black-box: a real `python -m
server serve` subprocess gets SIGTERM. From that moment /healthz answers 503
and gRPC health NOT_SERVING, yet for BILLING_SHUTDOWN_GRACE_SECONDS new
connections and calls are still served (a Spend succeeds); then the server
drains and exits 0 with no traceback in its log."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import grpc
from flownexus.billing.v1 import usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import WAIT, Stubs, auth, until
from tests.ledger.test_crash import Server

GRACE_S = 2.0  # the grace that runs out by itself
LONG_GRACE_S = 3600.0  # a grace no wait here reaches: only a second SIGTERM ends it
DRAIN_S = 1.0


class GracefulServer(Server):
    def __init__(self, url: str, workdir: Path, grace: float = GRACE_S) -> None:
        super().__init__(url, workdir)
        self.grace = grace

    @property
    def env(self) -> dict[str, str]:
        return {
            **super().env,
            "BILLING_LOG_LEVEL": "INFO",
            "BILLING_SHUTDOWN_GRACE_SECONDS": str(self.grace),
            "BILLING_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S),
        }


async def healthz(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status


async def healthz_after_sigterm(port: int) -> int:
    """/healthz's status once it leaves 200 (a wait bounded only against a hang)."""
    seen: list[int] = []

    async def left_200() -> bool:
        seen.append(await healthz(port))
        return seen[-1] != 200

    await until(left_200, "/healthz still answers 200 after SIGTERM", every=0.02)
    return seen[-1]


async def grpc_health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        return int(r.status)


def server_log(server: Server, tmp_path: Path) -> str:
    return (tmp_path / f"server-{server.starts}.log").read_text(errors="replace")


async def test_sigterm_reports_not_serving_yet_serves_through_the_grace(db_url: str, tmp_path: Path) -> None:
    """Everything inside the grace is proven by order, not by the clock: the
    grace is longer than any wait here, so what the test sees between the two
    SIGTERMs happened inside it, however slow the host."""
    server = GracefulServer(db_url, tmp_path, grace=LONG_GRACE_S)
    await server.start()
    assert server.proc is not None
    try:
        assert await healthz(server.http_port) == 200
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        await stubs.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="before"), metadata=auth("lb-user"))
        await stubs.channel.close()

        server.proc.send_signal(signal.SIGTERM)
        # /healthz turns 503 while the grace has hardly begun.
        assert await healthz_after_sigterm(server.http_port) == 503
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert await grpc_health(server.grpc_port) == not_serving
        assert await grpc_health(server.grpc_port, "flownexus.billing.v1.UsageService") == not_serving
        assert serving != not_serving

        # Still inside the grace: a new connection's Spend succeeds.
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        r = await stubs.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=2_000, request_id="during-grace"), metadata=auth("lb-user"), timeout=WAIT
        )
        assert r.credits_millicredits == 97_000  # 100 free credits less both Spends
        await stubs.channel.close()
        assert server.proc.poll() is None, "the server exited inside its grace period"

        # A second SIGTERM ends the grace at once: the server drains and exits
        # cleanly, long before the hour's grace would have run out.
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.to_thread(server.proc.wait, WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a second SIGTERM did not cut the grace short: still running {WAIT:.0f} s later") from None
        assert rc == 0, server.log_tail()
        log = server_log(server, tmp_path)
        assert "Traceback" not in log, log[-3000:]
        assert "shutting down" in log and "draining" in log
    finally:
        server.stop()
    # Both Spends are in the ledger; `verify` passes on what the server left.
    proc = await server.verify()
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def test_after_one_sigterm_the_grace_runs_out_then_it_drains(db_url: str, tmp_path: Path) -> None:
    """The grace by itself: the server is still running until it has passed
    (a lower bound, which a busy host only makes easier), then exits cleanly."""
    server = GracefulServer(db_url, tmp_path)
    await server.start()
    assert server.proc is not None
    try:
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await healthz_after_sigterm(server.http_port) == 503
        rc = await asyncio.to_thread(server.proc.wait, GRACE_S + DRAIN_S + WAIT)
        elapsed = time.monotonic() - sent
        assert rc == 0, server.log_tail()
        assert elapsed >= GRACE_S, f"exited {elapsed:.2f} s after SIGTERM, before the {GRACE_S} s grace had passed"
        log = server_log(server, tmp_path)
        assert "Traceback" not in log, log[-3000:]
        assert log.index("shutting down") < log.index("draining"), log[-3000:]
    finally:
        server.stop()
