"""`python -m server serve --workers N` on one PostgreSQL database, for the
tests that need several serving processes (tests/process/test_workers.py,
tests/keys/test_key_workers.py): started, every process listening and serving
before a channel connects, stopped with SIGTERM, audited with `verify`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from flownexus.billing.v1 import usage_pb2, usage_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.balance.fanout import CHANNEL
from tests.harness import JWT_SECRET, PG_DSN, WAIT, auth, free_port, until

ROOT = Path(__file__).resolve().parents[1]


def env(url: str, workdir: Path, grpc_port: int, http_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "BILLING_DATABASE_URL": url,
        "BILLING_GRPC_PORT": str(grpc_port),
        "BILLING_HTTP_PORT": str(http_port),
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_LOG_LEVEL": "WARNING",
        "BILLING_WORKER_INTERVAL_SECONDS": "3600",
        "BILLING_VAR_DIR": str(workdir),
    }


def children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(d.name))
    return found


def listening(pids: list[int], port: int) -> set[int]:
    """Those of `pids` that hold a socket listening on `port` (with SO_REUSEPORT, each serving process its own)."""
    return _holding(pids, port, "0A")  # 0A: LISTEN


def connected(pids: list[int], port: int) -> set[int]:
    """Those of `pids` that hold an accepted connection on `port`: the processes the channels reached."""
    return _holding(pids, port, "01")  # 01: ESTABLISHED


def _holding(pids: list[int], port: int, state: str) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in pids:
        try:
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                found.add(pid)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def verify(url: str, workdir: Path) -> subprocess.CompletedProcess[bytes]:
    """`python -m server verify` on the database, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "server", "verify"], cwd=ROOT, env=env(url, workdir, 0, 0), capture_output=True,
        timeout=120,
    )


@dataclass
class Workers:
    proc: subprocess.Popen[bytes]
    target: str
    # Each channel its own connection: the kernel spreads connections over the processes.
    chans: list[grpc.aio.Channel]
    # The replica ids of the NOTIFYs of committed batches: which processes committed.
    replicas: set[str]
    log_path: Path
    kids: list[int] = field(default_factory=list)  # the serving processes, as they were at the stop

    async def both_committed(self) -> None:
        """Every process commits a batch, and its NOTIFY reaches the listener.

        The test's own spends may all have been won by one process (the other's
        refused for want of funds or budget), so one spend for a fresh user on
        every channel makes each process commit; `_ready` saw to it that every
        process holds a channel."""
        await asyncio.gather(*(
            usage_pb2_grpc.UsageServiceStub(ch).Spend(
                usage_pb2.SpendRequest(user_id=f"each-process-{i}", amount_millicredits=1, request_id=f"each-{i}"),
                metadata=auth("svc", "service"), timeout=WAIT)
            for i, ch in enumerate(self.chans)
        ))

        async def two() -> bool:
            return len(self.replicas) == 2

        await until(two, f"the NOTIFYs came from {sorted(self.replicas)}, not from both processes")


@contextlib.asynccontextmanager
async def serve_workers(url: str, workdir: Path, n: int = 2, channels: int = 16) -> AsyncIterator[Workers]:
    """The server with `--workers n`, every process listening and the channels
    connected; on leaving, SIGTERM and a clean exit (status 0)."""
    grpc_port, http_port = free_port(), free_port()
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--workers", str(n)], cwd=ROOT,
        env=env(url, workdir, grpc_port, http_port), stdout=log, stderr=log,
    )
    target = f"127.0.0.1:{grpc_port}"
    listener = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1])
    replicas: set[str] = set()
    await listener.add_listener(CHANNEL, lambda *args: replicas.add(json.loads(args[3])["r"]))
    chans = [_channel(target) for _ in range(channels)]
    workers = Workers(proc, target, chans, replicas, log_path)
    try:
        await _ready(proc, chans, grpc_port, n, log_path)
        yield workers
    finally:
        for ch in chans:
            await ch.close()
        await listener.close()
        workers.kids = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
    assert rc == 0, log_path.read_text()


def _channel(target: str) -> grpc.aio.Channel:
    # Each channel its own connection (no shared subchannel): one process or the other.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _text(log: Path) -> str:
    return log.read_text()


async def _ready(proc: subprocess.Popen[bytes], chans: list[grpc.aio.Channel], port: int, n: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, _text(log)
        try:
            r = await health_pb2_grpc.HealthStub(chans[0]).Check(health_pb2.HealthCheckRequest(), timeout=1)
            # Every process listening before any channel connects: a connection
            # made while only one listens stays with that one.
            if r.status == health_pb2.HealthCheckResponse.SERVING and len(listening(children(proc.pid), port)) == n:
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, _text(log)
        await asyncio.sleep(0.2)
    for attempt in range(20):
        for ch in chans:  # every channel connected (to one process or another) and serving
            await asyncio.wait_for(ch.channel_ready(), WAIT)
        # The kernel spreads connections by a hash: now and then every one lands on
        # the same process. Then connect afresh, until each process holds one.
        if len(connected(children(proc.pid), port)) == n:
            break
        assert attempt < 19, f"the channels never reached all {n} processes"
        for k, ch in enumerate(chans):
            await ch.close()
            chans[k] = _channel(f"127.0.0.1:{port}")
    # Let every process come up fully before the load (the last may bind a moment later).
    await asyncio.sleep(1.0)
