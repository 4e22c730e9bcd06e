"""A price change at an instant: spends on each side of a new rate card
version's effective instant are priced with their own version (the ledger
batch's instant decides), concurrently too; a replay keeps its first answer;
a hold's Capture keeps the price agreed at Reserve; EstimateCost equals what
Spend then charges. Keys, member budgets and revenue share count the priced
credits. `python -m server verify` checks each priced transfer and fails on a
corrupted one."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, keys_pb2, pricing_pb2, usage_pb2

from tests.calls import FREE, credits
from tests.harness import Running, auth, expect_error
from tests.keys.helpers import bearer, create_key
from tests.ledger.test_verify import audit, golden_copy, run_cli
from tests.orgs.helpers import create_org
from tests.orgs.test_member_budgets import DAY, add
from tests.orgs.test_org_wallet import fund_org
from tests.pricing.helpers import stub, ts
from tests.pricing.usage_calls import (
    SVC,
    capture_quantity,
    publish,
    reserve_usage,
    spend_usage,
    used,
)

SMALL = used("sandbox.seconds", 100, size="small")  # 100 millicredits at version 1, 300 at version 2


async def estimate(server: Running, usage, at_us: int) -> pricing_pb2.EstimateCostResponse:  # type: ignore[no-untyped-def]
    return await stub(server).EstimateCost(
        pricing_pb2.EstimateCostRequest(usage=usage, usage_time=ts(at_us)), metadata=SVC)


async def test_spends_on_each_side_of_the_change_use_their_version(server: Running) -> None:
    clock = server.clock
    start = clock.now_us()
    effective = start + 5_000_000  # the lead time ahead of the server's clock
    held = await reserve_usage(server, "pc", used("sandbox.seconds", 50, size="small"), "h")
    before = await spend_usage(server, "pc", SMALL, "s0")
    assert await publish(server, 3, effective, "v2") == 2
    seen = []
    for i, at in enumerate((effective - 1_000_000, effective - 1, effective, effective + 1)):
        clock.set_us(at)
        quoted = await estimate(server, SMALL, at)
        r = await spend_usage(server, "pc", SMALL, f"s{i + 1}")
        u = r.transaction.usage
        assert u.priced_at.ToMicroseconds() == at == r.transaction.date.ToMicroseconds()
        # EstimateCost at the spend's instant is what Spend then charges.
        assert (quoted.amount_millicredits, quoted.version, quoted.unit_price_millicredits) == (
            u.amount_millicredits, u.rate_card_version, u.unit_price_millicredits)
        assert -r.transaction.amount_millicredits == quoted.amount_millicredits
        seen.append((u.rate_card_version, u.amount_millicredits))
    assert seen == [(1, 100), (1, 100), (2, 300), (2, 300)]
    # A replay after the change is its first answer, at its first price.
    assert await spend_usage(server, "pc", SMALL, "s0") == before
    # The hold made before the change is captured at version 1's price.
    done = await capture_quantity(server, held.hold.id, 40, "c")
    assert (done.transaction.usage.rate_card_version, done.transaction.amount_millicredits) == (1, -40)
    # A hold made after it is priced at version 2.
    late = await reserve_usage(server, "pc", used("sandbox.seconds", 10, size="small"), "h2")
    assert (late.hold.usage.rate_card_version, late.hold.amount_millicredits) == (2, 30)
    assert await credits(server, "pc") == FREE - (100 + 2 * 100 + 2 * 300 + 40 + 30)
    assert await audit(server.url) == []


async def test_concurrent_spends_across_the_change(server: Running) -> None:
    clock = server.clock
    effective = clock.now_us() + 5_000_000
    await publish(server, 3, effective, "v2")
    clock.set_us(effective - 100_000)
    # Waves of concurrent spends, the service's clock moving 20 ms once each
    # wave's first spend is applied (the rest still in flight): the first wave
    # lands before the change, the last ones after it, the middle across it.
    tasks: list[asyncio.Task[usage_pb2.SpendResponse]] = []
    for wave in range(12):
        started = [asyncio.ensure_future(spend_usage(server, f"cc{i % 7}", SMALL, f"cc{wave}-{i}")) for i in range(10)]
        tasks += started
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        clock.advance(0.02)
    results = await asyncio.gather(*tasks)
    by_version = {1: 0, 2: 0}
    for r in results:
        u, at = r.transaction.usage, r.transaction.date.ToMicroseconds()
        assert u.priced_at.ToMicroseconds() == at
        version = 2 if at >= effective else 1
        assert (u.rate_card_version, u.amount_millicredits) == (version, 300 if version == 2 else 100), at - effective
        by_version[version] += 1
    assert by_version[1] and by_version[2], by_version
    assert await audit(server.url) == []


async def test_keys_members_and_revenue_share_count_the_priced_credits(server: Running) -> None:
    # A key's budget counts what the usage cost.
    made = await create_key(server, "kim", [(keys_pb2.BUDGET_WINDOW_DAY, 1_000)])
    ok = usage_pb2.SpendRequest(usage=used("sandbox.seconds", 200, size="large"), request_id="k1")
    assert (await server.s.usage.Spend(ok, metadata=bearer(made.secret))).transaction.key_id == made.key.id
    over = usage_pb2.SpendRequest(usage=used("sandbox.seconds", 51, size="large"), request_id="k2")
    info = await expect_error(server.s.usage.Spend(over, metadata=bearer(made.secret)),
                              grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    assert info.metadata["remaining_millicredits"] == "200"
    # A member's budget too, on an org's wallet.
    org = await create_org(server, "olga")
    await fund_org(server, org, 10_000)
    await add(server, org, "mia", (DAY, 500))
    first = usage_pb2.SpendRequest(usage=used("training.steps", 16, model="base"), request_id="m1", org_id=org)
    assert (await server.s.usage.Spend(first, metadata=auth("mia"))).transaction.amount_millicredits == -400
    second = usage_pb2.SpendRequest(usage=used("training.steps", 5, model="base"), request_id="m2", org_id=org)
    await expect_error(server.s.usage.Spend(second, metadata=auth("mia")), grpc.StatusCode.FAILED_PRECONDITION,
                       "BUDGET_EXCEEDED")
    # Revenue share is the percentage of the priced amount.
    await spend_usage(server, "buyer", used("template.deployments", 2), "t1", app_id="tpl-1", publisher_user_id="pub")
    pub = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth("pub"))
    assert pub.earned_total_millicredits == 2_000 * 70 // 100
    # Enterprise-style overdraft aside, a priced spend beyond the balance is refused like any other.
    await expect_error(spend_usage(server, "poor", used("agent.deployments", 51), "p"),
                       grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")


async def _priced_traffic(running: Running) -> None:
    """Priced spends, a priced hold and its capture, and a second version."""
    clock = running.clock
    await publish(running, 3, clock.now_us() + 5_000_000, "v2")
    await spend_usage(running, "vic", SMALL, "s1")
    h = await reserve_usage(running, "vic", used("sandbox.seconds", 30, size="medium"), "h1")
    await capture_quantity(running, h.hold.id, 20, "c1")
    clock.advance(10)
    await spend_usage(running, "vic", SMALL, "s2")
    await spend_usage(running, "vic", used("api.calls", 1_500), "s3")


@pytest.fixture
async def priced_golden(tmp_path: Path, clock) -> Path:  # type: ignore[no-untyped-def]
    return await golden_copy(tmp_path, clock, _priced_traffic)


CORRUPTIONS = {
    "quantity": ("UPDATE transfer_usage SET quantity = quantity + 1 WHERE meter = 'api.calls'",
                 "amount 150 != the price of 1501 api.calls"),
    "version": ("UPDATE transfer_usage SET version = 2 WHERE priced_at_us = (SELECT min(priced_at_us) FROM transfer_usage)",
                "version 2 was not in effect at its priced instant"),
    "unit_price": ("UPDATE transfer_usage SET unit_price = 3 WHERE version = 1 AND meter = 'sandbox.seconds' AND quantity = 100",
                   "recorded price 3/1 != version 1's 1/1"),
    "dimension": ("UPDATE transfer_usage SET dimensions = '{\"size\":\"large\"}' WHERE quantity = 20",
                  "amount 40 != the price of 20 sandbox.seconds {'size': 'large'}"),
    # What the version does not price, by the card's own lookup (pricing's unit_price).
    "no such value": ("UPDATE transfer_usage SET dimensions = '{\"size\":\"huge\"}' WHERE quantity = 20",
                      "version 1 does not price sandbox.seconds {'size': 'huge'}"),
    "one dimension too many": (
        "UPDATE transfer_usage SET dimensions = '{\"region\":\"eu\",\"size\":\"small\"}' WHERE quantity = 20",
        "version 1 does not price sandbox.seconds {'region': 'eu', 'size': 'small'}"),
    "no such meter": ("UPDATE transfer_usage SET meter = 'gpu.seconds' WHERE meter = 'api.calls'",
                      "version 2 does not price gpu.seconds {}"),
    "orphan": ("UPDATE transfer_usage SET transfer_id = 999999 WHERE meter = 'api.calls'",
               "usage of transfer #999999: no spend, hold or capture has that id"),
}


async def test_verify_checks_each_priced_transfer(priced_golden: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{priced_golden}"
    assert await audit(url) == []
    done = run_cli(url)
    assert done.returncode == 0 and "checked priced transfers: 5" in done.stdout, done.stdout + done.stderr
    for name, (sql, expected) in CORRUPTIONS.items():
        path = tmp_path / f"{name}.db"
        shutil.copy(priced_golden, path)
        with sqlite3.connect(path) as con:
            con.execute(sql)
        problems = await audit(f"sqlite+aiosqlite:///{path}")
        assert any(expected in p for p in problems), (name, problems)
    done = run_cli(f"sqlite+aiosqlite:///{tmp_path / 'quantity.db'}")
    assert done.returncode == 1 and "PROBLEM:" in done.stdout and "api.calls" in done.stdout
