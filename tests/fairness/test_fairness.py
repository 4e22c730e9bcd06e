"""One caller at its caps moves no honest caller's p99 by more than 2x
(docs/fairness.md): 16 users Spend every 125 ms and 4 read CheckBalance every
200 ms throughout, while one user token, in a process of its own, runs each
attack mix of bench/fairness.py in turn with phases without it, on a server
with the default settings. Each honest call's p99 under a mix is compared
with its p99 without the attacker, in the same run.

A load test, not a timed one: only ratios within one run are compared. The
machine is small and shared (in `make test` another test runs beside this
one), so the quiet phases and the attack phases alternate, short, many
times; samples of a phase's first moments are left out; a ratio is the
median of the mix's phases' p99 over the median of every quiet phase's p99
(a burst of load from elsewhere spoils a phase, not a median); and a mix over
the bound is measured once more before the test fails. On the code before
fair shares, CheckBalance under 100 loops of CheckBalance was 23x; before the
writer's short batches and the paced SpendBatch parts, honest Spend under
the SpendBatch(1,000) flood was 5-11x; before the filtered history probe ran
inline, the filtered history loops on SQLite were 2.3-9.9x.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import fairness
from server.db.engine import Database
from server.ledger.verify import verify
from tests.conftest import _require_postgres
from tests.harness import database

BOUND = 2.0
TRANSFERS = 3_000  # the attacker's own, three times the 1,000 rows a page may examine


async def _measure(target: str, mixes: tuple[str, ...], rounds: int, seconds: float) -> tuple[dict[str, Any], Any]:
    samples, attackers = await fairness.phases(
        target, mixes=mixes, rounds=rounds, baseline_s=seconds, attack_s=seconds)
    assert not samples.failures, samples.failures[:5]
    return samples.ratios(mixes), (samples.p99_ms(), attackers)


async def _fair(db_url: str, tmp_path: Path, rounds: int, seconds: float, mixes: tuple[str, ...]) -> None:
    began = time.monotonic()
    async with fairness.fairness_server(db_url, tmp_path) as server:
        await fairness.seed_attacker(server.target, TRANSFERS)
        seeded = time.monotonic()
        ratios, detail = await _measure(server.target, mixes, rounds, seconds)
        over = tuple(m for m, r in ratios.items() if max(r.values()) > BOUND)
        first = {m: {c: round(v, 2) for c, v in r.items()} for m, r in ratios.items()}
        if over:  # a burst from elsewhere on the machine, or a real regression: once more
            again, detail = await _measure(server.target, over, rounds, seconds)
            ratios.update(again)
        rounded = {m: {c: round(v, 2) for c, v in r.items()} for m, r in ratios.items()}
        # Shown by -rP (make soak): every ratio, the first measure's too.
        print(f"{db_url.split(':')[0]}: honest p99 ratios {rounded}; first measure {first}; "
              f"seed {seeded - began:.0f} s, phases {time.monotonic() - seeded:.0f} s; "
              f"attacker calls by phase: {[(a['mix'], a.get('ok', 0)) for a in detail[1]]}")
        if any(max(r.values()) > BOUND for r in ratios.values()):
            pytest.fail(f"honest p99 ratios over {BOUND}x: {rounded}; p99 ms by phase: {detail[0]}")
    # The attacker's rows and the honest ones went through the ledger: the books balance.
    db = Database(db_url)
    try:
        report = await verify(db.reader)
    finally:
        await db.dispose()
    assert report.ok, report.render()


# Both databases in one test, one after the other: as two tests, the two
# workers of `make test` could run them side by side, and each would
# measure the other's attacker.
async def test_one_caller_at_its_caps_moves_no_honest_p99_past_2x(tmp_path: Path) -> None:
    await _require_postgres()
    for kind in ("sqlite", "postgres"):
        async with database(kind, tmp_path) as url:
            await _fair(url, tmp_path, rounds=5, seconds=1.2, mixes=fairness.MIXES)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BILLING_SOAK"), reason="make soak")
async def test_one_caller_at_its_caps_soak(db_url: str, tmp_path: Path) -> None:
    await _fair(db_url, tmp_path, rounds=int(os.environ.get("BILLING_FAIRNESS_ROUNDS", 6)), seconds=4.0,
                mixes=fairness.MIXES)
