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
the bound is measured again, up to three times, before the test fails. On the code before
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
# A mix over the bound is measured again, up to this many measures in all.
MEASURES = 3
TRANSFERS = 3_000  # the attacker's own, three times the 1,000 rows a page may examine


async def _measure(target: str, mixes: tuple[str, ...], rounds: int, seconds: float) -> tuple[dict[str, Any], Any]:
    samples, attackers = await fairness.phases(
        target, mixes=mixes, rounds=rounds, baseline_s=seconds, attack_s=seconds)
    assert not samples.failures, samples.failures[:5]
    return samples.ratios(mixes), (samples.p99_ms(), attackers)


def _rounded(ratios: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {m: {c: round(v, 2) for c, v in r.items()} for m, r in ratios.items()}


async def _fair(db_url: str, tmp_path: Path, rounds: int, seconds: float, mixes: tuple[str, ...]) -> str | None:
    """What went over the bound, if anything."""
    began = time.monotonic()
    async with fairness.fairness_server(db_url, tmp_path) as server:
        await fairness.seed_attacker(server.target, TRANSFERS)
        seeded = time.monotonic()
        ratios, detail = await _measure(server.target, mixes, rounds, seconds)
        measures = [_rounded(ratios)]
        for _ in range(MEASURES - 1):
            # A burst of load from elsewhere on the machine, or a real
            # regression: the mixes over the bound are measured again (a
            # regression stays over it: without fair shares, 100 loops of
            # CheckBalance measured 15x and 33x, SpendBatch(1,000) 3.5x and 7.4x).
            over = tuple(m for m, r in ratios.items() if max(r.values()) > BOUND)
            if not over:
                break
            again, detail = await _measure(server.target, over, rounds, seconds)
            ratios.update(again)
            measures.append(_rounded(again))
        # Shown by -rP (make soak): every measure's ratios.
        print(f"{db_url.split(':')[0]}: honest p99 ratios by measure {measures}; "
              f"seed {seeded - began:.0f} s, phases {time.monotonic() - seeded:.0f} s; "
              f"attacker calls by phase: {[(a['mix'], a.get('ok', 0)) for a in detail[1]]}")
    # The attacker's rows and the honest ones went through the ledger: the books balance.
    db = Database(db_url)
    try:
        report = await verify(db.reader)
    finally:
        await db.dispose()
    assert report.ok, report.render()
    if any(max(r.values()) > BOUND for r in ratios.values()):
        return f"{db_url.split(':')[0]}: honest p99 ratios over {BOUND}x: {_rounded(ratios)}; p99 ms by phase: {detail[0]}"
    return None


# Both databases in one test, one after the other: as two tests, the two
# workers of `make test` could run them side by side, and each would
# measure the other's attacker.
async def test_one_caller_at_its_caps_moves_no_honest_p99_past_2x(tmp_path: Path) -> None:
    await _require_postgres()
    over = []
    for kind in ("sqlite", "postgres"):  # both measured, whatever the first gives
        async with database(kind, tmp_path) as url:
            over.append(await _fair(url, tmp_path, rounds=5, seconds=1.2, mixes=fairness.MIXES))
    if any(over):
        pytest.fail("\n".join(o for o in over if o))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BILLING_SOAK"), reason="make soak")
async def test_one_caller_at_its_caps_soak(db_url: str, tmp_path: Path) -> None:
    over = await _fair(db_url, tmp_path, rounds=int(os.environ.get("BILLING_FAIRNESS_ROUNDS", 6)), seconds=4.0,
                       mixes=fairness.MIXES)
    if over:
        pytest.fail(over)
