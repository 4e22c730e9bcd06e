"""Stripe fixtures (registered in tests/conftest.py via pytest_plugins):
localstripe starts ONCE per test session; each test gets a reset fake and a
server configured to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.platform.clock import ManualClock
from tests.harness import Running, free_port, serving
from tests.stripe_fake import API_KEY, WEBHOOK_SECRET, StripeFake, launch_localstripe, wait_http


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    state: Path = tmp_path_factory.mktemp("localstripe") / "state.pickle"
    proc = launch_localstripe(port, state)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()


@pytest.fixture(scope="session")
async def stripe_fake_session(localstripe_url: str) -> AsyncIterator[StripeFake]:
    await wait_http(f"{localstripe_url}/v1/customers")
    fake = await StripeFake(localstripe_url).start(free_port())
    try:
        yield fake
    finally:
        await fake.stop()


def stripe_settings(fake: StripeFake) -> dict[str, str]:
    """Settings that point a server at the Stripe test double."""
    return {"stripe_api_key": API_KEY, "stripe_api_base": fake.url, "stripe_webhook_secret": WEBHOOK_SECRET}


@pytest.fixture
async def stripe_fake(stripe_fake_session: StripeFake) -> StripeFake:
    await stripe_fake_session.reset()
    return stripe_fake_session


@pytest.fixture
async def stripe_server(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    """The billing server with Stripe configured (API base = the fake), on SQLite and PostgreSQL."""
    async with serving(db_url, clock, **stripe_settings(stripe_fake)) as running:
        yield running


@pytest.fixture
async def sqlite_stripe_server(tmp_path: Path, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    """For Stripe tests whose subject does not depend on the database."""
    from tests.harness import database

    async with database("sqlite", tmp_path) as url, serving(url, clock, **stripe_settings(stripe_fake)) as running:
        yield running
