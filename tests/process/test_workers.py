"""`python -m server serve --workers N`: two serving processes on one
PostgreSQL share the port and both serve Spends correctly; SQLite refuses
N > 1 with a clear error and starts nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from flownexus.billing.v1 import balance_pb2, usage_pb2, usage_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.balance.fanout import CHANNEL
from tests.calls import FREE
from tests.conftest import _require_postgres
from tests.harness import JWT_SECRET, PG_DSN, Stubs, auth, database, free_port
from tests.ledger.test_crash import ROOT


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
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
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


async def test_sqlite_refuses_more_than_one_worker(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'one.db'}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "--workers", "2", cwd=ROOT,
        env=env(url, tmp_path, free_port(), free_port()), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out, err)
    assert "--workers 2 needs PostgreSQL" in err.decode() and "SQLite" in err.decode()
    assert "Traceback" not in err.decode()
    assert not (tmp_path / "one.db").exists()  # nothing was started, nothing created


async def test_two_workers_on_postgres_both_serve_spends(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        grpc_port, http_port = free_port(), free_port()
        log = open(tmp_path / "server.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--workers", "2"], cwd=ROOT,
            env=env(url, tmp_path, grpc_port, http_port), stdout=log, stderr=log,
        )
        target = f"127.0.0.1:{grpc_port}"
        listener = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1])
        replicas: set[str] = set()
        await listener.add_listener(CHANNEL, lambda *args: replicas.add(json.loads(args[3])["r"]))
        # Each channel its own connection: the kernel spreads connections over the processes.
        stubs = Stubs.connect(target)
        chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(16)]
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    r = await health_pb2_grpc.HealthStub(chans[0]).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    # Both processes listening before any channel connects: a connection
                    # made while only one listens stays with that one.
                    kids = children(proc.pid)
                    if r.status == health_pb2.HealthCheckResponse.SERVING and len(listening(kids, grpc_port)) == 2:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                await asyncio.sleep(0.2)
            for ch in chans:  # every channel connected (to one process or the other) and serving
                await asyncio.wait_for(ch.channel_ready(), 30)
            # Let both processes come up fully before the load (the second may bind a moment later).
            await asyncio.sleep(1.0)

            async def one(i: int) -> bool:
                stub = usage_pb2_grpc.UsageServiceStub(chans[i % len(chans)])
                try:
                    await stub.Spend(usage_pb2.SpendRequest(user_id="w", amount_millicredits=700, request_id=f"w{i}"),
                                     metadata=auth("svc", "service"), timeout=30)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                    return False

            ok = await asyncio.gather(*(one(i) for i in range(200)))
            # No overdraft across the processes, and each spend applied once.
            assert sum(ok) == FREE // 700
            again = await asyncio.gather(*(one(i) for i in range(200)))
            assert again == ok
            b = await stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id="w"), metadata=auth("svc", "service"))
            assert b.credits_millicredits == FREE - sum(ok) * 700
            await asyncio.sleep(0.5)
            # Both processes committed batches: their NOTIFYs carry two replica ids.
            assert len(replicas) == 2, replicas
        finally:
            for ch in chans:
                await ch.close()
            await stubs.channel.close()
            await listener.close()
            kids = children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            log.close()
        assert rc == 0, (tmp_path / "server.log").read_text()
        assert kids and not any(map(alive, kids))  # the parent stopped its processes
        verify = subprocess.run(
            [sys.executable, "-m", "server", "verify"], cwd=ROOT, env=env(url, tmp_path, 0, 0), capture_output=True, timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
