"""Fixtures. `server` runs against SQLite and PostgreSQL; every test ends with
the ledger audit (cached balances = transfers, accounts sum to zero, ...)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from server.platform.clock import ManualClock, to_us
from tests.harness import (
    PINNED_START,
    Running,
    database,
    drop_databases,
    postgres_available,
    serving,
)

pytest_plugins = ["tests.stripe_fixtures", "tests.browser"]

_pg_reason: str | bool | None = False


async def _require_postgres() -> None:
    global _pg_reason
    if _pg_reason is False:
        _pg_reason = await postgres_available()
    if _pg_reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {_pg_reason}")
        pytest.skip(f"PostgreSQL unreachable: {_pg_reason}")


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    """The service's clock, pinned: no test takes an expectation from today's date.
    Tests about a period boundary set their own instant (`clock.set`)."""
    return ManualClock(to_us(PINNED_START))


@pytest.fixture(scope="session", autouse=True)
async def _test_databases() -> AsyncIterator[None]:
    yield
    await drop_databases()


@pytest.fixture
async def db_url(db_kind: str, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A fresh database, migrated: a copy of the one this test process migrated."""
    if db_kind == "postgres":
        await _require_postgres()
    async with database(db_kind, tmp_path) as url:
        yield url


@pytest.fixture
async def empty_db_url(db_kind: str, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A fresh database without any table, for the migrations themselves."""
    if db_kind == "postgres":
        await _require_postgres()
    async with database(db_kind, tmp_path, migrated=False) as url:
        yield url


@pytest.fixture
async def server(db_url: str, clock: ManualClock) -> AsyncIterator[Running]:
    async with serving(db_url, clock) as running:
        yield running


@pytest.fixture
async def sqlite_server(tmp_path, clock: ManualClock) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """For tests whose subject does not depend on the database."""
    async with database("sqlite", tmp_path) as url, serving(url, clock) as running:
        yield running
