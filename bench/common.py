"""Shared helpers of the benchmark processes."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import grpc

SPEND_METHOD = "/flownexus.billing.v1.UsageService/Spend"


def install_loop() -> str:
    """The same event loop the server uses (uvloop when installed)."""
    try:
        import uvloop

        uvloop.install()
        return "uvloop"
    except ImportError:
        return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def channel(target: str) -> grpc.aio.Channel:
    # A local subchannel pool gives each channel its own TCP connection, the
    # way several client processes or a load balancer would spread load.
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ],
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def wait_serving(target: str, timeout: float = 60.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        async with grpc.aio.insecure_channel(target) as ch:
            try:
                r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as exc:
                last = exc
        await asyncio.sleep(0.2)
    raise RuntimeError(f"server at {target} did not become ready: {last}")


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
