"""The client's UsageRecorder against the real server: single spends coalesced
into SpendBatch calls at N items or T ms, each spend answered on its own,
back-pressure while the server is slow, flush on close, the sync wrapper, and
a server killed (SIGKILL) mid-flight and restarted: nothing lost, nothing
counted twice."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest
from flownexus.billing.v1 import usage_pb2
from flownexus_billing_client import (
    BillingClient,
    InsufficientCredits,
    InvalidAmount,
    PermissionDenied,
    SyncUsageRecorder,
    UsageRecorder,
)

from server.ledger import keys
from tests.calls import FREE, credits
from tests.conftest import _require_postgres
from tests.harness import WAIT, Running, database, token
from tests.ledger.test_crash import Server, ledger_keys, verified

SERVICE = "recorder"


def target(server: Running) -> str:
    assert server.app is not None
    return server.target


def spend(user: str, amount: int, rid: str = "", **fields: str) -> usage_pb2.SpendRequest:
    return usage_pb2.SpendRequest(user_id=user, amount_millicredits=amount, request_id=rid, category="rec", **fields)


async def test_spends_are_coalesced_and_each_gets_its_own_answer(server: Running) -> None:
    async with BillingClient(target(server), token(SERVICE, "service")) as billing:
        # An interval far past any wait here: whatever is sent was sent by a full batch or by close().
        recorder = UsageRecorder(billing, max_batch=10, flush_interval_ms=3_600_000)
        pending = [await recorder.spend(spend(f"u{i % 4}", 100 + i, f"s{i}")) for i in range(30)]
        short = await recorder.spend(spend("u0", FREE * 2, "short"))
        bad = await recorder.spend(spend("u1", 0, "bad"))
        await asyncio.wait_for(asyncio.gather(*pending), WAIT)  # three full batches, not the timer
        assert recorder.stats.batch_sizes[:3] == [10, 10, 10]
        await asyncio.wait_for(recorder.close(), WAIT)  # flushes the last two at once, not after the hour's interval
        assert recorder.stats.batch_sizes == [10, 10, 10, 2]
    results = [p.result() for p in pending]
    assert len({r.transaction.id for r in results}) == 30
    with pytest.raises(InsufficientCredits) as short_exc:
        short.result()
    assert short_exc.value.shortfall_millicredits > 0
    with pytest.raises(InvalidAmount):
        bad.result()
    for u in range(4):
        assert await credits(server, f"u{u}") == FREE - sum(100 + i for i in range(30) if i % 4 == u)


async def test_a_lone_spend_is_sent_after_the_interval(server: Running) -> None:
    async with BillingClient(target(server), token("solo")) as billing, UsageRecorder(
        billing, max_batch=1000, flush_interval_ms=30
    ) as recorder:
        began = time.monotonic()
        pending = await recorder.spend(spend("", 5))  # a user token: its own wallet
        # Sent by the interval alone (the batch is far from full): an answer
        # at all within the wait is the proof; no wall-clock upper bound.
        r = await asyncio.wait_for(pending, WAIT)
        assert time.monotonic() - began >= 0.03
        assert r.credits_millicredits == FREE - 5 and pending is not None
        other = await recorder.spend(spend("someone-else", 5))
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(other, WAIT)
    assert recorder.stats.batch_sizes == [1, 1]


async def test_the_same_request_id_twice_goes_in_two_batches_and_applies_once(server: Running) -> None:
    async with BillingClient(target(server), token(SERVICE, "service")) as billing, UsageRecorder(
        billing, max_batch=10, flush_interval_ms=5
    ) as recorder:
        a = await recorder.spend(spend("dup", 700, "same"))
        b = await recorder.spend(spend("dup", 700, "same"))
        ra, rb = await asyncio.wait_for(asyncio.gather(a, b), WAIT)
    assert ra == rb
    assert recorder.stats.batch_sizes == [1, 1]
    assert await credits(server, "dup") == FREE - 700


async def test_back_pressure_while_the_server_is_slow(sqlite_server: Running) -> None:
    """The server's writer is held up by a lock on the SQLite file: one batch in
    flight, the queue fills, and the next spend() waits until the server answers."""
    server = sqlite_server
    await credits(server, "slow")  # the wallet exists before the database is locked
    path = server.settings.database_url.split("///", 1)[1]
    lock = sqlite3.connect(path, isolation_level=None)
    async with BillingClient(target(server), token(SERVICE, "service")) as billing:
        recorder = UsageRecorder(billing, max_batch=5, max_queue=5, max_in_flight=1, flush_interval_ms=1)
        lock.execute("BEGIN IMMEDIATE")
        try:
            first = [await recorder.spend(spend("slow", 1, f"a{i}")) for i in range(5)]
            await asyncio.sleep(0.2)  # sent: the one batch in flight waits for the lock
            queued = [await recorder.spend(spend("slow", 1, f"b{i}")) for i in range(5)]
            blocked = asyncio.create_task(recorder.spend(spend("slow", 1, "c0")))
            await asyncio.sleep(0.5)
            assert not blocked.done(), "spend() did not wait for room in the queue"
            assert not any(f.done() for f in first + queued)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        last = await asyncio.wait_for(blocked, WAIT)
        await recorder.close()
        assert all(f.done() and f.exception() is None for f in [*first, *queued, last])
    assert await credits(server, "slow") == FREE - 11


async def test_sync_wrapper(server: Running) -> None:
    def produce() -> list[usage_pb2.SpendResponse]:
        with SyncUsageRecorder(target(server), token(SERVICE, "service"), max_batch=50, flush_interval_ms=20) as rec:
            futures = [rec.spend(spend("sync", 10, f"y{i}")) for i in range(120)]
            short = rec.spend(spend("sync", FREE, "y-short"))
        try:
            short.result(5)
        except InsufficientCredits:
            pass
        else:
            raise AssertionError("the short spend succeeded")
        return [f.result(0) for f in futures]  # close() flushed: all done

    results = await asyncio.to_thread(produce)
    assert len({r.transaction.id for r in results}) == 120
    assert await credits(server, "sync") == FREE - 1_200


# ---- a real server process killed mid-flight --------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_server_killed_mid_flight_loses_nothing_and_counts_nothing_twice(tmp_path: Path, kind: str) -> None:
    if kind == "postgres":
        await _require_postgres()
    users = [f"k{i}" for i in range(5)]
    rng = random.Random(5)
    sent: dict[str, tuple[str, int]] = {}  # request_id -> (user, amount)
    answers: dict[str, asyncio.Future[usage_pb2.SpendResponse]] = {}
    async with database(kind, tmp_path) as url:
        server = Server(url, tmp_path)
        await server.start()
        billing = BillingClient(f"127.0.0.1:{server.grpc_port}", token(SERVICE, "service"), backoff_seconds=0.05)
        # The recorder retries for longer than both restarts can take (each start
        # waits up to WAIT for health): it failed at load 17 with the 60 s default.
        recorder = UsageRecorder(
            billing, max_batch=50, flush_interval_ms=10, max_in_flight=2, max_queue=500, retry_max_backoff_seconds=0.2,
            retry_timeout_seconds=3 * WAIT,
        )
        stop = asyncio.Event()

        async def producer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                rid = f"p{n}-{i}"
                sent[rid] = (rng.choice(users), rng.randint(1, 9))
                answers[rid] = await recorder.spend(spend(sent[rid][0], sent[rid][1], rid))
                await asyncio.sleep(0)

        producers = [asyncio.create_task(producer(n)) for n in range(8)]
        try:
            for _ in range(2 if kind == "sqlite" else 1):
                await asyncio.sleep(0.4)
                while not recorder._sending:  # noqa: ASYNC110 - a batch is on its way: kill the server under it
                    await asyncio.sleep(0.001)
                server.kill()
                await asyncio.sleep(0.5)  # producers go on queueing until the queue is full
                await server.start()
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*producers)
            await asyncio.wait_for(recorder.close(), 4 * WAIT)
            # Nothing lost: every spend was answered, with success.
            assert all(f.done() for f in answers.values())
            failed = {rid: f.exception() for rid, f in answers.items() if f.exception() is not None}
            assert not failed, list(failed.items())[:5]
            assert recorder.stats.retries >= 1, recorder.stats
            # Nothing counted twice: one transfer per request_id, the one acknowledged.
            tkeys = {keys.request_transfer(keys.idempotency("service", SERVICE, "Spend", rid)): rid for rid in sent}
            found = await ledger_keys(url, list(tkeys))
            for k, rid in tkeys.items():
                assert found[k] == [str(answers[rid].result().transaction.id)], (rid, found[k])
            balances = {u: FREE for u in users}
            for user, amount in sent.values():
                balances[user] -= amount
            for u in users:
                last = max(
                    (answers[rid].result() for rid, (user, _) in sent.items() if user == u),
                    key=lambda r: int(r.transaction.id),
                )
                assert last.credits_millicredits == balances[u], u
            await verified(await server.verify())
        finally:
            stop.set()
            for t in producers:
                t.cancel()
            await billing.close()
            server.stop()
    print(f"\nrecorder crash[{kind}]: {len(sent)} spends, {recorder.stats.batches} batches, {recorder.stats.retries} retries")
