"""The raw-driver batched durable baseline: `python -m bench.raw CONFIG_JSON`.

What a bare ledger does with the same work per spend and no gRPC, no Python
service around it: per item a conditional debit (`UPDATE accounts SET
balance = balance - :amount WHERE id = :id AND balance >= :amount`) and, when
it took, the insert of its transfer row under a unique key; `batch` items per
durable commit; one process, one connection.
- SQLite: `sqlite3`, WAL, `synchronous=FULL`, one `BEGIN IMMEDIATE ... COMMIT` per batch.
- PostgreSQL: asyncpg, `synchronous_commit=on`, the debit and the insert in one
  statement per item (a data-modifying CTE), the batch's items pipelined with
  `executemany` inside one transaction.
Counts the items committed within `duration` seconds after `warmup`; writes
{"items", "commits", "latencies" (per commit)} as JSON to `out`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import time
from typing import Any

SQLITE_SCHEMA = """
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE transfers (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, account_id TEXT NOT NULL,
                        amount INTEGER NOT NULL, created_at_us INTEGER NOT NULL);
"""
PG_SCHEMA = """
CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE transfers (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, account_id text NOT NULL,
                        amount bigint NOT NULL, created_at_us bigint NOT NULL);
"""
PG_ITEM = """
WITH d AS (UPDATE accounts SET balance = balance - $3 WHERE id = $2 AND balance >= $3 RETURNING id)
INSERT INTO transfers (key, account_id, amount, created_at_us) SELECT $1, id, $3, $4 FROM d
"""

FUNDS = 10**15


def run_sqlite(cfg: dict[str, Any]) -> dict[str, Any]:
    con = sqlite3.connect(cfg["path"], isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SQLITE_SCHEMA)
    accounts = [f"a{i}" for i in range(cfg["accounts"])]
    con.execute("BEGIN")
    con.executemany("INSERT INTO accounts VALUES (?, ?)", [(a, FUNDS) for a in accounts])
    con.execute("COMMIT")
    rng = random.Random(1)
    items = commits = n = 0
    lat: list[float] = []
    t0 = time.monotonic()
    start, stop = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    while (now := time.monotonic()) < stop:
        began = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        done = 0
        for _ in range(cfg["batch"]):
            n += 1
            acct = accounts[rng.randrange(len(accounts))]
            cur = con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?", (1, acct, 1))
            if cur.rowcount == 1:
                con.execute(
                    "INSERT INTO transfers (key, account_id, amount, created_at_us) VALUES (?, ?, ?, ?)",
                    (f"k{n}", acct, 1, time.time_ns() // 1000),
                )
                done += 1
        con.execute("COMMIT")
        if now >= start:
            items += done
            commits += 1
            lat.append(time.perf_counter() - began)
    con.close()
    return {"items": items, "commits": commits, "latencies": lat}


async def run_postgres(cfg: dict[str, Any]) -> dict[str, Any]:
    import asyncpg

    con = await asyncpg.connect(cfg["dsn"])
    await con.execute("SET synchronous_commit = on")
    await con.execute(PG_SCHEMA)
    accounts = [f"a{i}" for i in range(cfg["accounts"])]
    await con.copy_records_to_table("accounts", records=[(a, FUNDS) for a in accounts])
    stmt = await con.prepare(PG_ITEM)
    rng = random.Random(1)
    items = commits = n = 0
    lat: list[float] = []
    t0 = time.monotonic()
    start, stop = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    while (now := time.monotonic()) < stop:
        began = time.perf_counter()
        args = []
        for _ in range(cfg["batch"]):
            n += 1
            args.append((f"k{n}", accounts[rng.randrange(len(accounts))], 1, time.time_ns() // 1000))
        async with con.transaction():
            await stmt.executemany(args)
        if now >= start:
            # Every item took (the accounts hold far more than the run spends).
            items += len(args)
            commits += 1
            lat.append(time.perf_counter() - began)
    total = await con.fetchval("SELECT count(*) FROM transfers")
    await con.close()
    assert total == n, f"{total} transfers for {n} items: a debit did not take"
    return {"items": items, "commits": commits, "latencies": lat}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    result = run_sqlite(cfg) if cfg["db"] == "sqlite" else asyncio.run(run_postgres(cfg))
    with open(cfg["out"], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
