"""Daily spend by category as a stacked bar chart, laid out on the server:
the template draws these shapes as SVG, and a table says the same in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

DAY_US = 86_400_000_000
# Okabe-Ito: told apart by people with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D1F", "#3D3D3D")
WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 56, 48, 14, 34  # y labels on both sides (a phone scrolls to the right end)


@dataclass
class Bar:
    x: float
    y: float
    w: float
    h: float
    color: str
    title: str


@dataclass
class Tick:
    pos: float
    label: str


@dataclass
class Series:
    category: str
    color: str
    total: int
    operations: int


@dataclass
class DayRow:
    date: str
    total: int
    by_category: list[int]


@dataclass
class Chart:
    days: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom_y: int = HEIGHT - BOTTOM
    right_x: int = WIDTH - RIGHT
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    rows: list[DayRow] = field(default_factory=list)  # days with spending, newest first
    total: int = 0


def credits_label(millicredits: int) -> str:
    whole, frac = divmod(abs(millicredits), 1000)
    sign = "-" if millicredits < 0 else ""
    return f"{sign}{whole:,}" + (f".{frac:03d}".rstrip("0") if frac else "")


def per_unit_label(millicredits: int, units: int) -> str:
    """An average price per unit in credits, to the microcredit, rounded down
    (integers only: a second of a small sandbox is 0.001 credits)."""
    if units <= 0:
        return "0"
    whole, frac = divmod(millicredits * 1000 // units, 1_000_000)
    return f"{whole:,}" + (f".{frac:06d}".rstrip("0") if frac else "")


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5, 5 x 10^n credits (in millicredits) at or above value."""
    step = 1000
    while True:
        for m in (1, 2, 5, 10):
            if value <= step * m * 4:
                return step * m * 4
        step *= 10


def _date(start_us: int, day: int) -> datetime:
    return datetime.fromtimestamp((start_us + day * DAY_US) / 1_000_000, UTC)


def daily_chart(start_us: int, days: int, rows: list[tuple[int, str, int, int]]) -> Chart:
    """rows: (day index from start, category, millicredits, operations)."""
    totals: dict[str, list[int]] = {}
    for _, cat, amount, n in rows:
        t = totals.setdefault(cat, [0, 0])
        t[0] += amount
        t[1] += n
    cats = sorted(totals, key=lambda c: (-totals[c][0], c))
    colors = {c: PALETTE[min(i, len(PALETTE) - 1)] for i, c in enumerate(cats)}
    chart = Chart(days=days)
    chart.series = [Series(c, colors[c], totals[c][0], totals[c][1]) for c in cats]
    per_day: dict[int, dict[str, int]] = {}
    for day, cat, amount, _ in rows:
        per_day.setdefault(day, {})[cat] = per_day.get(day, {}).get(cat, 0) + amount
    peak = max((sum(v.values()) for v in per_day.values()), default=0)
    top = _nice_ceiling(max(peak, 1))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / days
    for day in sorted(per_day):
        y = float(HEIGHT - BOTTOM)
        label = _date(start_us, day).strftime("%b %-d")
        for cat in cats:
            amount = per_day[day].get(cat, 0)
            if amount <= 0:
                continue
            h = amount / top * plot_h
            y -= h
            chart.bars.append(Bar(round(LEFT + day * slot + slot * 0.12, 2), round(y, 2),
                                  round(slot * 0.76, 2), round(max(h, 0.5), 2), colors[cat],
                                  f"{label}: {cat} {credits_label(amount)} credits"))
    chart.y_ticks = [Tick(round(HEIGHT - BOTTOM - plot_h * i / 4, 2), credits_label(top * i // 4)) for i in range(5)]
    every = 7 if days <= 31 else 14
    chart.x_ticks = [Tick(round(LEFT + (d + 0.5) * slot, 2), _date(start_us, d).strftime("%b %-d"))
                     for d in range(days - 1, -1, -every)]
    chart.rows = [DayRow(_date(start_us, d).strftime("%Y-%m-%d"), sum(per_day[d].values()),
                         [per_day[d].get(c, 0) for c in cats]) for d in sorted(per_day, reverse=True)]
    chart.total = sum(s.total for s in chart.series)
    return chart
