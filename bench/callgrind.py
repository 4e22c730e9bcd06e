"""The server's instructions per call, counted by callgrind: BENCH_CALLGRIND=1.

On this shared host a window's server CPU per call moves by more than 10 %
between runs of the same code; the instructions the server executes for a
fixed amount of work do not. In this mode (bench/README.md, "Instructions
under callgrind") each server of the key rows (bench/keys.py) and the
priced rows (`priced_rows` in bench/run.py) is the real `python -m server
serve` run under `valgrind --tool=callgrind --instr-atstart=no`, and each
measured window is a fixed count of calls: the client (outside valgrind)
makes its warm-up calls uninstrumented, then `callgrind_control` zeroes the
server's counters and turns its instrumentation on (all its threads: the
event loop's, gRPC's, SQLite's), the client makes exactly its calls, the
instrumentation is turned off and the counters dumped (`count`). A window's
instructions over its calls (or items) is its measure.

  BENCH_CALLGRIND_CALLS=100 (Spend calls a window)  BENCH_CALLGRIND_BATCH_CALLS=8 (SpendBatch(100) calls a window)
  BENCH_CALLGRIND_CONCURRENCY=1 (Spend calls at once)
  BENCH_CALLGRIND_WARMUP=1 (the warm-up, in windows' worth of calls)
  BENCH_CALLGRIND_KEEP=<dir> (keep each window's dump there, as <dir>/<window's tag>.out, for callgrind_annotate)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from pathlib import Path

ON = os.environ.get("BENCH_CALLGRIND", "") not in ("", "0")
CALLS = int(os.environ.get("BENCH_CALLGRIND_CALLS", 100))
BATCH_CALLS = int(os.environ.get("BENCH_CALLGRIND_BATCH_CALLS", 8))
# Spend calls at once in a window (SpendBatch keeps its rows' 4). At 32, the
# ledger's group commit made batches of one to a few Spends as they happened
# to arrive, and a window's instructions per call moved by 5-10 %; one at a
# time each Spend is its own batch and a window's count moves by under 0.5 %.
CONCURRENCY = int(os.environ.get("BENCH_CALLGRIND_CONCURRENCY", 1))
WARMUP = float(os.environ.get("BENCH_CALLGRIND_WARMUP", 1))
# Under callgrind the server starts (imports, migrations) 5-10x slower.
START_SECONDS = 600.0
MEASURE = "callgrind instructions"
KEEP = os.environ.get("BENCH_CALLGRIND_KEEP", "")
# The server's work by the clock rather than by calls, off: under callgrind
# each wall second of it counts, and a window's wall time is the host's. The
# rate card's and the webhooks' polls (each a query a second); the loop's lag
# sampling of fair shares (every 10 ms while a user-level caller is about:
# under valgrind the loop always lags, so it would also cut the shares and
# leave the server idle between paced calls). Each call still takes its turn.
SERVER_ENV = {
    "BILLING_RATE_CARD_LEAD_SECONDS": "3600",
    "BILLING_EVENTS_POLL_SECONDS": "3600",
    "BILLING_FAIR_LOOP_LAG_MS": "0",
}


def command(argv: list[str], out: Path) -> list[str]:
    """`argv` run under callgrind, uninstrumented until told, dumps into `out`.* (the
    interpreter itself: valgrind runs it in the same process, so its pid is the server's)."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]


async def control(pid: int, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, str(pid), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    said, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {said.decode(errors='replace')[-500:]}")


def totals(dump: Path) -> int:
    """The instructions (Ir) of a callgrind dump: its `totals:` line (`summary:` in older ones)."""
    summary = None
    with dump.open() as fh:
        for line in fh:
            if line.startswith("totals:"):
                return int(line.split()[1])
            if line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None:
        raise ValueError(f"{dump}: no totals")
    return summary


async def count(pid: int, out: Path, work: Awaitable[None], name: str = "") -> int:
    """The instructions the process `pid` (run by `command(..., out)`) executes
    while `work` runs, all its threads: counters zeroed and instrumentation on
    before, off and dumped after; the dump is read and removed (or, with KEEP,
    moved to KEEP/<name>.out)."""
    before = set(out.parent.glob(out.name + ".*"))
    await control(pid, "--zero")
    await control(pid, "--instr=on")
    try:
        await work
    finally:
        await control(pid, "--instr=off")
        await control(pid, "--dump")
    dumps = sorted(set(out.parent.glob(out.name + ".*")) - before, key=lambda p: p.stat().st_mtime)
    if len(dumps) != 1:
        raise RuntimeError(f"callgrind: expected one new dump of {out}, found {[d.name for d in dumps]}")
    try:
        return totals(dumps[0])
    finally:
        _keep(dumps[0], name)


def _keep(dump: Path, name: str) -> None:
    """A window's dump moved to KEEP/<name>.out, or removed."""
    if KEEP and name:
        Path(KEEP).mkdir(parents=True, exist_ok=True)
        dump.replace(Path(KEEP) / f"{name}.out")
    else:
        dump.unlink()
