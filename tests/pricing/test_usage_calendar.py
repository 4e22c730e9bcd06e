"""A price change at a UTC month edge: a version effective at the first
instant of February prices the spends from that instant on, and January's
last microsecond keeps the old price. Run under faketime too (`make
test-calendar`): nothing here depends on the day the suite runs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.platform.clock import to_us
from tests.calls import utc
from tests.harness import Running
from tests.ledger.test_calendar import EDGES
from tests.pricing.test_usage_prices_change import SMALL
from tests.pricing.usage_calls import capture_quantity, publish, reserve_usage, spend_usage, used

FEB_1 = utc(2027, 2, 1)


@pytest.mark.parametrize(("offset", "past"), EDGES)
async def test_price_change_at_the_month_edge(server: Running, offset: timedelta, past: bool) -> None:
    server.clock.set(FEB_1 - timedelta(seconds=30))
    hold = await reserve_usage(server, "edge", used("sandbox.seconds", 10, size="small"), "h")
    assert await publish(server, 3, to_us(FEB_1), "feb") == 2
    server.clock.set(FEB_1 + offset)
    r = await spend_usage(server, "edge", SMALL, "s")
    u = r.transaction.usage
    assert u.priced_at.ToMicroseconds() == to_us(FEB_1 + offset) == r.transaction.date.ToMicroseconds()
    assert (u.rate_card_version, u.amount_millicredits) == ((2, 300) if past else (1, 100))
    # January's hold is captured in February at January's price.
    server.clock.set(FEB_1 + timedelta(hours=1))
    done = await capture_quantity(server, hold.hold.id, 10, "c")
    assert (done.transaction.usage.rate_card_version, done.transaction.amount_millicredits) == (1, -10)
