"""Stripe fault injection through a loopback proxy between the billing server
and the test Stripe (localstripe + the Checkout fake): lost responses (Stripe
did the work, we never heard back), 500s, dropped connections, and webhook
storms racing the reconciliation job. Nothing may be charged, created or
credited twice, and nothing paid may be lost.

(Handler crashes mid-way and out-of-order deliveries are in tests/payments/test_payments.py:
test_handler_failure_returns_500_and_applies_nothing,
test_duplicate_and_out_of_order_deliveries_credit_once,
test_refund_before_completion_event_grants_then_claws_back.)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from flownexus.billing.v1 import payments_pb2

from server.platform import deadline, errors
from tests.calls import credits, deliver
from tests.harness import Running, auth, expect_error, free_port
from tests.stripe_fake import API_KEY, WEBHOOK_SECRET, StripeFake, event

FREE = 100_000


class FaultProxy:
    """Forwards to the test Stripe; `faults` is a queue of what to do to the
    next requests: "ok", "500", "drop" (never forwarded, connection closed) or
    "lost" (forwarded, Stripe acts, the response is thrown away)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[str] = []
        self.slow_seconds = 3.0
        self.hurry = asyncio.Event()  # set: a "slow" request waiting now goes on at once
        self.slow_answered = 0
        # Faults hit only these paths (localstripe ignores idempotency keys,
        # so customers are left alone; the Checkout fake honours them).
        self.only = "/v1/checkout/sessions"
        self.seen: list[tuple[str, str, str]] = []  # (fault, path, idempotency key)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> FaultProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._client = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self._client:
            await self._client.close()
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.faults.pop(0) if self.faults and request.path.startswith(self.only) else "ok"
        self.seen.append((fault, request.path, request.headers.get("Idempotency-Key", "")))
        body = await request.read()
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if fault == "slow":  # Stripe answers, but only after `slow_seconds` (or once hurried)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), self.slow_seconds)
            self.slow_answered += 1
        if fault == "500":
            return web.json_response({"error": {"type": "api_error", "message": "injected"}}, status=500)
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "idempotency-key", "stripe-version")}
        async with self._client.request(request.method, f"{self.upstream}{request.path_qs}", data=body, headers=headers) as r:
            out = await r.read()
            status = r.status
        if fault == "lost":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.Response(body=out, status=status, content_type="application/json")


@pytest.fixture
async def proxied(db_url: str, clock: Any, stripe_fake: StripeFake) -> AsyncIterator[tuple[Running, FaultProxy, StripeFake]]:
    proxy = await FaultProxy(stripe_fake.url).start()
    server = Running(
        db_url, clock, stripe_api_key=API_KEY, stripe_api_base=proxy.url, stripe_webhook_secret=WEBHOOK_SECRET,
        payment_link_rate_per_second=0,
    )
    await server.start()
    try:
        yield server, proxy, stripe_fake
        await server.verify()
    finally:
        await server.stop()
        await proxy.stop()


async def link(server: Running, user: str, rid: str, cents: int = 1_000) -> payments_pb2.CreatePaymentLinkResponse:
    return await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=rid), metadata=auth(user)
    )


async def payments_of(server: Running, user: str) -> list[payments_pb2.Payment]:
    r = await server.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=100), metadata=auth(user))
    return list(r.payments)


async def test_lost_responses_never_create_two_sessions(proxied: tuple[Running, FaultProxy, StripeFake]) -> None:
    """Stripe creates the session but every response is lost (a timeout, seen
    from our side): the call fails UNAVAILABLE; the client's retry with the
    same request_id reuses the same Stripe idempotency key and gets the very
    session Stripe already made. One session, one payment, one grant."""
    server, proxy, fake = proxied
    proxy.faults = ["lost"] * 12  # more than the SDK's own retries
    await expect_error(link(server, "tess", "buy-1"), grpc.StatusCode.UNAVAILABLE, "STRIPE_UNAVAILABLE")
    creates = [s for s in proxy.seen if s[1] == "/v1/checkout/sessions"]
    assert creates, "the create never reached Stripe"
    proxy.faults = []
    ok = await link(server, "tess", "buy-1")
    again = await link(server, "tess", "buy-1")
    assert ok.payment_id == again.payment_id and ok.payment_url == again.payment_url
    assert len(fake.sessions) == 1, "Stripe was asked to create two sessions for one purchase"
    keys = {k for _, path, k in proxy.seen if path == "/v1/checkout/sessions"}
    assert len(keys) == 1 and "" not in keys, keys  # every attempt carried the same idempotency key
    assert [p.id for p in await payments_of(server, "tess")] == [ok.payment_id]
    session = fake.sessions[ok.payment_url.rsplit("/", 1)[-1]]
    await fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    assert await credits(server, "tess") == FREE + 100_000


async def test_500s_and_dropped_connections_are_retried(proxied: tuple[Running, FaultProxy, StripeFake]) -> None:
    server, proxy, fake = proxied
    proxy.faults = ["500", "drop"]  # within the SDK's retries: the call succeeds
    ok = await link(server, "uri", "buy-2")
    assert ok.payment_url
    assert len(fake.sessions) == 1
    # past the SDK's retries: UNAVAILABLE, and the client's retry resolves it
    proxy.faults = ["drop"] * 12
    await expect_error(link(server, "vic", "buy-3"), grpc.StatusCode.UNAVAILABLE, "STRIPE_UNAVAILABLE")
    proxy.faults = []
    ok2 = await link(server, "vic", "buy-3")
    assert len(fake.sessions) == 2 and ok2.payment_id != ok.payment_id
    assert len(await payments_of(server, "vic")) == 1


async def test_webhook_storm_racing_reconciliation_grants_once(proxied: tuple[Running, FaultProxy, StripeFake]) -> None:
    """The same completion delivered 12 times at once, redelivered under new
    event ids, payment_intent.succeeded, and three reconciliation runs, all
    concurrently: exactly one grant."""
    server, _proxy, fake = proxied
    assert server.app is not None
    links = [await link(server, "wes", f"storm-{i}", 1_000 * (i + 1)) for i in range(3)]
    sessions = [fake.sessions[lk.payment_url.rsplit("/", 1)[-1]] for lk in links]
    pis = [await fake.pay(s["id"]) for s in sessions]
    server.clock.advance(server.settings.payment_reconcile_after_seconds + 1)
    jobs: list[Any] = []
    for s, pi in zip(sessions, pis, strict=True):
        completed = event("checkout.session.completed", copy.deepcopy(s))
        jobs += [deliver(server, completed) for _ in range(12)]
        jobs += [deliver(server, event("checkout.session.completed", copy.deepcopy(s))) for _ in range(3)]
        jobs.append(deliver(server, event("payment_intent.succeeded", pi)))
    jobs += [server.run_job("reconcile_payments") for _ in range(3)]
    results = await asyncio.gather(*jobs)
    statuses = [r for r in results[: len(results) - 3]]
    assert set(statuses) == {200}, statuses
    assert await credits(server, "wes") == FREE + 100_000 * (1 + 2 + 3)
    assert all(p.status == payments_pb2.PAYMENT_STATUS_PAID for p in await payments_of(server, "wes"))
    report = await server.audit()
    assert report.ok and report.checked["payments"] >= 3, report.render()


async def test_stripe_call_ends_with_the_callers_deadline(proxied: tuple[Running, FaultProxy, StripeFake]) -> None:
    """Stripe is slow (it answers only when the test lets it) and the gateway's
    own timeout is 20 s: a call made for a caller with 0.3 s left gives up with
    DEADLINE_EXCEEDED before Stripe answers, and well before its own timeout; a
    deadline already passed never reaches Stripe; without a caller (a
    background job) the gateway waits for Stripe."""
    server, proxy, _ = proxied
    assert server.app is not None
    gateway = server.app.stripe
    assert gateway.timeout > 3

    customer = (await gateway.create_customer("slowpoke"))["id"]

    async def session(rid: str) -> dict[str, Any]:
        return await gateway.create_checkout_session(
            customer_id=customer, user_id="slowpoke", payment_id=f"pay_{rid}", amount_cents=1_000,
            credits_millicredits=100_000, product_name="credits", success_url="http://x/s",
            cancel_url="http://x/c", idempotency_key=f"slow-{rid}",
        )

    proxy.faults, proxy.slow_seconds = ["slow"], 3600.0
    token = deadline.call_deadline.set(time.monotonic() + 0.3)
    try:
        started = time.monotonic()
        try:
            await session("a")
            raise AssertionError("the call outlived its caller's deadline")
        except errors.DeadlineExceeded:
            pass
        took = time.monotonic() - started
        assert proxy.slow_answered == 0, "the gateway waited for Stripe past the caller's deadline"
        # Half its own timeout: far above the caller's 0.3 s on any host, far below what its own would take.
        assert took < gateway.timeout / 2, f"gave up after {took:.1f} s: by the gateway's own {gateway.timeout} s timeout, not the caller's 0.3 s"
        deadline.call_deadline.set(time.monotonic() - 0.01)
        seen = len(proxy.seen)
        try:
            await session("b")
            raise AssertionError("a call whose deadline had passed was sent")
        except errors.DeadlineExceeded:
            pass
        assert len(proxy.seen) == seen, "a call whose deadline had passed reached Stripe"
    finally:
        deadline.call_deadline.reset(token)
        proxy.hurry.set()  # the abandoned request goes on to Stripe
    proxy.hurry = asyncio.Event()
    proxy.faults, proxy.slow_seconds = ["slow"], 0.5
    started = time.monotonic()
    made = await session("c")
    assert made["id"] and time.monotonic() - started >= 0.5
