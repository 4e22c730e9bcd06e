"""WatchBalance: a snapshot, then one event per change; slow readers never
block writers."""

from __future__ import annotations

import asyncio
import time

from flownexus.billing.v1 import balance_pb2, common_pb2, earnings_pb2, usage_pb2

from tests.harness import WAIT, auth


async def test_snapshot_then_events_in_order(server) -> None:
    call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth("alice"))
    snap = await asyncio.wait_for(call.read(), WAIT)
    assert snap.type == balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT
    assert snap.credits_millicredits == 100_000

    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="s"), metadata=auth("alice"))
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id="alice", amount_millicredits=5_000, source=common_pb2.EARNING_SOURCE_CHALLENGE,
            source_ref="c1", request_id="a",
        ),
        metadata=auth("challenges", "service"),
    )
    hold = await server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=2_000, request_id="h"), metadata=auth("alice"))
    await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold.hold.id, request_id="rel"), metadata=auth("alice"))

    events = [await asyncio.wait_for(call.read(), WAIT) for _ in range(4)]
    assert [e.type for e in events] == [balance_pb2.BALANCE_EVENT_TYPE_TRANSFER] * 4
    assert [e.transaction.type for e in events] == [
        common_pb2.TRANSACTION_TYPE_SPEND,
        common_pb2.TRANSACTION_TYPE_AWARD,
        common_pb2.TRANSACTION_TYPE_HOLD,
        common_pb2.TRANSACTION_TYPE_HOLD_RELEASE,
    ]
    assert [e.credits_millicredits for e in events] == [99_000, 104_000, 102_000, 104_000]
    assert events[2].pending_millicredits == 2_000 and events[3].pending_millicredits == 0
    call.cancel()


async def test_events_of_other_users_are_not_delivered(server) -> None:
    call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth("alice"))
    await asyncio.wait_for(call.read(), WAIT)
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="s"), metadata=auth("bob"))
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=2, request_id="s"), metadata=auth("alice"))
    event = await asyncio.wait_for(call.read(), WAIT)
    assert event.transaction.amount_millicredits == -2
    call.cancel()


async def test_a_subscriber_that_never_reads_does_not_slow_spend(server) -> None:
    async def spend_many(prefix: str) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(
            server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id=f"{prefix}{i}"), metadata=auth("carol"))
            for i in range(300)
        ))
        return time.perf_counter() - started

    await spend_many("warm")
    baseline = await spend_many("a")
    # Open watchers and never read from them.
    stuck = [server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth("carol")) for _ in range(20)]
    await asyncio.sleep(0.2)
    # Writers never wait on a subscriber: with 20 that never read, the Spends
    # are all answered (a writer waiting on them would hang here), and every
    # server-side queue stayed bounded.
    with_stuck = await asyncio.wait_for(spend_many("b"), WAIT)
    subs = [s for group in server.app.hub._subs.values() for s in group]
    assert len(subs) >= 20 and all(s.queue.qsize() <= s.queue.maxsize for s in subs)
    # A loose time bound on top, for a slowdown short of a hang.
    assert with_stuck < baseline * 10 + 5.0, (
        f"300 Spends took {with_stuck:.2f} s beside 20 stuck watchers, {baseline:.2f} s without: "
        f"over the bound of 10 x that + 5 s"
    )
    # However far behind, a reader that wakes up converges on the true balance.
    expected = 100_000 - 900 * 10
    for _ in range(2_000):
        msg = await asyncio.wait_for(stuck[0].read(), WAIT)
        assert msg.type in (balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT, balance_pb2.BALANCE_EVENT_TYPE_TRANSFER)
        if msg.credits_millicredits == expected:
            break
    else:
        raise AssertionError("reader never caught up")
    for c in stuck:
        c.cancel()


def test_a_full_queue_coalesces_into_one_resync() -> None:
    from server.balance.watch import RESYNC, Subscription
    from server.ledger.model import BalanceEvent

    sub = Subscription("u", maxsize=4)
    for i in range(10):
        sub.offer(BalanceEvent(user_id="u", kind="transfer", credits=i))
    items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    # The backlog was replaced by one resync marker, then newer events follow.
    assert items[0] is RESYNC and sub.coalesced >= 1
    assert [e.credits for e in items[1:]] == list(range(10 - len(items) + 1, 10))
