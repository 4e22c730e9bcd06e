"""The runaway agent stops before the card is charged: a key at its budget is
refused before the wallet's balance is looked at, so it never triggers an
auto-refill (localstripe behind the Checkout fake, both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from flownexus.billing.v1 import usage_pb2

from server.platform.clock import ManualClock
from tests.harness import Running, expect_error, serving
from tests.keys.helpers import CREDIT, DAY, bearer, create_key, spend_req
from tests.refill.test_refill import charges, configure, in_flight_jobs, run_worker, save_card
from tests.stripe_fake import StripeFake
from tests.stripe_fixtures import stripe_settings


@pytest.fixture
async def rserver(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **stripe_settings(stripe_fake)) as running:
        stripe_fake.webhook_url = f"{running.http_base}/webhooks/stripe"
        yield running
        await stripe_fake.settled()


async def test_a_key_at_its_budget_cannot_drive_a_refill(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "rex"
    await save_card(server, stripe_fake, user, "pm_card_visa")
    await configure(server, user)  # below 50 credits, $10
    made = await create_key(server, user, [(DAY, 40 * CREDIT)])
    md = bearer(made.secret)
    before = len(charges(stripe_fake))
    r = await server.s.usage.Spend(spend_req(30 * CREDIT, "s0"), metadata=md)
    assert r.credits_millicredits == 70 * CREDIT  # above the threshold: no refill
    # Each of these would take the balance below the threshold (and the last one
    # past it): the budget refuses them first, so none triggers a refill.
    for i, amount in enumerate((25, 30, 60, 500)):
        await expect_error(server.s.usage.Spend(spend_req(amount * CREDIT, f"s{i + 1}"), metadata=md),
                           grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    batch = await server.s.usage.SpendBatch(
        usage_pb2.SpendBatchRequest(requests=[spend_req(25 * CREDIT, "b1")]), metadata=md
    )
    assert batch.results[0].error.reason == "BUDGET_EXCEEDED"
    assert await in_flight_jobs(server, user) == 0
    for _ in range(3):
        await run_worker(server)
    assert len(charges(stripe_fake)) == before

