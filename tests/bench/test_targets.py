"""The targets of rows measured against a baseline in the same run (a key
against its plain row, priced by usage against by amount, with the events
outbox against without it): one function, each target word for word."""

from __future__ import annotations

from bench.run import pair_targets


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
