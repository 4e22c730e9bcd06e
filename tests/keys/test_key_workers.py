"""Two `serve --workers 2` processes on one PostgreSQL: concurrent spends
through one key, spread over both processes, never pass its budget."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    usage_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.balance.fanout import CHANNEL
from tests.conftest import _require_postgres
from tests.harness import PG_DSN, auth, database, error_info, free_port
from tests.keys.helpers import CREDIT, DAY, bearer, spend_req
from tests.ledger.test_crash import ROOT
from tests.process.test_workers import children, env, listening


async def _ready(proc: subprocess.Popen[bytes], chans: list[grpc.aio.Channel], port: int, log: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, open(log).read()
        try:
            r = await health_pb2_grpc.HealthStub(chans[0]).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if r.status == health_pb2.HealthCheckResponse.SERVING and len(listening(children(proc.pid), port)) == 2:
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, open(log).read()
        await asyncio.sleep(0.2)
    for ch in chans:
        await asyncio.wait_for(ch.channel_ready(), 30)
    await asyncio.sleep(1.0)


async def test_a_key_budget_holds_across_two_worker_processes(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        grpc_port, http_port = free_port(), free_port()
        log_path = tmp_path / "server.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--workers", "2"], cwd=ROOT,
            env=env(url, tmp_path, grpc_port, http_port), stdout=log, stderr=log,
        )
        target = f"127.0.0.1:{grpc_port}"
        listener = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1])
        replicas: set[str] = set()
        await listener.add_listener(CHANNEL, lambda *args: replicas.add(json.loads(args[3])["r"]))
        # Each channel its own connection: the kernel spreads connections over the processes.
        chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(16)]
        try:
            await _ready(proc, chans, grpc_port, str(log_path))
            await admin_pb2_grpc.AdminServiceStub(chans[0]).AdjustBalance(admin_pb2.AdjustBalanceRequest(
                user_id="wes", amount_millicredits=1_000_000 * CREDIT, reason="funds",
                lot=common_pb2.LOT_KIND_PURCHASED, request_id="fund"), metadata=auth("ops", "admin"))
            for n in range(20):
                made = await keys_pb2_grpc.KeysServiceStub(chans[n % 16]).CreateKey(keys_pb2.CreateKeyRequest(
                    label=f"round-{n}", budgets=[keys_pb2.Budget(window=DAY, limit_millicredits=500 * CREDIT)],
                    request_id=f"k{n}"), metadata=auth("wes"))
                md = bearer(made.secret)
                results = await asyncio.gather(*(
                    usage_pb2_grpc.UsageServiceStub(chans[i % 16]).Spend(spend_req(75 * CREDIT, f"r{n}-{i}"), metadata=md,
                                                                         timeout=30)
                    for i in range(20)
                ), return_exceptions=True)
                refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
                assert all(error_info(r).reason == "BUDGET_EXCEEDED" for r in refused), [r.details() for r in refused]
                assert (len(results) - len(refused), len(refused)) == (6, 14), n
            await asyncio.sleep(0.5)
            assert len(replicas) == 2, replicas  # both processes committed batches
        finally:
            for ch in chans:
                await ch.close()
            await listener.close()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            log.close()
        assert rc == 0, log_path.read_text()
        verify = subprocess.run(
            [sys.executable, "-m", "server", "verify"], cwd=ROOT, env=env(url, tmp_path, 0, 0), capture_output=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert b"checked keys" in verify.stdout
