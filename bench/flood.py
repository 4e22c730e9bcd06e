"""Another caller's Spend while one service floods SpendBatch: `python -m
bench.flood [sqlite|postgres] [CHECKOUT]` (not part of `make bench`).

One service token keeps 3 SpendBatch(1,000) calls in flight over 1,000
funded accounts for BENCH_FAIRNESS_SECONDS (default 12); a second service
token makes one Spend at a time (10 ms apart, from the 2nd second) and its
latency is what is printed. CHECKOUT (default: this one) is the tree whose
server is started, so that an older commit can be measured the same way
(`git worktree add /tmp/old <commit>`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from flownexus.billing.v1 import usage_pb2, usage_pb2_grpc

from bench import run
from bench.common import channel, percentile
from server.platform.auth import Role, mint_token

FLOOD_CALLS = 3
BATCH = 1000


def _md(subject: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(run.SECRET, subject, Role.SERVICE, ttl_seconds=3600)}"),)


async def measure(kind: str, seconds: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with run.fresh_db(kind, work) as url, run.billing_server(url, work) as server:
            users = [f"u{i:04d}" for i in range(1000)]
            await run.prefund(server.target, users)
            bulk, other = _md("bench-bulk"), _md("bench-other")
            stop = time.monotonic() + seconds
            flooded = 0
            latencies: list[float] = []

            async def flood(k: int) -> None:
                nonlocal flooded
                async with channel(server.target) as ch:
                    stub = usage_pb2_grpc.UsageServiceStub(ch)
                    n = 0
                    while time.monotonic() < stop:
                        n += 1
                        items = [
                            usage_pb2.SpendRequest(
                                user_id=users[i % len(users)], amount_millicredits=1, request_id=f"f{k}-{n}-{i}",
                                category="bench",
                            )
                            for i in range(BATCH)
                        ]
                        r = await stub.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=bulk)
                        flooded += len(r.results)

            async def probe() -> None:
                await asyncio.sleep(2)
                async with channel(server.target) as ch:
                    stub = usage_pb2_grpc.UsageServiceStub(ch)
                    n = 0
                    while time.monotonic() < stop - 0.5:
                        n += 1
                        began = time.perf_counter()
                        await stub.Spend(
                            usage_pb2.SpendRequest(
                                user_id=users[n % len(users)], amount_millicredits=1, request_id=f"o{n}", category="probe"
                            ),
                            metadata=other,
                        )
                        latencies.append(time.perf_counter() - began)
                        await asyncio.sleep(0.01)

            await asyncio.gather(probe(), *(flood(k) for k in range(FLOOD_CALLS)))
    return (
        f"{kind}: flood {flooded / seconds:,.0f} items/s; the other caller's Spend: {len(latencies)} calls, "
        f"p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms, "
        f"max {1000 * max(latencies):.1f} ms"
    )


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if len(sys.argv) > 2:
        run.ROOT = Path(sys.argv[2]).resolve()
    print(asyncio.run(measure(kind, float(os.environ.get("BENCH_FAIRNESS_SECONDS", 12)))))


if __name__ == "__main__":
    main()
