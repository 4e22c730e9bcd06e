"""Each caller's share of the server (server/platform/fairshare.py,
docs/fairness.md): calls past a caller's share wait in its own queue, the
heaviest caller is the first refused when too many wait, service tokens keep
a larger share, and measured work costs more of it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from flownexus.billing.v1 import balance_pb2
from google.rpc import error_details_pb2, status_pb2

from server.platform.auth import Principal, Role
from server.platform.config import Settings
from server.platform.fairshare import MIN_CALLS_PER_CALLER, WORK_PER_CALL, FairShare
from tests.harness import auth, error_info, serving


def _retry_delay_ms(exc: grpc.aio.AioRpcError) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    r = error_details_pb2.RetryInfo()
                    d.Unpack(r)
                    return r.retry_delay.seconds * 1000 + r.retry_delay.nanos // 1_000_000
    return None


async def test_the_heaviest_caller_is_refused_first_and_the_others_wait_their_turn(db_url: str, clock: Any) -> None:
    async with serving(db_url, clock, fair_calls_per_second=20, fair_max_waiting=10) as server:
        async def check(user: str) -> str:
            try:
                await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(user))
            except grpc.aio.AioRpcError as exc:
                info = error_info(exc)
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert info.reason == "SERVER_BUSY" and (_retry_delay_ms(exc) or 0) > 0, info
                return "busy"
            return "ok"

        heavy = [asyncio.create_task(check("heavy")) for _ in range(40)]
        await asyncio.sleep(0.05)  # the heavy caller's calls are in, most of them waiting
        light = await asyncio.gather(*(check("light") for _ in range(3)))
        done = await asyncio.gather(*heavy)
        assert light == ["ok"] * 3
        assert done.count("busy") >= 40 - 10 - 4, done  # at most 10 wait; a few ran at once
        assert "ok" in done


async def test_a_service_token_keeps_a_larger_share() -> None:
    now = [0.0]
    fair = FairShare(10, 1, 8, 100, now=lambda: now[0])
    user, service = Principal("u", Role.USER), Principal("svc", Role.SERVICE)
    admitted = {"u": 0, "svc": 0}
    turns = {}
    # Both want calls all the time, for 20 s: each begins one whenever its share allows.
    while now[0] < 20:
        for who in (user, service):
            t = fair._callers.get(who.scope)
            if t is None or fair._may_run(t, now[0]):
                turns[who.subject], waiting = fair.take(who)
                assert waiting is None
                admitted[who.subject] += 1
                fair.leave(turns[who.subject], 0)
        now[0] += 0.001
    # 10 calls a second between them, 8 to 1.
    assert 7 <= admitted["svc"] / admitted["u"] <= 9, admitted
    assert 190 <= admitted["svc"] + admitted["u"] <= 210, admitted


async def test_a_call_that_examined_many_rows_costs_more_calls_of_the_share() -> None:
    now = [0.0]
    fair = FairShare(100, 1, 8, 100, now=lambda: now[0])
    cheap, dear = Principal("cheap", Role.USER), Principal("dear", Role.USER)
    tc, _ = fair.take(cheap)
    td, _ = fair.take(dear)
    fair.leave(tc, 1)
    fair.leave(td, 10 * WORK_PER_CALL)
    # Alone, one call's worth was 1/100 s; with two active, 2/100 s, and
    # 1,000 rows examined cost ten more of them.
    assert round(tc.ready_at, 6) == 0.01
    assert round(td.ready_at, 6) == round(0.02 * 11, 6)


def test_service_calls_are_not_paced_by_default() -> None:
    """The platform's services carry every user's traffic: with the default
    weight of 0 they never wait for a share; a user token always does."""
    default = Settings().service_fair_weight
    fair = FairShare(10, 1, default, 100)
    assert fair.exempt(Principal("svc", Role.SERVICE)) and fair.exempt(Principal("ops", Role.ADMIN))
    assert not fair.exempt(Principal("u", Role.USER))
    assert not FairShare(10, 1, 8, 100).exempt(Principal("svc", Role.SERVICE))


async def test_the_shares_shrink_while_the_loop_lags_and_callers_share_it() -> None:
    """The nominal capacity is a ceiling: while the event loop lags past its
    target with several callers active, the capacity the shares divide is
    halved each window, never below MIN_CALLS_PER_CALLER per caller; a caller
    alone keeps the ceiling; without lag it grows back by a tenth a window."""
    now = [0.0]
    fair = FairShare(10_000, 1, 0, 100, now=lambda: now[0], lag_target=0.002)
    alone, _ = fair.take(Principal("alone", Role.USER))
    fair._adjust(lagging=True)
    assert fair.capacity == 10_000  # no one else to protect
    heavy, _ = fair.take(Principal("heavy", Role.USER))
    fair._adjust(lagging=True)
    assert fair.capacity == 5_000
    assert fair._interval(heavy) == 2 / 5_000  # two callers active
    for _ in range(20):
        fair._adjust(lagging=True)
    assert fair.capacity == MIN_CALLS_PER_CALLER * 2
    fair._adjust(lagging=False)
    assert fair.capacity == MIN_CALLS_PER_CALLER * 2 * 1.1
    for _ in range(100):
        fair._adjust(lagging=False)
    assert fair.capacity == 10_000
    fair.leave(alone, 0)
    fair.leave(heavy, 0)
    if fair._lag_timer is not None:
        fair._lag_timer.cancel()


async def test_a_reads_round_trips_to_postgresql_cost_more_calls_of_the_share(db_url: str, clock: Any) -> None:
    """Each read of a call that goes to PostgreSQL and back costs its caller
    one call's worth more (a round trip costs the event loop more than the
    call around it); on SQLite a one-row read is inline and costs nothing
    more. A caller alone has the whole capacity: one call's worth is 1/100 s."""
    async with serving(db_url, clock, fair_calls_per_second=100) as server:
        await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("reader"))
        assert server.app is not None and server.app.fair is not None
        t = server.app.fair._callers[Principal("reader", Role.USER).scope]
        # Admitted at `last` with one call's worth; what the call did is added as it leaves.
        charged = round((t.ready_at - t.last) * 100, 6)
        if db_url.startswith("postgresql"):
            assert charged >= 2, charged  # the call's own worth, and one per round trip
        else:
            assert charged == 1, charged
