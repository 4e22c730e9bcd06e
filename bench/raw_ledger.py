"""The same-schema baseline: `python -m bench.raw_ledger CONFIG_JSON`.

The statements the ledger issues for a batch of spends, on the ledger's own
schema (migrated: the real tables with their indexes), through the raw
driver with no Python rules between them: the physical limit of this data
model, beside bench/raw.py's narrow one. Per batch of `batch` spends, each
by a random one of `accounts` wallets:
- the locked load: accounts (FOR UPDATE on PostgreSQL, in id order), then
  their users, lots, stored responses and transfer keys;
- the transfer ids (max(id) on SQLite, nextval on PostgreSQL);
- the write-back: transfer rows, stored responses, the account and lot updates
  (SQLite: executemany per statement; PostgreSQL: one statement of
  data-modifying CTEs over unnest()ed arrays, as server/db/batchsql.py sends);
- one durable commit.
Writes {"items", "commits", "latencies", "cpu_seconds"} as JSON to `out`,
like bench/raw.py (plus its own CPU within the measured window).
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import time
from typing import Any

from server.db.engine import Database
from server.db.schema import accounts, idempotency, lots, transfers, users

FUNDS = 10**15
REVENUE = "system:platform_revenue"
ACCOUNT_SET = ("balance", "pending", "earned_total", "spent_total", "unlimited_overdraft", "version")


def _cols(table: Any) -> list[str]:
    return [c.name for c in table.columns]


def _seed_rows(n: int, now: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    accts: list[tuple[Any, ...]] = [(f"wallet:u{i}", "wallet", f"u{i}", FUNDS, 0, 0, 0, False, 0, now) for i in range(n)]
    accts.append((REVENUE, "system", None, 0, 0, 0, 0, False, 0, now))
    usrs = [(f"u{i}", "free", None, 0, 2**62, None, None, now) for i in range(n)]
    lts = [(i + 1, f"wallet:u{i}", "purchased", 0, FUNDS, FUNDS, now) for i in range(n)]
    return accts, usrs, lts


class _Batch:
    """One batch's rows, made without rules: what the ledger would write."""

    def __init__(self, rng: random.Random, n_accounts: int, size: int, first: int) -> None:
        self.who = [rng.randrange(n_accounts) for _ in range(size)]
        self.first = first
        self.wallets = sorted({f"wallet:u{w}" for w in self.who} | {REVENUE})
        self.users = sorted({f"u{w}" for w in self.who})
        self.keys = [f"idem|7:service|5:bench|5:Spend|{len(str(first + i))}:{first + i}" for i in range(size)]

    def rows(self, ids: list[int], now: int, acct: dict[str, list[Any]]) -> dict[str, list[tuple[Any, ...]]]:
        tr, idem = [], []
        for i, w in enumerate(self.who):
            wid = f"wallet:u{w}"
            acct[wid][3] -= 1
            acct[wid][8] += 1
            acct[REVENUE][3] += 1
            acct[REVENUE][8] += 1
            tr.append((ids[i], f"request|{self.keys[i]}", wid, REVENUE, 1, "spend", "Usage: bench", "bench", "", "{}",
                       acct[wid][3], acct[REVENUE][3], now, '{"by":"service/bench","drawn":[["purchased",0,1]]}', None, None, None))
            idem.append((self.keys[i], "f" * 64, b'[1,2,"spend",-1,0,"Usage: bench","bench","",0,{}]', now))
        ups = [(*acct[a][3:9], a) for a in self.wallets]
        lot_ups = [(acct[f"wallet:u{w}"][3], FUNDS, w + 1) for w in sorted(set(self.who))]
        return {"transfers": tr, "idempotency": idem, "accounts": ups, "lots": lot_ups}


def run_sqlite(cfg: dict[str, Any]) -> dict[str, Any]:
    if not cfg.get("migrated"):
        asyncio.run(migrate(f"sqlite+aiosqlite:///{cfg['path']}"))
    con = sqlite3.connect(cfg["path"], isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    now = time.time_ns() // 1000
    accts, usrs, lts = _seed_rows(cfg["accounts"], now)
    con.execute("BEGIN")
    con.executemany(f"INSERT INTO accounts VALUES ({', '.join('?' * 10)})", accts)
    con.executemany(f"INSERT INTO users VALUES ({', '.join('?' * 8)})", usrs)
    con.executemany(f"INSERT INTO lots VALUES ({', '.join('?' * 7)})", lts)
    con.execute("COMMIT")
    acols, ucols, lcols, icols, tcols = (", ".join(_cols(t)) for t in (accounts, users, lots, idempotency, transfers))
    tr_ins = f"INSERT INTO transfers ({tcols}) VALUES ({', '.join('?' * len(_cols(transfers)))})"
    idem_ins = f"INSERT INTO idempotency ({icols}) VALUES (?, ?, ?, ?)"
    acct_up = f"UPDATE accounts SET {', '.join(f'{c} = ?' for c in ACCOUNT_SET)} WHERE id = ?"
    lot_up = "UPDATE lots SET remaining = ?, granted = ? WHERE id = ?"
    rng = random.Random(1)
    items = commits = n = 0
    lat: list[float] = []
    cpu0 = 0.0  # the process's CPU when the measured window began (imports and seeding excluded)
    t0 = time.monotonic()
    start, stop = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    while (now_m := time.monotonic()) < stop:
        began = time.perf_counter()
        b = _Batch(rng, cfg["accounts"], cfg["batch"], n)
        n += cfg["batch"]
        con.execute("BEGIN IMMEDIATE")
        marks = lambda k: ", ".join("?" * len(k))  # noqa: E731
        acct = {r[0]: list(r) for r in con.execute(
            f"SELECT {acols} FROM accounts WHERE id IN ({marks(b.wallets)}) ORDER BY id", b.wallets)}
        con.execute(f"SELECT {ucols} FROM users WHERE user_id IN ({marks(b.users)})", b.users).fetchall()
        wl = [f"wallet:{u}" for u in b.users]
        con.execute(f"SELECT {lcols} FROM lots WHERE account_id IN ({marks(wl)})", wl).fetchall()
        con.execute(f"SELECT {icols} FROM idempotency WHERE key IN ({marks(b.keys)})", b.keys).fetchall()
        top = con.execute("SELECT coalesce(max(id), 0) FROM transfers").fetchone()[0]
        rows = b.rows(list(range(top + 1, top + 1 + cfg["batch"])), time.time_ns() // 1000, acct)
        con.executemany(tr_ins, rows["transfers"])
        con.executemany(acct_up, rows["accounts"])
        con.executemany(lot_up, rows["lots"])
        con.executemany(idem_ins, rows["idempotency"])
        con.execute("COMMIT")
        if now_m >= start:
            cpu0 = cpu0 or time.process_time() - (time.perf_counter() - began)
            items += cfg["batch"]
            commits += 1
            lat.append(time.perf_counter() - began)
    con.close()
    return {"items": items, "commits": commits, "latencies": lat, "cpu_seconds": time.process_time() - cpu0}


async def migrate(url: str) -> None:
    db = Database(url)
    await db.migrate()
    await db.writer.dispose()
    await db.reader.dispose()


async def run_postgres(cfg: dict[str, Any]) -> dict[str, Any]:
    import asyncpg

    if not cfg.get("migrated"):
        await migrate(cfg["url"])
    con = await asyncpg.connect(cfg["dsn"])
    await con.execute("SET synchronous_commit = on")
    now = time.time_ns() // 1000
    accts, usrs, lts = _seed_rows(cfg["accounts"], now)
    await con.copy_records_to_table("accounts", records=accts)
    await con.copy_records_to_table("users", records=usrs)
    await con.copy_records_to_table("lots", records=lts)
    acols = ", ".join(_cols(accounts))
    load = await con.prepare(f"SELECT {acols} FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE")
    groups = await con.prepare(
        "SELECT 0 AS g, to_jsonb(t) AS r FROM users t WHERE t.user_id = ANY($1::text[]) UNION ALL "
        "SELECT 1, to_jsonb(t) FROM lots t WHERE t.account_id = ANY($2::text[]) UNION ALL "
        "SELECT 2, to_jsonb(t) FROM idempotency t WHERE t.key = ANY($3::text[])"
    )
    ids = await con.prepare("SELECT nextval('transfers_id_seq') FROM generate_series(1, 64)")
    tcols = _cols(transfers)
    ttypes = ["bigint", "text", "text", "text", "bigint", "text", "text", "text", "text", "text", "bigint", "bigint",
              "bigint", "text", "bigint", "text", "text"]
    n_t = len(tcols)
    tparams = ", ".join(f"${i + 1}::{ttypes[i]}[]" for i in range(n_t))
    ip = ", ".join(f"${n_t + i + 1}::{t}[]" for i, t in enumerate(("text", "text", "bytea", "bigint")))
    base = n_t + 4
    ap = ", ".join(f"${base + i + 1}::{t}[]" for i, t in enumerate(("bigint",) * 4 + ("boolean", "bigint", "text")))
    lp = ", ".join(f"${base + 7 + i + 1}::bigint[]" for i in range(3))
    acct_cols = ", ".join(ACCOUNT_SET) + ", id"
    write = await con.prepare(
        f"WITH q0 AS (INSERT INTO transfers ({', '.join(tcols)}) SELECT * FROM unnest({tparams})), "
        f"q1 AS (INSERT INTO idempotency (key, fingerprint, response, created_at_us) SELECT * FROM unnest({ip})), "
        f"q2 AS (UPDATE accounts SET {', '.join(f'{c} = v.{c}' for c in ACCOUNT_SET)} FROM unnest({ap}) "
        f"AS v({acct_cols}) WHERE accounts.id = v.id), "
        f"q3 AS (UPDATE lots SET remaining = v.remaining, granted = v.granted FROM unnest({lp}) "
        "AS v(remaining, granted, id) WHERE lots.id = v.id) SELECT 1"
    )
    rng = random.Random(1)
    pool: list[int] = []
    items = commits = n = 0
    lat: list[float] = []
    cpu0 = 0.0  # the process's CPU when the measured window began (imports and seeding excluded)
    t0 = time.monotonic()
    start, stop = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    while (now_m := time.monotonic()) < stop:
        began = time.perf_counter()
        b = _Batch(rng, cfg["accounts"], cfg["batch"], n)
        n += cfg["batch"]
        async with con.transaction():
            acct = {r[0]: list(r) for r in await load.fetch(b.wallets)}
            await groups.fetch(b.users, [f"wallet:{u}" for u in b.users], b.keys)
            while len(pool) < cfg["batch"]:
                pool += [r[0] for r in await ids.fetch()]
            got, pool[:] = pool[: cfg["batch"]], pool[cfg["batch"]:]
            rows = b.rows(got, time.time_ns() // 1000, acct)
            arrays = [list(c) for c in zip(*rows["transfers"], strict=True)]
            arrays += [list(c) for c in zip(*rows["idempotency"], strict=True)]
            arrays += [list(c) for c in zip(*rows["accounts"], strict=True)]
            arrays += [list(c) for c in zip(*rows["lots"], strict=True)]
            await write.fetch(*arrays)
        if now_m >= start:
            cpu0 = cpu0 or time.process_time() - (time.perf_counter() - began)
            items += cfg["batch"]
            commits += 1
            lat.append(time.perf_counter() - began)
    await con.close()
    return {"items": items, "commits": commits, "latencies": lat, "cpu_seconds": time.process_time() - cpu0}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    result = run_sqlite(cfg) if cfg["db"] == "sqlite" else asyncio.run(run_postgres(cfg))
    with open(cfg["out"], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
