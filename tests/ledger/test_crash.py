"""Crash test: the server runs as a subprocess (`python -m server serve`) under
load and is killed with SIGKILL at seeded random moments, then restarted.

The client keeps a log of every acknowledged request_id. After each restart:
- every acknowledged operation is in the ledger exactly once, as acknowledged;
- every unacknowledged one, retried with the same request_id, is applied at
  most once (and a second retry replays the same transfer);
- `python -m server verify` passes.

Short run: 10 kills on SQLite (and a few on PostgreSQL); `make soak`: 50.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from flownexus.billing.v1 import common_pb2, earnings_pb2, usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.ledger import keys
from tests.conftest import _require_postgres
from tests.harness import JWT_SECRET, PG_DSN, Stubs, auth, database, free_port

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("BILLING_SOAK") == "1"
SERVICE = "crasher"
USERS = [f"cu{i}" for i in range(5)]


class Server:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BILLING_DATABASE_URL": self.url,
            "BILLING_GRPC_PORT": str(self.grpc_port),
            "BILLING_HTTP_PORT": str(self.http_port),
            "BILLING_JWT_SECRET": JWT_SECRET,
            "BILLING_SHUTDOWN_GRACE_SECONDS": "0",  # no balancer here: drain at once
            "BILLING_LOG_LEVEL": "WARNING",
            "BILLING_WORKER_INTERVAL_SECONDS": "3600",
            "BILLING_AWARD_RATE_PER_SECOND": "0",
            "BILLING_AWARD_DAILY_LIMIT_CHALLENGE": "0",
            "BILLING_VAR_DIR": str(self.workdir),
        }

    async def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=self.env, stdout=log, stderr=log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("server did not become healthy: " + self.log_tail())
                await asyncio.sleep(0.1)

    def log_tail(self) -> str:
        return (self.workdir / f"server-{self.starts}.log").read_bytes()[-2000:].decode(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    async def verify(self) -> asyncio.subprocess.Process:
        """`python -m server verify`, started now (one snapshot), awaited later."""
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "verify", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )


async def verified(proc: asyncio.subprocess.Process) -> None:
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode(errors="replace")
    assert b"ledger OK" in out


@dataclass
class Log:
    sent: dict[str, tuple[str, Any]] = field(default_factory=dict)  # rid -> (method, request)
    acked: dict[str, str] = field(default_factory=dict)  # rid -> transfer id ("" when refused for credits)
    unknown: set[str] = field(default_factory=set)
    kills: int = 0
    retried: int = 0
    retried_applied: int = 0


def transfer_key(method: str, rid: str, req: Any) -> str:
    if method == "AwardCredits":
        return keys.award(req.user_id, "challenge", req.source_ref)
    return keys.request_transfer(keys.idempotency("service", SERVICE, method, rid))


async def call(stubs: Stubs, method: str, req: Any) -> str:
    md = auth(SERVICE, "service")
    if method == "Spend":
        r = await stubs.usage.Spend(req, metadata=md, timeout=10)
    else:
        r = await stubs.earnings.AwardCredits(req, metadata=md, timeout=10)
    return str(r.transaction.id)


async def load(stubs: Stubs, log: Log, rng: random.Random, n: int, round_no: int, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        rid = f"r{round_no}-c{n}-{i}"
        user = rng.choice(USERS)
        if rng.random() < 0.8:
            share = rng.random() < 0.3
            method = "Spend"
            req: Any = usage_pb2.SpendRequest(
                user_id=user, amount_millicredits=rng.randint(1, 40), request_id=rid, category="crash",
                app_id="app-c" if share else "", publisher_user_id=rng.choice([u for u in USERS if u != user]) if share else "",
            )
        else:
            method = "AwardCredits"
            req = earnings_pb2.AwardCreditsRequest(
                user_id=user, amount_millicredits=rng.randint(1, 100), source=common_pb2.EARNING_SOURCE_CHALLENGE,
                source_ref=rid, request_id=rid,
            )
        log.sent[rid] = (method, req)
        log.unknown.add(rid)  # until we hear back
        try:
            log.acked[rid] = await call(stubs, method, req)
            log.unknown.discard(rid)
        except grpc.aio.AioRpcError:
            return  # the server is gone (or going): this rid stays unknown
        except asyncio.CancelledError:
            return


async def ledger_keys(url: str, keys: list[str]) -> dict[str, list[str]]:
    """key -> ids of transfers with that key, read straight from the database."""
    out: dict[str, list[str]] = {k: [] for k in keys}
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split("///", 1)[1])
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, id FROM transfers WHERE key IN ({','.join('?' * len(chunk))})"
                for k, tid in con.execute(q, chunk):
                    out[k].append(str(tid))
        finally:
            con.close()
        return out
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1])
    try:
        for k, tid in await conn.fetch("SELECT key, id FROM transfers WHERE key = ANY($1::text[])", keys):
            out[k].append(str(tid))
    finally:
        await conn.close()
    return out


async def check_after_restart(server: Server, stubs: Stubs, log: Log) -> asyncio.subprocess.Process:
    # 1. every acknowledged operation is in the ledger exactly once, as acknowledged
    acked_keys = {transfer_key(log.sent[rid][0], rid, log.sent[rid][1]): tid for rid, tid in log.acked.items()}
    found = await ledger_keys(server.url, list(acked_keys))
    for k, tid in acked_keys.items():
        assert found[k] == [tid], f"acknowledged {k} (transfer {tid}) found as {found[k]}"
    # 2. unacknowledged ones, retried with the same request_id, apply at most once
    for rid in sorted(log.unknown):
        method, req = log.sent[rid]
        first = await call(stubs, method, req)
        again = await call(stubs, method, req)
        assert first == again, f"{rid}: retry applied twice ({first} then {again})"
        log.acked[rid] = first
        log.retried += 1
    if log.unknown:
        keys = [transfer_key(log.sent[r][0], r, log.sent[r][1]) for r in log.unknown]
        found = await ledger_keys(server.url, keys)
        for k in keys:
            assert len(found[k]) == 1, f"{k}: {found[k]}"
    log.unknown.clear()
    # 3. the audit passes: it starts now and is awaited before the next kill
    # (it also shows that verify is safe to run against a live database)
    return await server.verify()


async def crash_run(url: str, workdir: Path, kills: int, seed: int) -> Log:
    rng = random.Random(seed)
    server = Server(url, workdir)
    log = Log()
    await server.start()
    stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
    audit: asyncio.subprocess.Process | None = None
    try:
        for round_no in range(kills):
            stop = asyncio.Event()
            tasks = [asyncio.create_task(load(stubs, log, random.Random(rng.random()), n, round_no, stop)) for n in range(8)]
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            if audit is not None:
                await verified(audit)
            server.kill()
            log.kills += 1
            stop.set()
            await asyncio.wait(tasks, timeout=15)
            for t in tasks:
                t.cancel()
            await server.start()
            audit = await check_after_restart(server, stubs, log)
        assert audit is not None
        await verified(audit)
        assert len(log.acked) > kills, "the load did not get through"
    finally:
        await stubs.channel.close()
        server.stop()
    print(
        f"\ncrash[{url.split(':', 1)[0]}]: {log.kills} kills, {len(log.sent)} operations sent, "
        f"{len(log.acked)} in the ledger, {log.retried} unacknowledged retried, 0 discrepancies"
    )
    return log


async def test_crash_sqlite(tmp_path: Path) -> None:
    async with database("sqlite", tmp_path) as url:
        await crash_run(url, tmp_path, kills=10, seed=7)


async def test_crash_postgres(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        await crash_run(url, tmp_path, kills=2, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_crash_soak(tmp_path: Path, kind: str) -> None:
    if kind == "postgres":
        await _require_postgres()
    kills = int(os.environ.get("BILLING_CRASH_KILLS", "50"))
    async with database(kind, tmp_path) as url:
        await crash_run(url, tmp_path, kills=kills, seed=2024)
