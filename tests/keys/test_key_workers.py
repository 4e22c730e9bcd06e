"""Two `serve --workers 2` processes on one PostgreSQL: concurrent spends
through one key, spread over both processes, never pass its budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    usage_pb2_grpc,
)

from tests.conftest import _require_postgres
from tests.harness import auth, database, error_info
from tests.keys.helpers import CREDIT, DAY, bearer, spend_req
from tests.workers import serve_workers, verify


async def test_a_key_budget_holds_across_two_worker_processes(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        async with serve_workers(url, tmp_path) as w:
            chans = w.chans
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
            await w.both_committed()  # both processes committed batches
        done = verify(url, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"checked keys" in done.stdout
