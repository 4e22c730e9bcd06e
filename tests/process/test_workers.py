"""`python -m server serve --workers N`: two serving processes on one
PostgreSQL share the port and both serve Spends correctly; SQLite refuses
N > 1 with a clear error and starts nothing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
from flownexus.billing.v1 import balance_pb2, usage_pb2, usage_pb2_grpc

from tests.calls import FREE
from tests.conftest import _require_postgres
from tests.harness import Stubs, auth, database, free_port
from tests.workers import ROOT, alive, env, serve_workers, verify


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
    # Empty: the supervisor migrates it before its workers start, as in production.
    async with database("postgres", tmp_path, migrated=False) as url:
        async with serve_workers(url, tmp_path) as w:
            stubs = Stubs.connect(w.target)
            try:
                async def one(i: int) -> bool:
                    stub = usage_pb2_grpc.UsageServiceStub(w.chans[i % len(w.chans)])
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
                b = await stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id="w"),
                                                   metadata=auth("svc", "service"))
                assert b.credits_millicredits == FREE - sum(ok) * 700
                # Both processes committed batches: their NOTIFYs carry two replica ids.
                await w.both_committed()
            finally:
                await stubs.channel.close()
        assert w.kids and not any(map(alive, w.kids))  # the parent stopped its processes
        done = verify(url, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
