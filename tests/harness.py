"""Test harness: a real server on a loopback port, called through the
generated stubs, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from flownexus.billing.v1 import (
    admin_pb2_grpc,
    balance_pb2_grpc,
    earnings_pb2_grpc,
    events_pb2_grpc,
    history_pb2_grpc,
    payments_pb2_grpc,
    portal_pb2_grpc,
    refill_pb2_grpc,
    tier_pb2_grpc,
    usage_pb2_grpc,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncConnection

from server.app import App
from server.db.engine import Database
from server.db.fastread import FastReader
from server.ledger.ops import Op
from server.ledger.verify import Report, verify
from server.ledger.writer import WriterStats
from server.platform.auth import Role, mint_token
from server.platform.clock import ManualClock
from server.platform.config import Settings

# Where every test's service clock starts unless the test sets its own: a fixed
# instant in the middle of a 31-day month, far from every period boundary.
PINNED_START = datetime(2031, 3, 14, 9, 26, 53, tzinfo=UTC)

JWT_SECRET = "test-secret-0123456789-0123456789-abcdef"
PG_DSN = os.environ.get("BILLING_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

# The upper bound of a wait for something that will happen (a stream's next
# message, a webhook, a server's start): it only matters when the thing hangs,
# so it is long enough for a 2-core host at load 20. A healthy wait returns as
# soon as the thing happens; a property about time is asserted by its own
# measure, never by this.
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def postgres_available() -> str | None:
    """None when reachable, else the reason."""
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        await conn.close()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


# The migrations run once per test process, into a template that every test
# asking for a migrated database gets a copy of (tests/db, and `migrated=False`,
# run them on empty ones). No lock: some tests run servers on event loops of
# their own threads; two templates made at once are both dropped at the end.
_templates: dict[str, str] = {}
_made: list[tuple[str, str]] = []


def _pg_url(name: str) -> str:
    return f"{PG_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


async def _pg_admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def _create(name: str, template: str | None) -> str:
    return f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")


def _drop(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


class _Keeper:
    """PostgreSQL databases made ahead and dropped after their test, on a thread
    of its own while the tests run: here a copy of the template takes about
    0.7 s, a DROP DATABASE about a second, and several at once little longer
    than one."""

    spares = 2

    def __init__(self) -> None:
        self.template: str | None = None
        self.ready: queue.SimpleQueue[str] = queue.SimpleQueue()
        # Databases to drop; "" asks for spares; None stops the thread.
        self.todo: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def take(self, template: str) -> str | None:
        """A copy of the template made ahead, if one is ready."""
        self.template = template
        try:
            name: str | None = self.ready.get_nowait()
        except queue.Empty:
            name = None
        self._ask("")
        return name

    def drop(self, name: str) -> None:
        self._ask(name)

    def stop(self) -> None:
        if self.thread is not None:
            self.todo.put(None)
            self.thread.join()
            self.thread = None

    def _ask(self, what: str) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="test-databases", daemon=True)
            self.thread.start()
        self.todo.put(what)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            todo = [self.todo.get()]
            while not self.todo.empty():
                todo.append(self.todo.get())
            stopping = None in todo
            drops = [name for name in todo if name]
            if stopping:
                while not self.ready.empty():
                    drops.append(self.ready.get())
            wanted = 0 if stopping or self.template is None else self.spares - self.ready.qsize()
            asyncio.run(self._round(drops, [f"billing_test_{uuid.uuid4().hex[:12]}" for _ in range(wanted)]))

    async def _round(self, drops: list[str], makes: list[str]) -> None:
        async def make(name: str, template: str) -> None:
            await _pg_admin(_create(name, template))
            self.ready.put(name)

        assert self.template is not None or not makes
        await asyncio.gather(*(_pg_admin(_drop(name)) for name in drops),
                             *(make(name, self.template) for name in makes if self.template), return_exceptions=True)


_keeper = _Keeper()


async def _template(kind: str) -> str:
    """The migrated database of this process: a SQLite file's path, a PostgreSQL database's name."""
    if kind not in _templates:
        if kind == "sqlite":
            where = Path(tempfile.mkdtemp(prefix="billing-template-")) / "billing.db"
            url, made = f"sqlite+aiosqlite:///{where}", str(where)
        else:
            made = f"billing_template_{uuid.uuid4().hex[:12]}"
            await _pg_admin(_create(made, None))
            url = _pg_url(made)
        _made.append((kind, made))
        db = Database(url)
        try:
            await db.migrate()
        finally:
            await db.dispose()
        if kind == "sqlite":
            # Everything into the main file, so that a copy of it alone is the database.
            with closing(sqlite3.connect(made)) as conn:
                conn.execute("PRAGMA journal_mode=DELETE")
        _templates[kind] = made
    return _templates[kind]


async def drop_databases() -> None:
    """At the end of the test process: the tests' databases, then the templates."""
    await asyncio.to_thread(_keeper.stop)
    for kind, made in _made:
        if kind == "sqlite":
            shutil.rmtree(Path(made).parent, ignore_errors=True)
        else:
            await _pg_admin(_drop(made))
    _templates.clear()
    _made.clear()


@asynccontextmanager
async def database(kind: str, tmp: Path, *, migrated: bool = True) -> AsyncIterator[str]:
    """A fresh database URL of the given kind, migrated to head (or empty)."""
    template = await _template(kind) if migrated else None
    if kind == "sqlite":
        path = tmp / f"billing-{uuid.uuid4().hex[:8]}.db"
        if template:
            shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name = _keeper.take(template) if template else None
    if name is None:
        name = f"billing_test_{uuid.uuid4().hex[:12]}"
        await _pg_admin(_create(name, template))
    try:
        yield _pg_url(name)
    finally:
        _keeper.drop(name)


def test_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "jwt_secret": JWT_SECRET,
        "worker_interval_seconds": 3600.0,  # tests run jobs explicitly
        "log_json": False,
        # Tests drive one user token far harder than a person would (hundreds
        # of concurrent Spends); the per-caller limits have their own tests in
        # tests/platform/test_limits.py, which set them explicitly.
        "user_mutation_rate_per_second": 100_000.0,
        "user_mutation_burst": 100_000,
        "user_max_in_flight": 100_000,
        "user_max_streams": 100_000,
        "user_max_stored_requests_per_day": 0,
    }
    values.update(overrides)
    return Settings(**values)


def token(user: str, role: Role | str = Role.USER, *, ttl: int = 3600, secret: str = JWT_SECRET) -> str:
    return mint_token(secret, user, Role(role), ttl_seconds=ttl)


def auth(user: str, role: Role | str = Role.USER) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(user, role)}"),)


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    balance: balance_pb2_grpc.BalanceServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    history: history_pb2_grpc.HistoryServiceStub
    earnings: earnings_pb2_grpc.EarningsServiceStub
    tier: tier_pb2_grpc.TierServiceStub
    payments: payments_pb2_grpc.PaymentsServiceStub
    refill: refill_pb2_grpc.RefillServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    events: events_pb2_grpc.EventsServiceStub
    portal: portal_pb2_grpc.PortalServiceStub

    @classmethod
    def connect(cls, target: str) -> Stubs:
        ch = grpc.aio.insecure_channel(target)
        return cls(
            ch,
            balance_pb2_grpc.BalanceServiceStub(ch),
            usage_pb2_grpc.UsageServiceStub(ch),
            history_pb2_grpc.HistoryServiceStub(ch),
            earnings_pb2_grpc.EarningsServiceStub(ch),
            tier_pb2_grpc.TierServiceStub(ch),
            payments_pb2_grpc.PaymentsServiceStub(ch),
            refill_pb2_grpc.RefillServiceStub(ch),
            admin_pb2_grpc.AdminServiceStub(ch),
            events_pb2_grpc.EventsServiceStub(ch),
            portal_pb2_grpc.PortalServiceStub(ch),
        )


class Running:
    """A started App plus a client. `restart()` keeps the database."""

    def __init__(self, url: str, clock: ManualClock, **overrides: Any) -> None:
        self.url = url
        self.clock = clock
        self.overrides = overrides
        self.app: App | None = None
        self.stubs: Stubs | None = None

    @property
    def settings(self) -> Settings:
        return test_settings(self.url, **self.overrides)

    async def start(self) -> Running:
        self.app = App(self.settings, clock=self.clock)
        await self.app.start()
        self.stubs = Stubs.connect(f"127.0.0.1:{self.app.grpc_port}")
        return self

    async def stop(self) -> None:
        if self.stubs:
            await self.stubs.channel.close()
        if self.app:
            await self.app.stop(grace=1)
        self.app, self.stubs = None, None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def verify(self) -> None:
        report = await self.audit()
        assert report.ok, report.render()
        assert report.checked["accounts"] >= 0

    @property
    def s(self) -> Stubs:
        assert self.stubs is not None
        return self.stubs

    # What tests need of the running process beyond its API, in one place, so
    # that tests do not depend on how App is put together.

    @property
    def started(self) -> App:
        assert self.app is not None, "the server is not running"
        return self.app

    @property
    def grpc_port(self) -> int:
        return self.started.grpc_port

    @property
    def target(self) -> str:
        """The gRPC address, for a channel or grpcurl of the test's own."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        """The HTTP listener (webhooks, /metrics, /healthz, the return pages)."""
        return f"http://127.0.0.1:{self.started.http_port}"

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection of the reader engine, for what the API does not show."""
        return self.started.db.reader.connect()

    @property
    def bulk_reader(self) -> FastReader:
        """The reader of many rows (history, reports), to count its reads."""
        return self.started.db.bulk

    async def audit(self) -> Report:
        """The ledger audit (`python -m server verify`) of the database now."""
        return await verify(self.started.db.reader)

    async def run_jobs(self) -> dict[str, int]:
        """Every background job once, as the worker loop does; what each did."""
        return await self.started.workers.run_once()

    async def run_job(self, name: str) -> int:
        return await self.started.workers.jobs[name]()

    async def submit(self, op: Op) -> Any:
        """A ledger operation through the server's group-commit writer."""
        return await self.started.writer.submit(op)

    @property
    def writer_stats(self) -> WriterStats:
        return self.started.writer.stats


@asynccontextmanager
async def serving(url: str, clock: ManualClock, **overrides: Any) -> AsyncIterator[Running]:
    """A started server, audited (`verify`) when the block ends without error, then stopped."""
    running = Running(url, clock, **overrides)
    await running.start()
    try:
        yield running
        await running.verify()
    finally:
        await running.stop()


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)
    assert status is not None, f"no rich status on {exc.code()}: {exc.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in status details")


async def expect_error(coro: Any, code: grpc.StatusCode, reason: str | None = None) -> error_details_pb2.ErrorInfo:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == code, f"expected {code}, got {exc.code()}: {exc.details()}"
        info = error_info(exc)
        if reason is not None:
            assert info.reason == reason, f"expected reason {reason}, got {info.reason}: {exc.details()}"
        assert "Traceback" not in (exc.details() or "")
        return info
    raise AssertionError(f"expected {code} {reason}, but the call succeeded")


async def gather_limited(coros: list[Any], limit: int = 64) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


async def run_cmd(*cmd: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run a command without blocking the event loop (the server under test lives on it)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def until(probe: Callable[[], Awaitable[bool]], what: str, *, within: float = WAIT, every: float = 0.05) -> None:
    """Poll `probe` until it returns True: a wait for something that will happen,
    bounded by `within` only against a hang (the failure names `what`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"{what} (waited {within:.0f} s)")
        await asyncio.sleep(every)
