"""Auto-refill: durable jobs in the balance change's transaction, one refill in
flight per account, exactly-once crediting, declines with bounded backoff,
authentication_required recovery, the monthly cap, and configuration errors.

Real server on loopback, localstripe behind the Checkout Sessions fake
(tests/stripe_fake.py), SQLite and PostgreSQL. The ledger audit (including
"every paid payment has exactly one grant:{payment_id}") runs after each test.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, history_pb2, payments_pb2, refill_pb2, usage_pb2
from sqlalchemy import text

from server.ledger.model import Kind
from server.platform.clock import ManualClock
from tests.harness import WAIT, Running, auth, expect_error, serving
from tests.payments.test_payments import deliver
from tests.stripe_fake import StripeFake, event
from tests.stripe_fixtures import stripe_settings

FREE = 100_000  # the free allowance, millicredits
THRESHOLD = 50_000  # 50 credits
TEN = 1_000  # $10 buys 100 credits
CAP_CENTS = 2_500  # this file's monthly cap: two $10 refills fit, a third does not
S = refill_pb2


@pytest.fixture
async def rserver(db_url: str, clock: ManualClock, stripe_fake: StripeFake) -> AsyncIterator[Running]:
    async with serving(db_url, clock, **stripe_settings(stripe_fake), refill_monthly_cap_cents=CAP_CENTS) as running:
        yield running


# ---- helpers ---------------------------------------------------------------------------------


async def save_card(server: Running, fake: StripeFake, user: str, card: str = "pm_card_visa") -> None:
    """CreateSetupLink -> the customer saves `card` -> signed checkout.session.completed."""
    link = await server.s.refill.CreateSetupLink(S.CreateSetupLinkRequest(request_id=uuid.uuid4().hex), metadata=auth(user))
    assert link.setup_url
    session = await fake.complete_setup(link.setup_url.rsplit("/", 1)[-1], card)
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200


async def configure(
    server: Running, user: str, *, enabled: bool = True, threshold: int = THRESHOLD, cents: int = TEN, rid: str | None = None
) -> S.AutoRefill:
    req = S.ConfigureAutoRefillRequest(
        enabled=enabled, threshold_millicredits=threshold, amount_cents=cents,
        request_id=uuid.uuid4().hex if rid is None else rid,
    )
    return (await server.s.refill.ConfigureAutoRefill(req, metadata=auth(user))).auto_refill


async def get(server: Running, user: str) -> S.AutoRefill:
    return (await server.s.refill.GetAutoRefill(S.GetAutoRefillRequest(), metadata=auth(user))).auto_refill


async def spend(server: Running, user: str, amount: int) -> Any:
    req = usage_pb2.SpendRequest(amount_millicredits=amount, request_id=uuid.uuid4().hex, category="sandbox")
    return await server.s.usage.Spend(req, metadata=auth(user))


async def balance(server: Running, user: str) -> balance_pb2.CheckBalanceResponse:
    return await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(user))


async def run_worker(server: Running) -> None:
    assert server.app is not None
    done = await server.run_jobs()
    assert done.get("auto_refill", 0) >= 0, done


def charges(fake: StripeFake) -> list[dict[str, str]]:
    return [r for r in fake.requests if r["method"] == "POST" and r["path"] == "/v1/payment_intents"]


async def refill_payments(server: Running, user: str) -> list[payments_pb2.Payment]:
    r = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=100), metadata=auth(user))
    return [p for p in r.payments if p.kind == payments_pb2.PAYMENT_KIND_AUTO_REFILL]


async def refill_grants(server: Running, user: str) -> int:
    r = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(page_size=100), metadata=auth(user))
    return sum(1 for t in r.transactions if t.metadata.get("payment_id", "").startswith("rfa_"))


async def in_flight_jobs(server: Running, user: str) -> int:
    assert server.app is not None
    async with server.read() as conn:
        q = "SELECT count(*) FROM refill_jobs WHERE user_id = :u AND status IN ('queued','running','retry_scheduled')"
        return int((await conn.execute(text(q), {"u": user})).scalar_one())


class Watch:
    """Collects WatchBalance events in the background."""

    def __init__(self, server: Running, user: str) -> None:
        self.call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth(user))
        self.events: list[balance_pb2.WatchBalanceResponse] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Watch:
        self.events.append(await self.call.read())  # the snapshot: subscribed from here on

        async def pump() -> None:
            while True:
                e = await self.call.read()
                if e is grpc.aio.EOF:
                    return
                self.events.append(e)

        self.task = asyncio.create_task(pump())
        return self

    async def wait_for(self, etype: int, count: int = 1, timeout: float = WAIT) -> list[balance_pb2.WatchBalanceResponse]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [e for e in self.events if e.type == etype]
            if len(found) >= count:
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"saw {[e.type for e in self.events]}, wanted {count} x {etype}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.call.cancel()
        if self.task:
            self.task.cancel()


# ---- tests -----------------------------------------------------------------------------------------


async def test_threshold_crossed_by_20_concurrent_spends_charges_once(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "alice"
    await save_card(server, stripe_fake, user)
    cfg = await configure(server, user)
    assert cfg.enabled and cfg.state == S.AUTO_REFILL_STATE_IDLE
    assert (cfg.payment_method.brand, cfg.payment_method.last4) == ("visa", "4242")
    assert cfg.credits_amount_millicredits == 100_000 and cfg.monthly_cap_cents == CAP_CENTS
    assert "50 credits" in cfg.next_charge and "$10.00" in cfg.next_charge
    watch = await Watch(server, user).start()
    before = len(charges(stripe_fake))

    results = await asyncio.gather(*(spend(server, user, 3_000) for _ in range(20)))
    assert all(r.credits_millicredits >= 0 for r in results)
    # Spending never waited on Stripe: nothing charged yet, one durable job queued.
    assert len(charges(stripe_fake)) == before
    assert await in_flight_jobs(server, user) == 1
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IN_FLIGHT

    await run_worker(server)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 1
    assert (await balance(server, user)).credits_millicredits == FREE - 60_000 + 100_000
    paid = await refill_payments(server, user)
    assert [(p.status, p.amount_cents) for p in paid] == [(payments_pb2.PAYMENT_STATUS_PAID, TEN)]
    await watch.wait_for(balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED)

    # The payment_intent.succeeded webhook arrives too (twice): still one grant.
    obj = await stripe_fake.api("GET", f"/v1/payment_intents/{await _pi_of(server, paid[0].id)}")
    assert obj["metadata"]["payment_id"] == paid[0].id and obj["status"] == "succeeded"
    for _ in range(2):
        assert await deliver(server, event("payment_intent.succeeded", obj)) == 200
    assert await refill_grants(server, user) == 1
    assert (await balance(server, user)).credits_millicredits == FREE - 60_000 + 100_000
    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_IDLE and cfg.monthly_used_cents == TEN
    watch.close()


async def _pi_of(server: Running, payment_id: str) -> str:
    assert server.app is not None
    async with server.read() as conn:
        q = text("SELECT payment_intent_id FROM payments WHERE id = :p")
        return str((await conn.execute(q, {"p": payment_id})).scalar())


async def test_refill_survives_a_restart_right_after_the_spend(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "bob"
    await save_card(server, stripe_fake, user)
    await configure(server, user)
    before = len(charges(stripe_fake))
    await spend(server, user, 60_000)  # commits with its refill job; the worker never ran
    await server.restart()
    assert await in_flight_jobs(server, user) == 1
    await run_worker(server)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 1
    assert await refill_grants(server, user) == 1
    assert (await balance(server, user)).credits_millicredits == FREE - 60_000 + 100_000


async def test_stripe_outage_retries_the_same_attempt_with_the_same_key(
    rserver: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    server, user = rserver, "carol"
    await save_card(server, stripe_fake, user)
    await configure(server, user)
    before = len(charges(stripe_fake))
    await spend(server, user, 60_000)
    stripe_fake.fail_next = 10  # every try of this run (the SDK retries too) gets a 500
    await run_worker(server)
    stripe_fake.fail_next = 0
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_RETRY_SCHEDULED
    await run_worker(server)  # not due yet
    clock.advance(61)
    await run_worker(server)
    tries = charges(stripe_fake)[before:]
    assert len(tries) >= 2
    keys = {t["idempotency_key"] for t in tries}
    assert len(keys) == 1 and next(iter(keys)).startswith("rfa_")
    paid = await refill_payments(server, user)
    assert [p.status for p in paid] == [payments_pb2.PAYMENT_STATUS_PAID] and paid[0].id in keys
    assert await refill_grants(server, user) == 1


async def test_declining_card_retries_with_backoff_then_pauses(
    rserver: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    server, user = rserver, "dave"
    clock.set(datetime(2031, 3, 2, 9, tzinfo=UTC))  # its clock moves (~3.3 days) stay inside March: no new allowance
    assert server.app is not None
    attempts = server.settings.refill_max_attempts
    await save_card(server, stripe_fake, user, "pm_card_chargeCustomerFail")
    cfg = await configure(server, user)
    assert cfg.payment_method.last4 == "0341"
    watch = await Watch(server, user).start()
    before = len(charges(stripe_fake))
    await spend(server, user, 60_000)

    for n in range(1, attempts + 1):
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + n
        # No retry storm: running the worker again before the backoff is over charges nothing.
        for _ in range(3):
            await run_worker(server)
        clock.advance(60)
        await run_worker(server)
        assert len(charges(stripe_fake)) == before + n
        cfg = await get(server, user)
        if n < attempts:
            assert cfg.state == S.AUTO_REFILL_STATE_RETRY_SCHEDULED
            wait = cfg.next_retry_at.ToMicroseconds() - clock.now_us()
            base = server.settings.refill_retry_base_seconds * 2 ** (n - 1) * 1e6
            assert 0.75 * base <= wait + 60e6 <= 1.25 * base, (n, wait, base)  # exponential, with jitter
            assert cfg.last_failure_reason == "card_declined"
            clock.advance(wait / 1e6 + 1)

    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_PAUSED and cfg.paused_reason == "AUTO_REFILL_FAILED"
    check = await balance(server, user)
    assert check.auto_refill and check.auto_refill_paused_reason == "AUTO_REFILL_FAILED"
    await watch.wait_for(balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_FAILED, attempts)
    await watch.wait_for(balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_PAUSED)
    failed = await refill_payments(server, user)
    assert len(failed) == attempts
    assert all(p.status == payments_pb2.PAYMENT_STATUS_FAILED and p.failure_reason == "card_declined" for p in failed)

    # Paused means paused: days later, more spending charges nothing.
    clock.advance(3 * 86400)
    await spend(server, user, 1_000)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + attempts
    assert (await balance(server, user)).credits_millicredits == FREE - 61_000

    # The user fixes the card: auto-refill resumes and the next spend refills.
    await save_card(server, stripe_fake, user, "pm_card_visa")
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IDLE
    await spend(server, user, 1_000)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + attempts + 1
    assert (await balance(server, user)).credits_millicredits == FREE - 62_000 + 100_000
    watch.close()


async def test_authentication_required_asks_the_user_and_never_retries(
    rserver: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    """localstripe cannot answer an off-session charge with authentication_required,
    so this one test uses a thin test double at the StripeGateway boundary
    (AuthenticationRequiredDouble below); everything else is real."""
    server, user = rserver, "erin"
    clock.set(datetime(2031, 3, 2, 9, tzinfo=UTC))  # its clock moves (3 days) stay inside March: no new allowance
    assert server.app is not None
    await save_card(server, stripe_fake, user)
    await configure(server, user)
    gateway = server.app.stripe  # type: ignore[attr-defined]
    calls: list[dict[str, Any]] = []

    async def authentication_required_double(**kwargs: Any) -> dict[str, Any]:  # AuthenticationRequiredDouble
        calls.append(kwargs)
        return {"status": "failed", "code": "authentication_required", "decline_code": "authentication_required", "id": ""}

    gateway.charge_off_session = authentication_required_double
    watch = await Watch(server, user).start()
    await spend(server, user, 60_000)
    await run_worker(server)
    assert len(calls) == 1 and calls[0]["idempotency_key"].startswith("rfa_")

    cfg = await get(server, user)
    assert cfg.state == S.AUTO_REFILL_STATE_ACTION_REQUIRED
    assert cfg.recovery_url.startswith(stripe_fake.url)
    assert (await balance(server, user)).auto_refill_paused_reason == "AUTHENTICATION_REQUIRED"
    seen = await watch.wait_for(balance_pb2.BALANCE_EVENT_TYPE_ACTION_REQUIRED)
    assert seen[0].payment_url == cfg.recovery_url
    [failed] = await refill_payments(server, user)
    assert failed.status == payments_pb2.PAYMENT_STATUS_FAILED and failed.failure_reason == "authentication_required"

    # No automatic retry, however long we wait or spend.
    for _ in range(3):
        clock.advance(86400)
        await spend(server, user, 1_000)
        await run_worker(server)
    assert len(calls) == 1

    # The user pays through the recovery link: credits arrive once and auto-refill resumes.
    session = stripe_fake.sessions[cfg.recovery_url.rsplit("/", 1)[-1]]
    pi = await stripe_fake.pay(session["id"])
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert (await get(server, user)).state == S.AUTO_REFILL_STATE_IDLE
    assert (await balance(server, user)).credits_millicredits == FREE - 63_000 + 100_000
    watch.close()


async def test_monthly_cap_blocks_the_refill_that_would_exceed_it(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "frank"
    await save_card(server, stripe_fake, user)
    before = len(charges(stripe_fake))
    # Already below: the first refill is charged during the call (100 -> 200).
    await configure(server, user, threshold=150_000)
    assert len(charges(stripe_fake)) == before + 1
    # -> 140 (refill: 240) -> 140: a third $10 would make $30 > $25.
    await spend(server, user, 60_000)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 2
    await spend(server, user, 100_000)
    await run_worker(server)
    await spend(server, user, 10_000)
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 2  # $30 would exceed the $25 cap
    cfg = await get(server, user)
    assert cfg.monthly_used_cents == 2 * TEN and cfg.monthly_cap_cents == CAP_CENTS
    assert cfg.last_failure_reason == "MONTHLY_CAP_REACHED" and "cap" in cfg.next_charge
    assert await refill_grants(server, user) == 2
    assert await in_flight_jobs(server, user) == 0
    assert (await balance(server, user)).credits_millicredits == FREE - 170_000 + 200_000


async def test_lowering_the_amount_under_the_cap_lifts_the_months_block(rserver: Running, stripe_fake: StripeFake) -> None:
    """The cap skipped a $15 refill ($15 + $15 > $25); the user lowers the amount to $10,
    which fits ($15 + $10 = $25): the block computed for $15 no longer holds."""
    server, user = rserver, "kim"
    await save_card(server, stripe_fake, user)
    await configure(server, user, cents=1_500)
    before = len(charges(stripe_fake))
    await spend(server, user, 60_000)  # 40 credits -> refill of 150: 190
    await run_worker(server)
    await spend(server, user, 150_000)  # 40 again: the cap skips the second $15
    await run_worker(server)
    assert len(charges(stripe_fake)) == before + 1
    assert (await get(server, user)).last_failure_reason == "MONTHLY_CAP_REACHED"
    # Still below the threshold: refills at once, during the call (the block for $15 is gone).
    await configure(server, user, cents=TEN)
    assert len(charges(stripe_fake)) == before + 2
    cfg = await get(server, user)
    assert cfg.monthly_used_cents == CAP_CENTS and "cap" in cfg.next_charge
    assert (await balance(server, user)).credits_millicredits == FREE - 210_000 + 150_000 + 100_000


async def test_configure_errors(rserver: Running, stripe_fake: StripeFake) -> None:
    server = rserver
    # No saved card: FAILED_PRECONDITION that says how to add one.
    info = await expect_error(configure(server, "gina"), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_METHOD_REQUIRED")
    assert info.metadata["how"]
    # Disabling always works, card or not.
    off = await configure(server, "gina", enabled=False, threshold=0, cents=0)
    assert not off.enabled and off.state == S.AUTO_REFILL_STATE_DISABLED

    await save_card(server, stripe_fake, "gina")
    await expect_error(configure(server, "gina", threshold=0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_THRESHOLD")
    await expect_error(configure(server, "gina", threshold=-5), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_THRESHOLD")
    await expect_error(configure(server, "gina", threshold=10**15), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_THRESHOLD")
    await expect_error(configure(server, "gina", cents=500), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    await expect_error(configure(server, "gina", cents=1_000_001), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    await expect_error(configure(server, "gina", rid=""), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_REQUEST_ID")

    ok = await configure(server, "gina", rid="cfg-1")
    assert ok.enabled
    again = await configure(server, "gina", rid="cfg-1")  # same request: same outcome
    assert again.enabled and again.threshold_millicredits == THRESHOLD
    await expect_error(configure(server, "gina", cents=2_000, rid="cfg-1"), grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")

    # Another user's token reaches only its own account.
    req = S.GetAutoRefillRequest(user_id="gina")
    await expect_error(server.s.refill.GetAutoRefill(req, metadata=auth("hank")), grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    await expect_error(configure(server, "hank"), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_METHOD_REQUIRED")
    assert (await get(server, "gina")).enabled
    await expect_error(
        server.s.refill.GetAutoRefill(S.GetAutoRefillRequest()), grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"
    )
    check = await balance(server, "gina")
    assert check.auto_refill and check.threshold_millicredits == THRESHOLD and not check.auto_refill_paused_reason
    # No credit was ever spent on a bad request.
    assert check.credits_millicredits == FREE


async def test_card_from_a_purchase_enables_auto_refill(rserver: Running, stripe_fake: StripeFake) -> None:
    server, user = rserver, "ivy"
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=TEN, request_id="buy-1"), metadata=auth(user)
    )
    session = stripe_fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    pi = await stripe_fake.pay(session["id"])
    assert await deliver(server, event("payment_intent.succeeded", pi)) == 200
    cfg = await configure(server, user)
    assert cfg.enabled and cfg.payment_method.last4 == "4242"
    # Enabling while already below the threshold refills at once, during the call.
    cfg = await configure(server, user, threshold=250_000)
    assert cfg.state == S.AUTO_REFILL_STATE_IDLE
    assert (await balance(server, user)).credits_millicredits == FREE + 100_000 + 100_000
    await run_worker(server)  # nothing left to charge
    assert (await balance(server, user)).credits_millicredits == FREE + 100_000 + 100_000
    assert Kind.AUTO_REFILL == "auto_refill"
