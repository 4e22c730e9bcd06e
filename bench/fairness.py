"""Honest callers' p99 under one caller at its caps, as a ratio to their own
p99 without it, in one run (docs/fairness.md).

`python -m bench.fairness [sqlite|postgres] [CHECKOUT]`: the long variant
(BENCH_FAIRNESS_ROUNDS, default 4); tests/fairness/test_fairness.py runs a
short one. CHECKOUT (default: this tree) is the tree whose server is
started, so that an older commit can be measured the same way
(`git worktree add /tmp/old <commit>`).

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


@dataclass
class Samples:
    """Latencies by (phase, call), and the honest calls that failed."""

    by_phase: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    phase: str = "warm-up"
    since: float = 0.0

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()

    def ratios(self, mixes: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Per mix and honest call: the median over the mix's phases of their
        p99, over the median of every quiet phase's p99 (all in this run).
        Medians of phases, not one p99 of all samples: a burst of load from
        elsewhere on the machine spoils a phase or two, not the ratio, and
        the quiet phases, interleaved with the others, share their moments."""
        out: dict[str, dict[str, float]] = {}
        for mix in mixes:
            out[mix] = {}
            for call in ("Spend", "CheckBalance"):
                quiet = self._phase_p99s("before ", call)
                loud = self._phase_p99s(f"{mix}#", call)
                out[mix][call] = statistics.median(loud) / statistics.median(quiet) if quiet and loud else float("nan")
        return out

    def _phase_p99s(self, prefix: str, call: str) -> list[float]:
        return [percentile(v, 99) for (phase, c), v in self.by_phase.items() if c == call and phase.startswith(prefix)]

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


async def phases(
    target: str, *, mixes: tuple[str, ...] = MIXES, rounds: int, baseline_s: float, attack_s: float,
) -> tuple[Samples, list[dict[str, Any]]]:
    """The honest load throughout; per round, for each mix, a phase without
    the attacker, then one with it. One attacker process, connected before
    the first phase, attacks in each of its phases (its start costs CPU:
    it belongs to no phase)."""
    samples, attackers = Samples(), []
    stop = asyncio.Event()
    load = asyncio.create_task(honest_load(target, samples, stop))
    proc = await _attacker_process(target)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        await asyncio.sleep(1.0)  # connections and first wallets
        for n in range(rounds):
            for mix in mixes:
                samples.enter(f"before {mix}#{n}")
                await asyncio.sleep(baseline_s)
                samples.enter(f"{mix}#{n}")
                proc.stdin.write(f"{mix} {attack_s}\n".encode())
                out = await proc.stdout.readline()
                attackers.append({"mix": mix, **json.loads(out or b"{}")})
        samples.enter("done")
    finally:
        stop.set()
        proc.stdin.close()
        await proc.wait()
        await load
    return samples, attackers


@contextlib.asynccontextmanager
async def fairness_server(url: str, workdir: Path) -> AsyncIterator[run.Server]:
    # The server's default caps and shares, but for the user mutation cap: lifted
    # (as for every bench server), so that only its fair share holds back the
    # SpendBatch attacker (at the default 10 items a second, one batch of 100
    # every 10 s). The bench's server also lifts caps of service tokens (the seed's).
    async with run.billing_server(url, workdir, BILLING_USER_MUTATION_RATE_PER_SECOND="0") as server:
        yield server


async def measure(kind: str, rounds: int, baseline_s: float, attack_s: float, transfers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with run.fresh_db(kind, work) as url, fairness_server(url, work) as server:
            await seed_attacker(server.target, transfers)
            samples, attackers = await phases(server.target, rounds=rounds, baseline_s=baseline_s, attack_s=attack_s)
    return {
        "db": kind, "ratios": samples.ratios(MIXES), "p99_ms": samples.p99_ms(),
        "failures": samples.failures[:20], "attackers": attackers,
    }


def main() -> None:
    if sys.argv[1:2] == ["attack"]:
        asyncio.run(attack(sys.argv[2], json.loads(sys.argv[3])))
        return
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if len(sys.argv) > 2:
        run.ROOT = Path(sys.argv[2]).resolve()
    rounds = int(os.environ.get("BENCH_FAIRNESS_ROUNDS", 4))
    res = asyncio.run(measure(kind, rounds, 3.0, 4.0, int(os.environ.get("BENCH_FAIRNESS_TRANSFERS", 20_000))))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()


