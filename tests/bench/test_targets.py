"""The targets of rows measured against a baseline in the same run (a key
against its plain row, priced by usage against by amount, with the events
outbox against without it): one function, each target word for word."""

from __future__ import annotations

from bench.callgrind import totals
from bench.run import ACCOUNTS, RAW_BATCH, item_targets, pair_targets


def test_pair_targets_from_fake_rows() -> None:
    rows = [
        {"name": "Spend via key", "db": "sqlite", "rate_ratio": 0.95, "cpu_ratio": None, "rounds": 5, "vs": "Spend",
         "unit": "call"},
        {"name": "Spend priced", "db": "postgres", "priced_pairs": [{"rps": 0.8, "cpu": 1.2}, {"rps": 1.0, "cpu": None},
                                                                     {"rps": None, "cpu": 1.0}]},
        {"name": "Outbox on: Spend", "db": "sqlite", "pair_ratios": [{"rps": 0.93, "cpu": 1.04}]},
        {"name": "Spend", "db": "sqlite", "ratio_vs_echo": 0.7},  # not measured against a baseline
        {"name": "Spend priced", "db": "sqlite", "priced_pairs": []},
    ]
    assert pair_targets(rows) == [
        {"target": "Spend via key (sqlite), median of 5 interleaved rounds: >= 0.9x Spend", "value": 0.95, "ok": True},
        {"target": "Spend priced (postgres) >= 0.9x the throughput by amount (median of 2 window pairs: 0.80, 1.00)",
         "value": 0.9, "ok": True},
        {"target": "Spend priced (postgres) server CPU <= 1.1x by amount (median of 2 window pairs: 1.20, 1.00)",
         "value": 1.1, "ok": True},
        {"target": "Spend (sqlite) with the events outbox >= 0.9x throughput without it "
                   "(median of 1 shared windows: 0.93)", "value": 0.93, "ok": True},
        {"target": "Spend (sqlite) with the events outbox: server CPU per call <= 1.1x without it "
                   "(median of 1 windows: 1.04)", "value": 1.04, "ok": True},
    ]


def test_rows_counted_under_callgrind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """BENCH_CALLGRIND=1: the server work is instructions (no throughput
    target), read from a dump's totals line."""
    rows = [
        {"name": "Spend via key", "db": "sqlite", "rate_ratio": None, "cpu_ratio": 1.04, "rounds": 3, "vs": "Spend",
         "unit": "call", "measure": "callgrind instructions"},
        {"name": "Spend priced", "db": "sqlite", "measure": "callgrind instructions",
         "priced_pairs": [{"rps": None, "cpu": 1.12}, {"rps": None, "cpu": 1.08}, {"rps": None, "cpu": 1.09}]},
    ]
    assert pair_targets(rows) == [
        {"target": "Spend via key (sqlite), median of 3 interleaved rounds: server instructions per call <= 1.1x "
                   "Spend's", "value": 1.04, "ok": True},
        {"target": "Spend priced (sqlite) server instructions <= 1.1x by amount (median of 3 window pairs: "
                   "1.12, 1.08, 1.09)", "value": 1.09, "ok": True},
    ]
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 0\nfn=(1) main\n3 41\n\ntotals: 123456789\n")
    assert totals(dump) == 123456789


def test_batch_targets_judge_the_plain_rows_only() -> None:
    """"SpendBatch(100) >= 10x per-call Spend" is the plain rows' target: the
    keys' pair measures its own SpendBatch(100) and Spend rows (one window at
    a time, against the key rows), which it does not judge."""
    who = f"{ACCOUNTS} accounts"
    rows = [
        {"name": f"SpendBatch(100), {who}", "db": "sqlite", "section": "items", "items_per_s": 30_000},
        {"name": f"Spend, {who}", "db": "sqlite", "rps": 2_000},
        {"name": f"Same-schema raw driver, {RAW_BATCH} per commit, {who}", "db": "sqlite", "items_per_s": 40_000},
        {"name": f"SpendBatch(100), {who} (keys' pair)", "db": "sqlite", "section": "items", "items_per_s": 8_000,
         "pairs_with": f"SpendBatch(100) through keys, {who}"},
        {"name": f"Spend, {who} (keys' pair)", "db": "sqlite", "rps": 2_000,
         "pairs_with": f"Spend through a key with budgets, {who}"},
    ]
    assert item_targets(rows) == [
        {"target": f"SpendBatch(100), {who} (sqlite) >= 0.5x same-schema raw driver", "value": 0.75, "ok": True},
        {"target": f"SpendBatch(100), {who} (sqlite) >= 10x per-call Spend", "value": 15.0, "ok": True},
    ]
