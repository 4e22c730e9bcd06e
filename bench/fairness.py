"""Honest callers' p99 under one caller at its caps, as a ratio to their own
p99 without it, in one run (docs/fairness.md).

`python -m bench.fairness [sqlite|postgres] [CHECKOUT] [SETTING=VALUE ...]`:
the long variant (BENCH_FAIRNESS_ROUNDS, default 4, of a 3 s quiet and a 4 s
attack phase per mix, one measure). `python -m bench.fairness check KIND
[SETTING=VALUE ...]`: what tests/fairness/test_fairness.py runs (`SUITE`,
`judge`), exit status 1 over the bound; with BILLING_FAIR_CALLS_PER_SECOND=0
(fair shares off) it must fail. CHECKOUT (default: this tree) is the tree
whose server is started, so that an older commit can be measured the same
way (`git worktree add /tmp/old <commit>`); SETTING=VALUE are server
settings over the defaults.

The honest load: 16 users each Spend every 125 ms, 4 more CheckBalance every
200 ms, throughout. The attacker, one user token inside its own caps, in a
process of its own, for one phase at a time, in turn with phases without it
(one user per mix: the share a SpendBatch used up is that user's debt, which
would hold back the next mix's calls):
- balance: 100 loops of CheckBalance;
- history_type: 100 loops of ListTransactions filtered by a type it never
  had, over its own many transfers (seeded before the phases);
- history_future: 100 loops of ListTransactions from a start_time in 9000;
- batch: SpendBatch(1,000) one after another, one at a time: the server
  lifts the user mutation cap, so only the fair share holds it back (when a
  batch that large is refused, the largest one its bucket takes).

Each attack phase's honest p99 is compared with the quiet phases on either
side of it; a mix's ratio is the median over its phases (`Judgement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from flownexus.billing.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    common_pb2,
    history_pb2,
    history_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from bench import run
from bench.common import channel, percentile
from server.platform.auth import Role, mint_token

MIXES = ("balance", "history_type", "history_future", "batch")
SPENDERS, SPEND_EVERY = 16, 0.125
READERS, READ_EVERY = 4, 0.2
ATTACK_LOOPS = int(os.environ.get("BENCH_FAIRNESS_LOOPS", 100))
ATTACKER = "mallory"
YEAR_9000_US = 221_845_392_000_000_000
# Samples of the first moments of a phase belong to neither side.
SETTLE_SECONDS = 0.3
# The filtered history attacker's own transfers in the suite: three times the
# 1,000 rows a filtered page may examine.
TRANSFERS = 3_000
HERE = Path(__file__).resolve().parent.parent  # the attacker runs this tree's client


def metadata(subject: str, role: Role = Role.USER) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(run.SECRET, subject, role, ttl_seconds=7200)}"),)


# ---- the attacker (its own process) ----------------------------------------------------


def _retry_after(exc: grpc.aio.AioRpcError) -> tuple[float, error_details_pb2.ErrorInfo | None]:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            delay, info = 0.1, None
            for d in status.details:
                if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    r = error_details_pb2.RetryInfo()
                    d.Unpack(r)
                    delay = r.retry_delay.seconds + r.retry_delay.nanos / 1e9
                elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
            return delay, info
    return 0.1, None


def attacker(mix: str) -> str:
    """The user attacking with `mix`."""
    return f"{ATTACKER}-{mix.replace('_', '-')}"


async def attack(target: str, tokens: dict[str, str]) -> None:
    """Says "ready" once connected; then, for each line "MIX SECONDS" on
    stdin, attacks for that long with the mix's user token and prints its
    counts (one JSON line)."""
    batch_size = 1000
    n = 0
    future = Timestamp()
    future.FromMicroseconds(YEAR_9000_US)
    async with channel(target) as ch:
        balance = balance_pb2_grpc.BalanceServiceStub(ch)
        history = history_pb2_grpc.HistoryServiceStub(ch)
        usage = usage_pb2_grpc.UsageServiceStub(ch)

        async def one(mix: str, md: tuple[tuple[str, str], ...], stop: float) -> None:
            nonlocal n
            # A client's deadline: the phase's end. Calls still waiting for
            # their turn then are cancelled, so that the phase ends on time
            # (a hundred calls in a queue paced at the attacker's share take
            # seconds), and a paced batch past it is cut short.
            deadline = max(0.05, stop - time.monotonic())
            if mix == "balance":
                await balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=md, timeout=deadline)
            elif mix == "history_type":
                await history.ListTransactions(history_pb2.ListTransactionsRequest(
                    types=[common_pb2.TRANSACTION_TYPE_REVERSAL], page_size=100), metadata=md, timeout=deadline)
            elif mix == "history_future":
                await history.ListTransactions(history_pb2.ListTransactionsRequest(
                    start_time=future, page_size=100), metadata=md, timeout=deadline)
            else:
                n += 1
                tag = f"atk-{os.getpid()}-{n}"
                await usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=[
                    usage_pb2.SpendRequest(amount_millicredits=1, request_id=f"{tag}-{i}", category="attack")
                    for i in range(batch_size)
                ]), metadata=md, timeout=max(0.2, deadline))

        async def loop(mix: str, stop: float, counts: dict[str, int]) -> None:
            nonlocal batch_size
            md = (("authorization", f"Bearer {tokens[mix]}"),)
            while time.monotonic() < stop:
                try:
                    await one(mix, md, stop)
                    counts["ok"] += 1
                except grpc.aio.AioRpcError as exc:
                    counts[exc.code().name] += 1
                    delay, info = _retry_after(exc)
                    if info is not None and info.reason == "BATCH_OVER_MUTATION_BURST":
                        batch_size = int(info.metadata["burst"])
                    elif exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await asyncio.sleep(min(delay, max(0.0, stop - time.monotonic())))

        for token in tokens.values():
            await balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(("authorization", f"Bearer {token}"),))
        print("ready", flush=True)
        reading = asyncio.get_running_loop()
        while line := await reading.run_in_executor(None, sys.stdin.readline):
            mix, seconds = line.split()
            stop = time.monotonic() + float(seconds)
            counts: dict[str, int] = defaultdict(int)
            # The batch attacker sends one batch whenever its bucket allows; the others keep 100 calls in flight.
            await asyncio.gather(*(loop(mix, stop, counts) for _ in range(1 if mix == "batch" else ATTACK_LOOPS)))
            print(json.dumps(counts), flush=True)


# ---- the honest load and the phases ----------------------------------------------------

BOUND = 2.0
QUIET = "quiet"


@dataclass
class Samples:
    """Latencies by (phase, call) in the order of the phases, the honest calls
    that failed, and what the rest of the host used in each phase."""

    by_phase: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    others: dict[str, float] = field(default_factory=dict)  # cores used by other processes
    phase: str = "warm-up"
    since: float = 0.0

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()
        self.order.append(phase)

    def p99(self, phase: str, call: str) -> float | None:
        values = self.by_phase.get((phase, call))
        return percentile(values, 99) if values else None

    def phase_ratios(self, mix: str, call: str) -> list[float]:
        """Each of the mix's attack phases' p99 over the mean p99 of the two
        quiet phases around it: a change of the host's load over the run
        (another test starting beside this one) moves both sides."""
        out = []
        for i, phase in enumerate(self.order):
            if not phase.startswith(f"{mix}#"):
                continue
            loud = self.p99(phase, call)
            quiet = [q for j in (i - 1, i + 1) if 0 <= j < len(self.order) and self.order[j].startswith(QUIET)
                     and (q := self.p99(self.order[j], call)) is not None]
            if loud is not None and quiet:
                out.append(loud / statistics.mean(quiet))
        return out

    def p99_ms(self) -> dict[str, float]:
        return {f"{p}/{c}": round(percentile(v, 99) * 1000, 1) for (p, c), v in sorted(self.by_phase.items())}


async def honest_load(target: str, samples: Samples, stop: asyncio.Event) -> None:
    async def caller(subject: str, every: float, offset: float, spend: bool) -> None:
        md = metadata(subject)
        async with channel(target) as ch:
            usage = usage_pb2_grpc.UsageServiceStub(ch)
            balance = balance_pb2_grpc.BalanceServiceStub(ch)
            await asyncio.sleep(offset)
            n = 0
            next_at = time.monotonic()
            while not stop.is_set():
                n += 1
                phase = samples.phase if time.monotonic() - samples.since >= SETTLE_SECONDS else "settling"
                began = time.perf_counter()
                try:
                    if spend:
                        await usage.Spend(usage_pb2.SpendRequest(
                            amount_millicredits=1, request_id=f"h{n}", category="honest"), metadata=md, timeout=30)
                    else:
                        await balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=md, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    samples.failures.append(f"{subject} {phase}: {exc.code().name} {exc.details()}")
                else:
                    samples.by_phase[(phase, "Spend" if spend else "CheckBalance")].append(
                        time.perf_counter() - began)
                next_at += every
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(
        *(caller(f"honest-spender-{i}", SPEND_EVERY, i * SPEND_EVERY / SPENDERS, True) for i in range(SPENDERS)),
        *(caller(f"honest-reader-{i}", READ_EVERY, i * READ_EVERY / READERS, False) for i in range(READERS)),
    )


async def seed_attacker(target: str, transfers: int) -> None:
    """The filtered history attacker's own many transfers, written with a
    service token before the phases (it could write them itself, more slowly)."""
    md = metadata("fairness-seed", Role.SERVICE)
    async with channel(target) as ch:
        usage = usage_pb2_grpc.UsageServiceStub(ch)
        for start in range(0, transfers, 1000):
            await usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=[
                usage_pb2.SpendRequest(user_id=attacker("history_type"), amount_millicredits=1, request_id=f"seed-{i}",
                                       category="seed")
                for i in range(start, min(transfers, start + 1000))
            ]), metadata=md)


async def _attacker_process(target: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fairness", "attack", target,
        json.dumps({mix: metadata(attacker(mix))[0][1].split()[1] for mix in MIXES}),
        cwd=HERE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    return proc


# ---- what the rest of the host does ------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _host_cpu() -> float:
    """CPU seconds every process of the host has used, all cores (steal included)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return out


@dataclass
class _Mark:
    at: float
    host: float
    ours: dict[int, float]

    def others(self, later: _Mark) -> float:
        """Cores the rest of the host used from this mark to `later`."""
        ours = sum(later.ours[p] - v for p, v in self.ours.items() if p in later.ours)
        return max(0.0, later.host - self.host - ours) / max(1e-6, later.at - self.at)


# ---- one run: the server, the honest load, the attacker, the phases ---------------------


@dataclass
class Session:
    """The honest load throughout and one attacker process, connected once
    (its start costs CPU: it belongs to no phase); `measure` adds phases."""

    server: run.Server
    proc: asyncio.subprocess.Process
    samples: Samples = field(default_factory=Samples)
    attackers: list[dict[str, Any]] = field(default_factory=list)
    pg: asyncpg.Connection | None = None
    mark: _Mark | None = None

    async def _ours(self) -> list[int]:
        pids = [os.getpid(), self.proc.pid, *self.server.pids()]
        if self.pg is not None:  # the server's PostgreSQL backends
            pids += [r["pid"] for r in await self.pg.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.server.url.rsplit("/", 1)[1])]
        return pids

    async def enter(self, phase: str) -> None:
        mark = _Mark(time.monotonic(), _host_cpu(), _cpu(await self._ours()))
        if self.mark is not None and self.samples.order:
            self.samples.others[self.samples.order[-1]] = round(self.mark.others(mark), 2)
        self.mark = mark
        self.samples.enter(phase)

    async def measure(self, mixes: tuple[str, ...], rounds: int, quiet_s: float, attack_s: float) -> None:
        """Per round, for each mix, a quiet phase, then one with the attacker;
        a quiet phase after the last (the one before comes from the last
        measure, if there was one)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for _ in range(rounds):
            for mix in mixes:
                if not self.samples.order or not self.samples.order[-1].startswith(QUIET):
                    await self.enter(f"{QUIET}#{len(self.samples.order)}")
                    await asyncio.sleep(quiet_s)
                await self.enter(f"{mix}#{len(self.samples.order)}")
                self.proc.stdin.write(f"{mix} {attack_s}\n".encode())
                out = await self.proc.stdout.readline()
                self.attackers.append({"mix": mix, **json.loads(out or b"{}")})
        await self.enter(f"{QUIET}#{len(self.samples.order)}")
        await asyncio.sleep(quiet_s)


@contextlib.asynccontextmanager
async def session(server: run.Server) -> AsyncIterator[Session]:
    samples = Samples()
    stop = asyncio.Event()
    load = asyncio.create_task(honest_load(server.target, samples, stop))
    proc = await _attacker_process(server.target)
    assert proc.stdin is not None
    pg = await asyncpg.connect(run.PG_DSN) if server.url.startswith("postgresql") else None
    sess = Session(server, proc, samples, pg=pg)
    try:
        await asyncio.sleep(1.0)  # connections and first wallets
        yield sess
        await sess.enter("done")
    finally:
        stop.set()
        proc.stdin.close()
        await proc.wait()
        await load
        if pg is not None:
            await pg.close()


# ---- the decision -----------------------------------------------------------------------

CALLS = ("Spend", "CheckBalance")
# What tests/fairness/test_fairness.py runs: per database, 3 rounds of a 1 s
# quiet and a 1 s attack phase per mix; a mix over the bound, 3 more rounds of
# it, up to 3 measures in all.
SUITE = {"rounds": 3, "quiet_s": 1.0, "attack_s": 1.0, "measures": 3}


@dataclass
class Judgement:
    """Per mix and honest call, the median of its attack phases' ratios (each
    to the quiet phases around it), over every measure of the mix; the
    medians after each measure; the run's samples."""

    samples: Samples
    attackers: list[dict[str, Any]]
    measures: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def ratios(self, mixes: tuple[str, ...] = MIXES, digits: int | None = 2) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for mix in mixes:
            out[mix] = {}
            for call in CALLS:
                r = self.samples.phase_ratios(mix, call)
                median = statistics.median(r) if r else float("nan")
                out[mix][call] = round(median, digits) if digits is not None else median
        return out

    def over(self, mixes: tuple[str, ...] = MIXES, bound: float = BOUND) -> tuple[str, ...]:
        # A mix without a ratio (no samples at all) is over: it cannot be shown within.
        return tuple(m for m, r in self.ratios(mixes, None).items() if not all(v <= bound for v in r.values()))

    def phases(self) -> dict[str, list[float]]:
        """Every attack phase's ratio, by mix: honest Spend / CheckBalance."""
        return {f"{m}/{c}": [round(v, 2) for v in self.samples.phase_ratios(m, c)] for m in MIXES for c in CALLS}


async def judge(
    sess: Session, *, mixes: tuple[str, ...] = MIXES, rounds: int, quiet_s: float, attack_s: float, measures: int,
    bound: float = BOUND,
) -> Judgement:
    """Every mix measured once; while one is over the bound, it is measured
    again (fresh phases, the same number) and judged on all its phases so far,
    up to `measures` in all. A burst of load from elsewhere spoils a phase or
    two, so the median moves back under; an attacker that moves honest p99
    past the bound does so in most of its phases, so the median stays over."""
    j = Judgement(sess.samples, sess.attackers)
    todo = mixes
    for _ in range(measures):
        await sess.measure(todo, rounds, quiet_s, attack_s)
        j.measures.append(j.ratios(todo))
        todo = j.over(todo, bound)
        if not todo:
            break
    return j


@contextlib.asynccontextmanager
async def fairness_server(url: str, workdir: Path, **env: str) -> AsyncIterator[run.Server]:
    # The server's default caps and shares, but for the user mutation cap: lifted
    # (as for every bench server), so that only its fair share holds back the
    # SpendBatch attacker (at the default 10 items a second, one batch of 100
    # every 10 s). The bench's server also lifts caps of service tokens (the seed's).
    settings: dict[str, Any] = {"BILLING_USER_MUTATION_RATE_PER_SECOND": "0", **env}
    async with run.billing_server(url, workdir, **settings) as server:
        yield server


async def check(url: str, workdir: Path, *, transfers: int, rounds: int, quiet_s: float, attack_s: float,
                measures: int, env: dict[str, str] | None = None) -> tuple[Judgement, dict[str, float]]:
    """The judgement on a fresh server (settings `env` over the defaults),
    and how long its steps took."""
    began = time.monotonic()
    async with fairness_server(url, workdir, **(env or {})) as server:
        started = time.monotonic()
        await seed_attacker(server.target, transfers)
        seeded = time.monotonic()
        async with session(server) as sess:
            j = await judge(sess, rounds=rounds, quiet_s=quiet_s, attack_s=attack_s, measures=measures)
    took = {"start_s": started - began, "seed_s": seeded - started, "phases_s": time.monotonic() - seeded}
    return j, {k: round(v, 1) for k, v in took.items()}


def report(kind: str, j: Judgement, took: dict[str, float]) -> dict[str, Any]:
    return {
        "db": kind, "ratios": j.ratios(), "over": j.over(), "measures": j.measures, "phase_ratios": j.phases(),
        "others_cores": j.samples.others, "p99_ms": j.samples.p99_ms(), "failures": j.samples.failures[:20],
        "attackers": j.attackers, "took": took,
    }


def main() -> None:
    """`attack TARGET TOKENS`: the attacker process. `[check] KIND [CHECKOUT]
    [SETTING=VALUE ...]`: the long variant, or with `check` the suite's own
    procedure and bound (exit status 1 over it), on a server with those
    settings over the defaults (BILLING_FAIR_CALLS_PER_SECOND=0: fair shares
    off, which it must fail)."""
    args = sys.argv[1:]
    if args[:1] == ["attack"]:
        asyncio.run(attack(args[1], json.loads(args[2])))
        return
    suite = args[:1] == ["check"]
    args = args[1:] if suite else args
    env = dict(a.split("=", 1) for a in args if "=" in a)
    args = [a for a in args if "=" not in a]
    kind = args[0] if args else "sqlite"
    if len(args) > 1:
        run.ROOT = Path(args[1]).resolve()
    if suite:
        how = {**SUITE, "transfers": TRANSFERS}
    else:
        how = {"rounds": int(os.environ.get("BENCH_FAIRNESS_ROUNDS", 4)), "quiet_s": 3.0, "attack_s": 4.0,
               "measures": 1, "transfers": int(os.environ.get("BENCH_FAIRNESS_TRANSFERS", 20_000))}
    res = asyncio.run(_main(kind, env, how))
    print(json.dumps(res, indent=1))
    if suite and (res["over"] or res["failures"]):
        sys.exit(1)


async def _main(kind: str, env: dict[str, str], how: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with run.fresh_db(kind, work) as url:
            j, took = await check(url, work, env=env, **how)
    return {**report(kind, j, took), "settings": env}


if __name__ == "__main__":
    main()


