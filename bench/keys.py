"""The key rows against their plain rows, alternating on one server:
`python -m bench.keys` (not part of `make bench`).

`make bench` measures each row once, minutes apart from its plain row; on a
shared host the load of the neighbours moves a ratio by more than the 10 %
it is checked against. Here one server (fresh database, 1,000 funded
accounts, one key each) runs each pair (plain row, key row) BENCH_KEYS_ROUNDS
times back to back, and prints the median ratio of throughput and of server
CPU per call (per item for SpendBatch) with every round's values.

  BENCH_KEYS_ROUNDS=3  BENCH_KEYS_ONLY=secret,batch (substrings of the pairs' names)  BENCH_DBS=sqlite  (plus bench/run.py's BENCH_DURATION, BENCH_CONCURRENCY, ...)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import run as b

ROUNDS = int(os.environ.get("BENCH_KEYS_ROUNDS", 3))
# Only the pairs whose name contains one of these (comma-separated): "secret", "batch", ...
ONLY = [w for w in os.environ.get("BENCH_KEYS_ONLY", "").split(",") if w]


def pairs(target: str, users: list[str], made: dict[str, tuple[str, str]]) -> list[tuple[str, Any, Any, str]]:
    keys = {u: made[u][0] for u in users}
    size = 100
    batch = {"batch": size, "concurrency": max(2, b.BATCH_ITEMS_IN_FLIGHT // size)}
    return [
        (f"Spend, {b.ACCOUNTS} accounts: through a key with budgets",
         b.load_cfg(target, "spend", "a", users), {**b.load_cfg(target, "spend", "ka", users), "keys": keys}, "call"),
        ("Spend, 1 hot account: with the key's secret",
         b.load_cfg(target, "spend", "h", users[:1]), {**b.load_cfg(target, "spend", "ks"), "token": made[users[0]][1]},
         "call"),
        (f"SpendBatch(100), {b.ACCOUNTS} accounts: through keys",
         {**b.load_cfg(target, "batch", "b", users), **batch}, {**b.load_cfg(target, "batch", "kb", users), "keys": keys,
                                                                **batch}, "item"),
    ]


async def one_db(kind: str, workdir: Path) -> None:
    users = [f"u{i:04d}" for i in range(b.ACCOUNTS)]
    async with b.fresh_db(kind, workdir) as url, b.billing_server(url, workdir) as server:
        await b.prefund(server.target, users)
        made = await b.make_keys(server.target, users)
        for name, plain_cfg, key_cfg, unit in pairs(server.target, users, made):
            if ONLY and not any(w in name for w in ONLY):
                continue
            rate, cpu = ("rps", "server_cpu_us_per_call") if unit == "call" else ("items_per_s", "server_cpu_us_per_item")
            seen: list[tuple[float, float, float, float]] = []
            for _ in range(ROUNDS):
                plain = await b.run_client(plain_cfg, server)
                keyed = await b.run_client(key_cfg, server)
                seen.append((plain[rate], keyed[rate], plain[cpu], keyed[cpu]))
            rates = statistics.median(k / p for p, k, _, _ in seen if p)
            cpus = statistics.median(kc / pc for _, _, pc, kc in seen if pc)
            print(f"{kind}: {name}: {rates:.2f}x the throughput, {cpus:.2f}x the server CPU per {unit} (median of {ROUNDS})")
            for p, k, pc, kc in seen:
                print(f"    {p:8.0f} -> {k:8.0f} per s   {pc:8.1f} -> {kc:8.1f} us per {unit}")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="billing-bench-keys-") as tmp:
        for kind in b.DBS:
            await one_db(kind, Path(tmp))


if __name__ == "__main__":
    b.install_loop()
    asyncio.run(main())
