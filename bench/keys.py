"""The key rows against their plain rows, in interleaved windows on one server.

`make bench` measures its key rows here (`key_rows` in bench/run.py), and
`python -m bench.keys` runs them alone (fresh database, 1,000 funded
accounts, one key each).

On a shared host the neighbours' load moves a window's throughput by 2x
within seconds, so a key row and its plain row measured minutes apart say
nothing at 10 %. Here each pair runs as alternating windows on the same
server, plain then keyed, BENCH_KEYS_ROUNDS times (A B A B ...; default 9).
Each window has its own request_ids (a repeat would be a replay). The
server's CPU of a window is its process's own user + system time (the
kernel's rusage counters, /proc/<pid>/stat, all its threads) read at the
window's start and end, divided by the calls (or items) completed in it. A
pair's ratios are taken per round (a keyed window over the plain window just
before it) and the median of the rounds is reported, with every window.

The pairs:
- "Spend through a key with budgets, 1,000 accounts": a service token naming
  each account's key, against the same Spend without a key.
- "Spend with a key's secret, 1 hot account": the agent's own secret (a
  user-level caller, paced by fair shares), against the wallet owner's user
  token on the same wallet (the same pacing), not the unpaced service row.
- "SpendBatch(100) through keys, 1,000 accounts": against SpendBatch(100).

With BENCH_CALLGRIND=1 the server runs under callgrind and each window is a
fixed count of calls measured in its instructions (bench/callgrind.py;
3 rounds by default).

  BENCH_KEYS_ROUNDS=9  BENCH_KEYS_DURATION=4  BENCH_KEYS_WARMUP=1
  BENCH_KEYS_ONLY=secret,Batch (substrings of the pairs' names)  BENCH_DBS=sqlite
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import callgrind
from bench import run as b
from server.platform.auth import Role, mint_token

# Under callgrind a window's count moves by well under 1 %: 3 rounds are plenty.
ROUNDS = max(1, int(os.environ.get("BENCH_KEYS_ROUNDS", 3 if callgrind.ON else 9)))
DURATION = b.env_float("BENCH_KEYS_DURATION", min(b.DURATION, 4))
WARMUP = b.env_float("BENCH_KEYS_WARMUP", min(b.WARMUP, 1))
# Only the pairs whose name contains one of these (comma-separated): "secret", "Batch", ...
ONLY = [w for w in os.environ.get("BENCH_KEYS_ONLY", "").split(",") if w]


@dataclass
class Pair:
    name: str  # the key row's
    plain_name: str
    plain: dict[str, Any]
    keyed: dict[str, Any]
    unit: str  # "call" or "item"

    @property
    def rate(self) -> str:
        return "rps" if self.unit == "call" else "items_per_s"

    @property
    def cpu(self) -> str:
        return b.cpu_field(self.unit)


def pairs(target: str, users: list[str], made: dict[str, tuple[str, str]]) -> list[Pair]:
    keys = {u: made[u][0] for u in users}
    size = 100
    batch = {"batch": size, "concurrency": max(2, b.BATCH_ITEMS_IN_FLIGHT // size)}
    hot = users[0]
    owner = mint_token(b.SECRET, hot, Role.USER, ttl_seconds=7200)
    return [
        Pair(f"Spend through a key with budgets, {b.ACCOUNTS} accounts", f"Spend, {b.ACCOUNTS} accounts",
             b.load_cfg(target, "spend", "a", users), {**b.load_cfg(target, "spend", "ka", users), "keys": keys},
             "call"),
        Pair("Spend with a key's secret, 1 hot account", "Spend with the owner's user token, 1 hot account",
             {**b.load_cfg(target, "spend", "ut", [hot]), "token": owner},
             {**b.load_cfg(target, "spend", "ks", [hot]), "token": made[hot][1]}, "call"),
        Pair(f"SpendBatch(100) through keys, {b.ACCOUNTS} accounts", f"SpendBatch(100), {b.ACCOUNTS} accounts",
             {**b.load_cfg(target, "batch", "b", users), **batch},
             {**b.load_cfg(target, "batch", "kb", users), "keys": keys, **batch}, "item"),
    ]


def _window(cfg: dict[str, Any], round_no: int) -> dict[str, Any]:
    # Each window its own request_ids: a repeat of an earlier window's would be replayed.
    return {**cfg, "tag": f"{cfg['tag']}r{round_no}", "warmup": WARMUP, "duration": DURATION}


def _median_row(runs: list[dict[str, Any]], pair: Pair) -> dict[str, Any]:
    rates = [r[pair.rate] for r in runs]
    cpus = [r[pair.cpu] for r in runs if r.get(pair.cpu)]
    ordered = sorted(runs, key=lambda r: r[pair.rate])
    return {
        **ordered[len(ordered) // 2],
        pair.rate: statistics.median(rates),
        pair.cpu: statistics.median(cpus) if cpus else None,
        "windows": [(round(r[pair.rate]), r.get(pair.cpu)) for r in runs],
    }


async def measure(kind: str, server: b.Server, users: list[str], made: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Each pair in ROUNDS interleaved windows: its plain row and its key row,
    each with the medians of its windows; the key row also has the median of
    the rounds' ratios (`rate_ratio`, `cpu_ratio`) and each round's ratios."""
    rows: list[dict[str, Any]] = []
    for pair in pairs(server.target, users, made):
        if ONLY and not any(w in pair.name for w in ONLY):
            continue
        plain_runs: list[dict[str, Any]] = []
        keyed_runs: list[dict[str, Any]] = []
        for i in range(ROUNDS):
            b.log(f"{kind}: {pair.name} against {pair.plain_name} ({i + 1}/{ROUNDS})")
            plain_runs.append(await b.run_window(_window(pair.plain, i), server))
            keyed_runs.append(await b.run_window(_window(pair.keyed, i), server))
        rounds = [
            (k[pair.rate] / p[pair.rate] if p[pair.rate] and not callgrind.ON else None,
             k[pair.cpu] / p[pair.cpu] if p.get(pair.cpu) and k.get(pair.cpu) else None)
            for p, k in zip(plain_runs, keyed_runs, strict=True)
        ]
        rate_ratios = [r for r, _ in rounds if r is not None]
        cpu_ratios = [c for _, c in rounds if c is not None]
        section = {"section": "items"} if pair.unit == "item" else {}
        rows.append({"name": pair.plain_name + " (keys' pair)", "db": kind, **section, **_median_row(plain_runs, pair),
                     "rounds": ROUNDS, "pairs_with": pair.name, **b.measure()})
        rows.append({
            "name": pair.name, "db": kind, **section, **_median_row(keyed_runs, pair), "rounds": ROUNDS, **b.measure(),
            "vs": pair.plain_name, "unit": pair.unit,
            "rate_ratio": round(statistics.median(rate_ratios), 3) if rate_ratios else None,
            "cpu_ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
            "round_ratios": [(round(r, 3) if r else r, round(c, 3) if c else c) for r, c in rounds],
        })
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    by = {(r["name"], r["db"]): r for r in rows}
    for r in rows:
        if "rate_ratio" not in r:
            continue
        p = by[(r["vs"] + " (keys' pair)", r["db"])]
        rate, cpu = ("rps", b.cpu_field("call")) if r["unit"] == "call" else ("items_per_s", b.cpu_field("item"))
        what, per = ("instructions", "instr") if r.get("measure") else ("CPU", "us")
        rates = f"{r['rate_ratio']:.2f}x the throughput, " if r["rate_ratio"] is not None else ""
        print(f"{r['db']}: {r['name']}: {rates}{r['cpu_ratio']:.3f}x the server {what} "
              f"per {r['unit']} of {r['vs']} (median of {r['rounds']} rounds)")
        for (pr, pc), (kr, kc), (rr, cr) in zip(p["windows"], r["windows"], r["round_ratios"], strict=True):
            print(f"    {pr:8} -> {kr:8} per s ({rr}x)   {pc:8} -> {kc:8} {per} per {r['unit']} ({cr}x)")
        print(f"    medians: {p[rate]:.0f} -> {r[rate]:.0f} per s, {p[cpu]:.1f} -> {r[cpu]:.1f} {per} per {r['unit']}")


async def one_db(kind: str, workdir: Path) -> list[dict[str, Any]]:
    users = [f"u{i:04d}" for i in range(b.ACCOUNTS)]
    async with b.fresh_db(kind, workdir) as url, b.billing_server(url, workdir) as server:
        await b.prefund(server.target, users)
        made = await b.make_keys(server.target, users)
        return await measure(kind, server, users, made)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="billing-bench-keys-") as tmp:
        rows = []
        for kind in b.DBS:
            rows += await one_db(kind, Path(tmp))
        report(rows)


if __name__ == "__main__":
    b.install_loop()
    asyncio.run(main())
