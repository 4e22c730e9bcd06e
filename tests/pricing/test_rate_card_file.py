"""The rate card file (BILLING_RATE_CARD) at start, on both databases: the
first version in an empty store, a new version only when its content was
never applied, and a bad file that stops the real server process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from flownexus.billing.v1 import pricing_pb2

from server.app import App
from server.pricing.service import DEFAULT_RATE_CARD
from tests.harness import JWT_SECRET, Running, Stubs, free_port
from tests.pricing.helpers import USER, estimate, meter, publish, stub, us, usage

ROOT = Path(__file__).resolve().parents[2]
LEAD_US = 5_000_000

CARD_A = """
[meters."api.calls"]
unit = "call"
per_units = 1000
price = 100

[meters."sandbox.seconds"]
unit = "second"
dimensions = { size = ["small", "large"] }
prices = { small = 1, large = 4 }
"""

# The same card laid out otherwise, with comments: the same canonical card.
CARD_A_AGAIN = """
# sandboxes first this time
[meters."sandbox.seconds"]
prices.large = 4
prices.small = 1
dimensions.size = ["large", "small"]
unit = "second"

[meters."api.calls"]
price = 100   # a tenth of a credit per thousand
unit = "call"
per_units = 1000
"""

CARD_C = CARD_A.replace("price = 100", "price = 150")


async def _versions(server: Running) -> list[tuple[int, str]]:
    got = await stub(server).ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(), metadata=USER)
    return [(v.version, v.published_by) for v in got.versions]


async def test_the_file_is_applied_once_per_content(db_url: str, clock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "card.toml"
    path.write_text(CARD_A)
    server = Running(db_url, clock, rate_card=str(path))
    await server.start()
    try:
        assert await _versions(server) == [(1, "config")]
        meters = await stub(server).ListMeters(pricing_pb2.ListMetersRequest(), metadata=USER)
        assert [m.name for m in meters.meters] == ["api.calls", "sandbox.seconds"]
        # An admin's change through the RPC outlives restarts with the same file.
        await publish(server, [meter("api.calls", "call", 120, per_units=1000)], "rpc-change",
                      effective_us=clock.now_us() + LEAD_US)
        path.write_text(CARD_A_AGAIN)
        await server.restart()
        assert await _versions(server) == [(2, "ops"), (1, "config")]
        # A file with new content: a new version, effective after the lead time from the start.
        clock.advance(60)
        path.write_text(CARD_C)
        started = clock.now_us()
        await server.restart()
        assert await _versions(server) == [(3, "config"), (2, "ops"), (1, "config")]
        v3 = (await stub(server).GetRateCard(pricing_pb2.GetRateCardRequest(version=3), metadata=USER)).rate_card
        assert (us(v3.effective_time), us(v3.publish_time)) == (started + LEAD_US, started)
        assert (await estimate(server, usage("api.calls", 1000), started + LEAD_US - 1)).amount_millicredits == 120
        assert (await estimate(server, usage("api.calls", 1000), started + LEAD_US)).amount_millicredits == 150
        await server.restart()
        assert len(await _versions(server)) == 3
        await server.verify()
    finally:
        await server.stop()


async def test_two_processes_starting_together_apply_a_file_once(db_url: str, clock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Replicas started at once with the same file: one version, whichever wins."""
    path = tmp_path / "card.toml"
    path.write_text(CARD_A)
    first = Running(db_url, clock, rate_card=str(path))
    await first.start()
    await first.stop()
    path.write_text(CARD_C)
    a, b = Running(db_url, clock, rate_card=str(path)), Running(db_url, clock, rate_card=str(path))
    try:
        # Migrated already, as `serve --workers N` does it: alembic is not for two at once in one process.
        await asyncio.gather(_start_migrated(a), _start_migrated(b))
        assert await _versions(a) == await _versions(b) == [(2, "config"), (1, "config")]
        await a.verify()
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def _start_migrated(server: Running) -> None:
    server.app = App(server.settings, clock=server.clock)
    await server.app.start(migrate=False)
    server.stubs = Stubs.connect(server.target)


BAD_FILES = [
    ("not TOML", "[meters\nunit = 1", "is not TOML"),
    ("a zero price", CARD_A.replace("price = 100", "price = 0"), 'meters.api.calls.price: must be an integer from 1'),
    ("an unknown key", CARD_A + '\n[meters."api.calls".tiers]\nfirst = 1\n', "meters.api.calls.tiers: unknown key"),
    ("an unpriced value", CARD_A.replace("small = 1, ", ""), "meters.sandbox.seconds.prices.small: has no price"),
    ("a float price", CARD_A.replace("price = 100", "price = 0.1"), "meters.api.calls.price: must be an integer"),
]


async def _serve(rate_card: str, tmp_path: Path, *extra: str) -> tuple[int | None, str]:
    env = {**os.environ, "BILLING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
           "BILLING_GRPC_PORT": str(free_port()), "BILLING_HTTP_PORT": str(free_port()),
           "BILLING_JWT_SECRET": JWT_SECRET, "BILLING_VAR_DIR": str(tmp_path), "BILLING_RATE_CARD": rate_card}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", *extra, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:  # it serves: the test fails below
        proc.terminate()
        _, err = await proc.communicate()
    return proc.returncode, err.decode()


@pytest.mark.parametrize("what,text,problem", BAD_FILES, ids=[b[0] for b in BAD_FILES])
async def test_a_bad_file_stops_the_server_process(tmp_path: Path, what: str, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    rc, err = await _serve(str(path), tmp_path)
    assert rc == 2, err
    assert "BILLING_RATE_CARD" in err and problem in err and "Traceback" not in err, err
    assert not (tmp_path / "b.db").exists()  # refused before anything was touched


async def test_a_missing_file_stops_every_worker_process(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    rc, err = await _serve(str(missing), tmp_path, "--workers", "2")
    assert rc == 2 and f"{missing}: cannot be read" in err, err
    # The shipped default is a valid card.
    rc, err = await _serve(str(DEFAULT_RATE_CARD) + ".nope", tmp_path)
    assert rc == 2, err
