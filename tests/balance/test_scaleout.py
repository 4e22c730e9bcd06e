"""Two replicas on one PostgreSQL: WatchBalance fan-out through LISTEN/NOTIFY
(one NOTIFY per committed batch), and no overdraft across replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, usage_pb2

from server.balance.fanout import CHANNEL, MAX_PAYLOAD, asyncpg_dsn, payloads
from server.ledger.model import BalanceEvent, TransferView
from server.platform.clock import ManualClock
from tests.calls import credits
from tests.conftest import _require_postgres
from tests.harness import WAIT, Running, auth, database, until

FREE = 100_000


@pytest.fixture
async def replicas(tmp_path, clock: ManualClock) -> AsyncIterator[tuple[Running, Running]]:  # type: ignore[no-untyped-def]
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        a = await Running(url, clock).start()
        b = await Running(url, clock).start()
        try:
            yield a, b
            await a.verify()
        finally:
            await b.stop()
            await a.stop()


async def test_spend_on_a_reaches_watcher_on_b(replicas) -> None:
    a, b = replicas
    assert a.app.fanout and b.app.fanout and a.app.fanout.replica_id != b.app.fanout.replica_id
    call = b.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth("ann"))
    it = call.__aiter__()
    snap = await asyncio.wait_for(it.__anext__(), WAIT)
    assert snap.type == balance_pb2.BALANCE_EVENT_TYPE_SNAPSHOT and snap.credits_millicredits == FREE
    await a.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_234, request_id="x1", category="c"), metadata=auth("ann"))
    ev = await asyncio.wait_for(it.__anext__(), WAIT)
    assert ev.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER
    assert ev.credits_millicredits == FREE - 1_234
    assert ev.transaction.amount_millicredits == -1_234 and ev.transaction.category == "c"
    # And the other way round, with B's own event delivered locally exactly once.
    await b.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="x2"), metadata=auth("ann"))
    ev2 = await asyncio.wait_for(it.__anext__(), WAIT)
    assert ev2.credits_millicredits == FREE - 1_235
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(it.__anext__(), 0.5)
    call.cancel()


async def test_concurrent_spends_across_replicas_never_overdraft(replicas) -> None:
    a, b = replicas
    user = "bea"
    await credits(a, user)

    async def one(r: Running, i: int) -> bool:
        try:
            await r.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=3_000, request_id=f"s{i}"), metadata=auth(user))
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            return False

    out = await asyncio.gather(*(one(a if i % 2 else b, i) for i in range(80)))
    assert sum(out) == FREE // 3_000
    assert await credits(a, user) == await credits(b, user) == FREE - sum(out) * 3_000
    # The same request_id on both replicas at once applies once.
    req = usage_pb2.SpendRequest(amount_millicredits=10, request_id="dup")
    r1, r2 = await asyncio.gather(a.s.usage.Spend(req, metadata=auth("cid")), b.s.usage.Spend(req, metadata=auth("cid")))
    assert r1 == r2
    assert await credits(b, "cid") == FREE - 10


async def test_one_notify_per_committed_batch(replicas) -> None:
    a, _b = replicas
    assert a.app.fanout is not None
    seen: list[dict] = []
    listener = await asyncpg.connect(asyncpg_dsn(a.url))
    await listener.add_listener(CHANNEL, lambda *args: seen.append(json.loads(args[3])))
    try:
        fan, writer = a.app.fanout, a.app.writer

        async def heard(since: int) -> bool:
            """Every notification this replica sent since `since` has reached the listener."""
            return sum(1 for m in seen if m["r"] == fan.replica_id) >= fan.notifications_sent - since

        users = [f"n{i}" for i in range(40)]
        notes = fan.notifications_sent
        await asyncio.gather(*(credits(a, u) for u in users))  # wallets first
        await until(lambda: heard(notes), "the wallets' notifications did not arrive")
        seen.clear()
        batches0, sent0, notes0 = writer.stats.batches, fan.batches_sent, fan.notifications_sent
        await asyncio.gather(*(
            a.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=5, request_id=f"k{i}"), metadata=auth(users[i % 40]))
            for i in range(120)
        ))
        await until(lambda: heard(notes0), "the spends' notifications did not arrive")
        mine = [m for m in seen if m["r"] == fan.replica_id]
        batches = fan.batches_sent - sent0
        assert batches <= writer.stats.batches - batches0
        assert 1 <= batches < 120, "spends were not batched"
        assert {m["b"] for m in mine} == set(range(sent0 + 1, fan.batches_sent + 1))
        assert len(mine) == fan.notifications_sent - notes0
        # Small batches fit one payload: exactly one NOTIFY each. (A batch's
        # size is the sum of its chunks: the last chunk of a big batch is small.)
        sizes: dict[int, int] = {}
        for m in mine:
            sizes[m["b"]] = sizes.get(m["b"], 0) + len(m["e"])
        assert all(m["n"] == 1 for m in mine if sizes[m["b"]] < 20)
        assert sum(len(m["e"]) for m in mine) == 120
    finally:
        await listener.close()


def test_payloads_stay_under_the_limit() -> None:
    t = TransferView(1, "spend", -5, 10, "x" * 400, "c", "", 1, {"k": "v" * 50})
    events = [BalanceEvent(f"user-{i}", "transfer", 10, 0, t) for i in range(100)]
    out = payloads("r1", 7, events)
    assert len(out) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD for p in out)
    decoded = [json.loads(p) for p in out]
    assert [d["c"] for d in decoded] == list(range(len(out))) and {d["n"] for d in decoded} == {len(out)}
    assert sum(len(d["e"]) for d in decoded) == 100
    assert len(payloads("r1", 8, events[:3])) == 1
