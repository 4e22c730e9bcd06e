"""Time source. Tests inject a ManualClock to cross month boundaries and expiries."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# The instants a datetime (and a protobuf Timestamp) can hold: years 1 to 9999.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999


class Clock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class ManualClock(Clock):
    def __init__(self, start_us: int | None = None) -> None:
        self._now = start_us if start_us is not None else time.time_ns() // 1000

    def now_us(self) -> int:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = to_us(when)

    def set_us(self, now_us: int) -> None:
        self._now = now_us

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1_000_000)


def to_us(when: datetime) -> int:
    # Exact integer math: float timestamps can be a microsecond off. Naive means UTC.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def month_bounds(now_us: int) -> tuple[int, int]:
    """[start, end) of the calendar month (UTC) that holds now_us."""
    d = from_us(now_us)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return to_us(start), to_us(end)


HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000


def window_bounds(window: str, at_us: int) -> tuple[int, int]:
    """[start, end) of the UTC budget window ("hour", "day", "month" or
    "lifetime") holding the instant; end 0: never (lifetime)."""
    if window == "hour":
        start = at_us - at_us % HOUR_US
        return start, start + HOUR_US
    if window == "day":
        start = at_us - at_us % DAY_US
        return start, start + DAY_US
    if window == "month":
        return month_bounds(at_us)
    return 0, 0
