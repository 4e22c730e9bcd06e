"""The pages Checkout returns the buyer to (/billing/success, /billing/cancel),
in a real headless Chromium: the success page moves from waiting to credited
by itself once the signed webhook arrives; a failure shows its reason; the
cancel page says nothing was charged and makes a new link; a bad session id
finds nothing. Screenshots of each state: docs/screenshots/ (docs/payments.md)."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from flownexus.billing.v1 import payments_pb2

from tests.browser import Page
from tests.calls import FREE, credits, deliver
from tests.harness import Running, auth
from tests.stripe_fake import StripeFake, event


def local(server: Running, url: str) -> str:
    """A return URL made with BILLING_PUBLIC_BASE_URL, on the test server's own port."""
    assert server.app is not None
    parts = urlsplit(url)
    return f"{server.http_base}{parts.path}?{parts.query}"


async def checkout(server: Running, fake: StripeFake, user: str, cents: int) -> tuple[str, dict[str, Any], str]:
    """A payment link; returns (payment id, session, the success URL as Stripe redirects to it)."""
    link = await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=uuid.uuid4().hex), metadata=auth(user)
    )
    session = fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
    # Stripe fills the placeholder in when it redirects the buyer.
    assert "{CHECKOUT_SESSION_ID}" in session["success_url"]
    assert link.payment_id not in session["success_url"]
    success = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
    return link.payment_id, session, local(server, success)


async def get(url: str, **kw: Any) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False, **kw) as r:
        return r.status, await r.text(), dict(r.headers)


async def test_success_page_moves_from_waiting_to_credited(
    stripe_server: Running, stripe_fake: StripeFake, page: Page
) -> None:
    server, user = stripe_server, "page-buyer"
    pid, session, url = await checkout(server, stripe_fake, user, 1_000)
    await page.open(url)
    await page.wait_state("waiting")
    assert "Waiting for confirmation" in await page.text("h1")
    assert "$10.00 for 100 credits" in await page.text("#message")
    await page.screenshot("success-waiting")

    # The JSON the page polls: this payment's state and nothing else.
    status_url = url.replace("/billing/success?", "/billing/success/status?")
    code, body, headers = await get(status_url)
    state = json.loads(body)
    assert code == 200 and state["state"] == "waiting" and state["final"] is False
    assert set(state) == {"state", "final", "title", "message", "amount_cents", "credits_millicredits",
                          "balance_millicredits", "reason", "retry_url"}
    assert user not in body and pid not in body
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"

    await stripe_fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    await page.wait_state("credited")  # the page's own polling, no reload
    assert await page.text("h1") == "Credits added"
    message = await page.text("#message")
    assert "100 credits were added for $10.00" in message
    assert f"{(FREE + 100_000) // 1000} credits" in message  # the balance the credits made
    assert await credits(server, user) == FREE + 100_000
    assert await page.attr("#payment", "data-final") == "true"
    await page.screenshot("success-credited")


async def test_success_page_shows_a_failure_and_its_reason(
    stripe_server: Running, stripe_fake: StripeFake, page: Page
) -> None:
    server, user = stripe_server, "page-declined"
    pid, session, url = await checkout(server, stripe_fake, user, 2_500)
    await page.open(url)
    await page.wait_state("waiting")
    pi = {"id": f"pi_{uuid.uuid4().hex[:20]}", "object": "payment_intent", "metadata": {"payment_id": pid},
          "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"}}
    assert await deliver(server, event("payment_intent.payment_failed", pi)) == 200
    await page.wait_state("failed")
    assert await page.text("h1") == "Payment failed"
    assert "the card has insufficient funds" in await page.text("#message")
    # Checkout lets the buyer try another card: the page links back to it.
    assert await page.attr("#retry", "href") == session["url"]
    await page.screenshot("success-failed")
    assert await credits(server, user) == FREE


async def test_cancel_page_says_nothing_was_charged_and_makes_a_new_link(
    stripe_server: Running, stripe_fake: StripeFake, page: Page
) -> None:
    server, user = stripe_server, "page-cancel"
    _, session, _ = await checkout(server, stripe_fake, user, 1_500)
    cancel = local(server, session["cancel_url"])
    await page.open(cancel)
    assert await page.text("h1") == "Payment cancelled"
    assert "Nothing was charged" in await page.text("main")
    assert "$15.00 for 150 credits" in await page.text("main")
    await page.screenshot("cancel")
    await page.click("button[type=submit]")
    new_url = await page.wait_url(lambda u: "/billing/" not in u)
    assert new_url.startswith(f"{stripe_fake.url}/pay/cs_") and session["id"] not in new_url
    new_session = stripe_fake.sessions[new_url.rsplit("/", 1)[-1]]
    assert new_session["amount_total"] == 1_500 and new_session["client_reference_id"] == user

    # Pressing it twice gives the same new link, not a third one.
    ref = cancel.split("ref=", 1)[1]
    async with aiohttp.ClientSession() as s, s.post(cancel.split("?")[0], data={"ref": ref}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == new_session["url"]
    assert await credits(server, user) == FREE

    # A reference that was not signed by this server names nothing.
    forged = ref[:-1] + ("0" if ref[-1] != "0" else "1")
    code, body, _ = await get(cancel.replace(ref, forged))
    assert code == 404 and "not recognised" in body


async def test_bad_session_id_finds_nothing(stripe_server: Running, stripe_fake: StripeFake, page: Page) -> None:
    server = stripe_server
    _, session, url = await checkout(server, stripe_fake, "page-owner", 1_000)
    bad = url.replace(session["id"], "cs_test_" + "0" * 24)
    await page.open(bad)
    assert await page.text("h1") == "Payment not found"
    await page.screenshot("success-not-found")
    for candidate in (bad, url.replace(session["id"], "<script>"), url.split("?")[0]):
        code, body, _ = await get(candidate)
        assert code == 404 and "Payment not found" in body and "<script>" not in body.split("<body>")[1]
        code, body, _ = await get(candidate.replace("/billing/success", "/billing/success/status"))
        assert code == 404 and json.loads(body) == {"error": "payment not found"}


async def test_setup_and_pro_checkouts_return_to_pages_too(stripe_server: Running, page: Page) -> None:
    """Every return URL the service gives Stripe is a page, not a 404."""
    server = stripe_server
    assert server.app is not None
    base = server.http_base
    for path, title in (("/billing/card-saved", "Card saved"), ("/billing/tier/success", "Pro upgrade received"),
                        ("/billing/tier/cancel", "Nothing was charged"), ("/billing/cancel", "Nothing was charged")):
        code, body, headers = await get(base + path)
        assert code == 200 and f"<h1>{title}</h1>" in body, path
        assert "Content-Security-Policy" in headers
    await page.open(base + "/billing/tier/success")
    assert await page.text("h1") == "Pro upgrade received"
