"""A Stripe webhook is refused when its signed timestamp is beyond the 300 s
tolerance in either direction: an hour in the future as an hour in the past
(Stripe's construct_event checks the past only). Within it, accepted."""

from __future__ import annotations

import copy
import time

from sqlalchemy import text

from tests.calls import FREE, credits, deliver
from tests.harness import Running
from tests.payments.test_payments import create_link, session_of
from tests.stripe_fake import StripeFake, event


async def _events(server: Running) -> int:
    assert server.app is not None
    async with server.app.db.reader.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM webhook_events"))).scalar_one())


async def test_signed_timestamps_beyond_the_tolerance_are_refused(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "tim"
    link = await create_link(server, user, 1_000)
    session = session_of(stripe_fake, link)
    await stripe_fake.pay(session["id"])
    completed = event("checkout.session.completed", copy.deepcopy(session))
    now = int(time.time())
    for offset in (3_600, 301 + 5, 10**9, -3_600, -(301 + 5)):
        assert await deliver(server, completed, t=now + offset) == 400, offset
    assert await _events(server) == 0
    assert await credits(server, user) == FREE
    # Within the tolerance, ahead of our clock as Stripe's may be: credited once.
    assert await deliver(server, completed, t=now + 240) == 200
    assert await credits(server, user) == FREE + 100_000
