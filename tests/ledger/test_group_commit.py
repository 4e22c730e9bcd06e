"""The batched write path: operations sharing one transaction succeed or fail
on their own, and everything acknowledged survives a restart."""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from flownexus.billing.v1 import usage_pb2

from server.db.batchsql import BatchSql, joined_text
from server.db.schema import idempotency, key_usage
from server.keys.repository import COUNTER_COLUMNS, USAGE_COLUMNS
from server.ledger.ops import Call, Idempotency, Op, Spend
from server.ledger.writer import LedgerWriter
from server.platform import errors
from server.platform.auth import Principal, Role, current_principal
from server.platform.deadline import call_deadline
from tests.calls import credits
from tests.conftest import _require_postgres
from tests.harness import ManualClock, Running, auth, database, serving

FREE = 100_000


def spend(user: str, amount: int, rid: str) -> Spend:
    return Spend(user_id=user, amount=amount, category="test", idempotency=Idempotency.of("user", user, "Spend", rid, f"fp-{amount}"))


async def test_one_batch_refusals_do_not_fail_neighbours(server) -> None:
    writer = server.app.writer
    await credits(server, "gc")  # wallet with the free allowance
    await writer.submit(spend("gc", 1_000, "orig"))
    before = writer.stats.batches
    ops = []
    for i in range(30):
        ops.append(("ok", spend("gc", 1_000, f"ok-{i}")))
        ops.append(("short", spend("gc", 500_000, f"big-{i}")))  # INSUFFICIENT_CREDITS
        ops.append(("reused", spend("gc", 7, "orig")))  # same request_id, other parameters
        ops.append(("replay", spend("gc", 1_000, "orig")))  # same request_id and parameters
    # Queued in one loop turn by one caller with no one else about (the
    # funding call above was another caller: forget it), so the writer takes
    # them as one batch.
    writer._seen.clear()
    results = await asyncio.gather(*(writer.submit(op) for _, op in ops), return_exceptions=True)
    assert writer.stats.batches - before == 1, "expected a single batch"
    assert max(writer.stats.batch_sizes) >= len(ops)
    first = None
    for (kind, _), res in zip(ops, results, strict=True):
        if kind == "ok":
            assert not isinstance(res, BaseException), res
        elif kind == "short":
            assert isinstance(res, errors.InsufficientCredits), res
        elif kind == "reused":
            assert isinstance(res, errors.RequestIdReused), res
        else:
            assert not isinstance(res, BaseException), res
            first = first or res
            assert res == first
    assert await credits(server, "gc") == FREE - 31 * 1_000
    # Nothing of the refused operations leaked into the ledger; the audit runs at teardown.
    await server.restart()
    assert await credits(server, "gc") == FREE - 31 * 1_000
    again = await server.submit(spend("gc", 1_000, "ok-7"))  # a replay after the restart
    assert again == results[7 * 4]
    assert await credits(server, "gc") == FREE - 31 * 1_000


async def test_concurrent_grpc_spends_batch_and_never_overdraft(server) -> None:
    user = "gc2"
    await credits(server, user)
    md = auth(user)

    async def one(i: int) -> str:
        amount = 3_000 if i % 3 else 150_000  # every third one can never fit
        try:
            await server.s.usage.Spend(
                usage_pb2.SpendRequest(amount_millicredits=amount, request_id=f"r{i}", category="t"), metadata=md
            )
            return "ok"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            return "refused"

    out = await asyncio.gather(*(one(i) for i in range(90)))
    ok = out.count("ok")
    assert ok == FREE // 3_000  # 33 fit, the rest are refused alone
    assert await credits(server, user) == FREE - ok * 3_000
    assert max(server.writer_stats.batch_sizes) > 1, server.writer_stats
    await server.restart()
    assert await credits(server, user) == FREE - ok * 3_000
    # A retry of an acknowledged spend after the restart is a replay, not a second debit.
    for i in range(1, 90):
        if i % 3:
            try:
                await server.s.usage.Spend(
                    usage_pb2.SpendRequest(amount_millicredits=3_000, request_id=f"r{i}", category="t"), metadata=md
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await credits(server, user) == FREE - ok * 3_000


@pytest.fixture
async def pg_server(tmp_path, clock: ManualClock) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    await _require_postgres()
    async with database("postgres", tmp_path) as url, serving(url, clock) as running:
        yield running


async def test_postgres_writer_survives_lost_connections(pg_server: Running) -> None:
    """The writer pings no connection before a batch: one found dead is
    dropped and the batch runs again on a fresh one, invisibly to callers."""
    server = pg_server
    user = "lost-conn"
    await credits(server, user)
    md = auth(user)
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="a", category="t"), metadata=md)
    # Kill every other backend of this database: the writer's pooled connections too.
    conn = await asyncpg.connect(server.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert killed >= 1
    assert server.app is not None
    retries = server.writer_stats.retries
    results = await asyncio.gather(*(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, request_id=f"b{i}", category="t"), metadata=md)
        for i in range(5)
    ))
    assert len(results) == 5
    assert await credits(server, user) == FREE - 6 * 1_000
    assert server.writer_stats.retries > retries  # the dead connection was met, and retried


async def test_postgres_write_back_refuses_over_long_values(pg_server: Running) -> None:
    """The one-statement write-back passes strings as text[]: an over-long value
    is refused by its varchar column, never cut to fit (a varchar(n) cast would)."""
    assert pg_server.app is not None
    db = pg_server.app.db
    async with db.writer.connect() as conn:
        tx = await conn.begin()
        sql = await BatchSql.open(conn, is_sqlite=False)
        await sql.select_in(idempotency, "key", ["probe"])  # opens the transaction
        await sql.insert(idempotency, [{"key": "k" * 400, "fingerprint": "f", "response": b"{}", "created_at_us": 1}])
        with pytest.raises(asyncpg.StringDataRightTruncationError):
            await sql.send()
        await tx.rollback()


def test_texts_join_only_when_they_split_back() -> None:
    assert joined_text(["key_a", "key_b"]) == "key_a,key_b"
    assert joined_text(["a,b"]) is None  # a comma would split it in two
    assert joined_text(["a", ""]) is None  # an empty text would be lost
    assert joined_text([""]) is None  # string_to_array('', ',') is no element at all
    assert joined_text([]) is None


async def test_postgres_update_values_sends_texts_and_falls_back_to_arrays(pg_server: Running) -> None:
    """update_values sends integer columns and comma-free texts as one text
    each (split again by the server); ids that would not split back (a comma,
    an empty one) go as an array: every row lands either way, and a missing
    integer fails the cast rather than being lost."""
    assert pg_server.app is not None
    db = pg_server.app.db
    ids = ["a,b", "", "plain"]
    async with db.writer.connect() as conn:
        tx = await conn.begin()
        sql = await BatchSql.open(conn, is_sqlite=False)
        await sql.select_in(key_usage, "id", ["probe"])  # opens the transaction
        await sql.insert(key_usage, [{"id": i, **dict.fromkeys(USAGE_COLUMNS, 0)} for i in ids])
        await sql.send()
        await sql.update_values(key_usage, "id", COUNTER_COLUMNS, [(1, 2, 3, 4, 5, 6, 10 + n, i) for n, i in enumerate(ids)])
        await sql.send()
        await sql.update_values(key_usage, "id", USAGE_COLUMNS, [(1, 2, 3, 4, 5, 6, 99, 7, "plain")])
        await sql.send()
        rows = await sql.select_values(key_usage, "id", ids, columns=["id", "hour_used", "lifetime_used", "resets_at_us"])
        assert sorted(map(tuple, rows)) == [("", 2, 11, 0), ("a,b", 2, 10, 0), ("plain", 2, 99, 7)]
        await sql.update_values(key_usage, "id", COUNTER_COLUMNS, [(1, 2, 3, 4, 5, 6, None, "plain")])
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await sql.send()
        await tx.rollback()


async def test_the_writer_plans_each_batch_read_for_its_own_arrays(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL's generic plan for `= ANY($1)` guesses ten keys and scans whole
    tables once a statement ran five times; the writer's connections plan each
    batch's reads for the keys they carry (SQLite has no plan cache)."""
    await _require_postgres()
    async with database("postgres", tmp_path) as url, serving(url, clock) as server:
        async with server.app.db.writer.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar() == "force_custom_plan"


async def test_callers_take_turns_and_each_keeps_its_order(server: Running) -> None:
    """The writer's queues, on random mixes of callers, operations that need
    a batch of their own, and deadlines already passed: every operation is
    taken once, in its caller's order; one of its own goes alone; no batch is
    over max_batch; an expired one is answered DEADLINE_EXCEEDED, never
    taken; and callers that still have work after a batch got equal turns in it."""
    assert server.app is not None
    callers = (Principal("a", Role.SERVICE), Principal("b", Role.SERVICE), Principal("c", Role.USER), None)
    rng = random.Random(3)
    for _ in range(150):
        writer = LedgerWriter(server.app.db, server.app.clock, server.app.tier_rules, max_batch=rng.choice((1, 2, 5, 16)))
        owner: dict[int, str] = {}
        expected: dict[str, list[Op]] = {}
        expired: list[asyncio.Task[Any]] = []
        waits: list[asyncio.Task[Any]] = []
        for i in range(rng.randrange(1, 80)):
            who = rng.choice(callers)
            op: Op = Call(fn=None) if rng.random() < 0.1 else spend("u", 1, f"r{i}")
            late = not op.exclusive and rng.random() < 0.1

            def queue(
                writer: LedgerWriter = writer, who: Principal | None = who, op: Op = op, late: bool = late
            ) -> asyncio.Task[Any]:
                call_deadline.set(time.monotonic() - 1 if late else None)
                if who is not None:
                    current_principal.set(who)
                return asyncio.ensure_future(writer.submit(op))  # the task runs in this context

            task = contextvars.copy_context().run(queue)
            waits.append(task)
            if late:
                expired.append(task)
            else:
                scope = who.scope if who else ""
                owner[id(op)] = scope
                expected.setdefault(scope, []).append(op)
        await asyncio.sleep(0)  # every submit has queued its operation
        taken: dict[str, list[Op]] = {scope: [] for scope in expected}
        while batch := writer._take_batch():
            assert len(batch) <= writer.max_batch
            if any(item.op.exclusive for item in batch):
                assert len(batch) == 1
            counts: dict[str, int] = {}
            for item in batch:
                scope = owner[id(item.op)]
                taken[scope].append(item.op)
                counts[scope] = counts.get(scope, 0) + 1
            if not batch[0].op.exclusive:
                # Whoever still has work that can share a batch had it then too.
                busy = [counts.get(s, 0) for s, lane in writer._lanes.items() if not lane[0].op.exclusive]
                assert not busy or max(busy) - min(busy) <= 1
        assert taken == expected
        await asyncio.sleep(0)
        for task in expired:
            exc = task.exception()
            assert isinstance(exc, errors.DomainError) and exc.code is errors.Code.DEADLINE_EXCEEDED
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def test_a_callers_backlog_goes_out_in_short_batches_while_others_are_about(server: Running) -> None:
    """A batch holds the event loop while it applies, so its length is what
    anyone else's operation waits for: alone, a caller's backlog fills whole
    batches; once another caller has submitted (in the last second), the
    backlog places at most shared_ops operations in each batch, and the other
    caller's operation goes out in the first one."""
    assert server.app is not None
    writer = LedgerWriter(server.app.db, server.app.clock, server.app.tier_rules, max_batch=64, shared_ops=8)

    def queue(who: str, user: str, n: int) -> asyncio.Task[Any]:
        def go() -> asyncio.Task[Any]:
            current_principal.set(Principal(who, Role.USER))
            return asyncio.ensure_future(writer.submit_many([spend(user, 1, f"{who}-{i}") for i in range(n)]))
        return contextvars.copy_context().run(go)

    tasks = [queue("heavy", "u", 100)]
    await asyncio.sleep(0)
    assert [len(b) for b in iter(writer._take_batch, [])] == [64, 36]
    tasks += [queue("light", "v", 1), queue("heavy", "u", 30)]
    await asyncio.sleep(0)
    batches = [[item.op.user_id for item in b] for b in iter(writer._take_batch, [])]  # type: ignore[attr-defined]
    assert batches == [["v"] + ["u"] * 8, ["u"] * 8, ["u"] * 8, ["u"] * 6]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
