"""The billing portal in a real headless Chromium (Debian's chromium and
chromedriver, through Selenium), on SQLite and PostgreSQL, with the test
Stripe (localstripe behind tests/stripe_fake.py): the whole story of a
person who opens a portal link, sees the balance and the chart, buys credits
through Checkout and sees them arrive, tops up with the saved card, turns
auto-refill on, filters the history and downloads it as CSV (its rows equal
ListTransactions); and what must be refused: an expired link, a forged
cookie, a form posted from another site. Every page passes axe-core with no
serious or critical violation, and is photographed at desktop and phone
widths (UPDATE_SCREENSHOTS=1 copies them to docs/screenshots/portal-*.png)."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from flownexus.billing.v1 import common_pb2, earnings_pb2, keys_pb2, refill_pb2, usage_pb2

from server.platform.clock import ManualClock
from tests.browser import Page
from tests.calls import credits, deliver, spend, transactions
from tests.harness import Running, auth, free_port
from tests.keys.helpers import keys_stub
from tests.portal.portal import local, portal_link
from tests.portal.test_portal_http import as_csv, csv_rows
from tests.stripe_fake import StripeFake, event

AXE = Path(__file__).resolve().parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
PAGES = (("overview", "/portal/"), ("usage", "/portal/usage"), ("usage-90", "/portal/usage?days=90"),
         ("history", "/portal/history"), ("payments", "/portal/payments"), ("buy", "/portal/buy"),
         ("auto-refill", "/portal/auto-refill"), ("plan", "/portal/plan"), ("keys", "/portal/keys"),
         ("alerts", "/portal/alerts"))
DESKTOP, PHONE = (1280, 900), (375, 812)
CATEGORIES = ("sandbox", "training", "storage")


async def history_of_spending(server: Running, clock: ManualClock, user: str) -> str:
    """40 days of spending in three categories, as a chart should show it."""
    req = earnings_pb2.AwardCreditsRequest(
        user_id=user, amount_millicredits=900_000, reason="challenge prize",
        source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref="prize-1", request_id=uuid.uuid4().hex,
    )
    await server.s.earnings.AwardCredits(req, metadata=auth("platform", "service"))
    made = await keys_stub(server).CreateKey(keys_pb2.CreateKeyRequest(
        label="nightly trainer", request_id=uuid.uuid4().hex,
        budgets=[keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_MONTH, limit_millicredits=200_000)]), metadata=auth(user))
    agent = (("authorization", f"Bearer {made.secret}"),)
    for day in range(40):
        for i, cat in enumerate(CATEGORIES):
            if (day + i) % 4 != 3:
                amount = 200 + ((day * 7 + i * 13) % 9) * 300 * (3 - i)
                if day >= 36 and cat == "training":  # the agent's key spends the last nights' training
                    await server.s.usage.Spend(usage_pb2.SpendRequest(
                        amount_millicredits=amount, request_id=uuid.uuid4().hex, category=cat,
                        description=f"{cat} job {day}"), metadata=agent)
                else:
                    await spend(server, user, amount, uuid.uuid4().hex, category=cat, description=f"{cat} job {day}")
        clock.advance(86_400)
    return made.key.id


async def axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page now open."""
    assert AXE.exists(), f"{AXE} is missing: run `make test`, or `npm ci` in tests/portal/js"
    await page.run(page.driver.execute_script, AXE.read_text())
    found = await page.run(page.driver.execute_async_script, """
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ['violations']}).then(r => done(JSON.stringify(r.violations)));
    """)
    return [v for v in json.loads(found) if v.get("impact") in ("serious", "critical")]


async def photograph(page: Page, name: str) -> None:
    """The whole page at desktop and phone widths; the page must not scroll sideways on a phone."""
    d = page.driver
    for label, (w, h) in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.run(d.set_window_size, w, h)
        full = await page.run(d.execute_script, "return document.documentElement.scrollHeight")
        await page.run(d.set_window_size, w, min(max(int(full) + 140, h), 3000))
        if label == "phone":
            inner = await page.run(d.execute_script, "return [document.documentElement.scrollWidth, window.innerWidth]")
            assert inner[0] <= inner[1], f"{name} scrolls sideways at {w}px: {inner}"
        await page.screenshot(f"portal-{name}-{label}")
    await page.run(d.set_window_size, 412, 860)


def shown(millicredits: int) -> str:
    """Credits as a person reads them: 1,234.5 credits."""
    return f"{millicredits / 1000:,.3f}".rstrip("0").rstrip(".") + " credits"


async def browser_cookies(page: Page) -> dict[str, str]:
    return {c["name"]: c["value"] for c in await page.run(page.driver.get_cookies)}


async def fill(page: Page, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    def run() -> None:
        el = page.driver.find_element(By.CSS_SELECTOR, css)
        el.clear()
        el.send_keys(value)

    await page.run(run)


async def wait_text(page: Page, css: str, want: str, within: float = 20.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen = ""
    from selenium.common.exceptions import WebDriverException

    while loop.time() < deadline:
        try:
            seen = await page.text(css)
        except WebDriverException:  # the page is being replaced (a redirect after a post)
            seen = ""
        if want in seen:
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"{css} shows {seen!r}, expected {want!r}")


async def test_the_portal_story(stripe_server: Running, stripe_fake: StripeFake, clock: ManualClock, page: Page) -> None:
    server, user = stripe_server, "pat"
    key_id = await history_of_spending(server, clock, user)
    link = await portal_link(server, user, return_url="https://app.example.com/settings/billing")

    # 1. The link opens the portal; the balance and its split are on the overview.
    await page.open(local(server, link.url))
    assert (await page.wait_url(lambda u: u.endswith("/portal/"))).endswith("/portal/")
    before = await credits(server, user)
    assert await page.text("#balance") == shown(before)
    assert "days left" in await page.text("#days-left")
    assert await page.text("#tier") == "Free"

    # 2. The chart: bars, a legend and the same numbers as a table.
    await page.open(f"{server.http_base}/portal/usage")
    bars = await page.run(page.driver.execute_script, "return document.querySelectorAll('#chart rect').length")
    assert bars > 50
    per_op = await page.text("#per-op")
    assert all(c in per_op for c in CATEGORIES)
    assert key_id in await page.text("#by-key")

    # Every page: accessible, and photographed before anything else changes.
    for name, path in PAGES:
        await page.open(f"{server.http_base}{path}")
        assert not await axe(page), (name, await axe(page))
        await photograph(page, name)

    # 3. Buy credits through Checkout; the credits arrive once Stripe says so.
    await page.open(f"{server.http_base}/portal/buy")
    await fill(page, "#buy-amount", "10")
    await page.click("#buy-submit")
    pay_url = await page.wait_url(lambda u: "/pay/cs_" in u)
    assert "/pay/cs_" in pay_url, (pay_url, await page.text("body"))
    session = stripe_fake.sessions[pay_url.rsplit("/", 1)[-1]]
    assert session["amount_total"] == 1_000 and session["client_reference_id"] == user
    await stripe_fake.pay(session["id"])
    assert await deliver(server, event("checkout.session.completed", copy.deepcopy(session))) == 200
    await page.open(f"{server.http_base}/portal/")
    assert await page.text("#balance") == shown(before + 100_000)
    await page.open(f"{server.http_base}/portal/payments")
    assert "Purchase" in await page.text("#payments") and "paid" in await page.text("#payments")

    # One-click top-up with the card Checkout saved.
    await page.open(f"{server.http_base}/portal/buy")
    await fill(page, "#topup-amount", "10")
    await page.click("#topup-submit")
    await wait_text(page, "main", "Top-up paid")
    assert await credits(server, user) == before + 200_000

    # 4. Auto-refill on, with a threshold and an amount.
    await page.open(f"{server.http_base}/portal/auto-refill")
    await page.click("#refill-enabled")
    await fill(page, "#refill-threshold", "20")
    await fill(page, "#refill-amount", "15")
    await page.click("#refill-save")
    await wait_text(page, "main", "Auto-refill settings saved.")
    got = await server.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=auth(user))
    assert got.auto_refill.enabled and got.auto_refill.threshold_millicredits == 20_000
    assert got.auto_refill.amount_cents == 1_500
    assert "on" in (await page.text("#refill-status")).lower() or got.auto_refill.enabled
    # The default low-balance alert follows the auto-refill threshold.
    await page.open(f"{server.http_base}/portal/alerts")
    assert await page.text("#alerts-thresholds") == "20 credits" and "defaults" in await page.text("#alerts-source")

    # The pages that changed, photographed again with the purchases on them.
    for name, path in PAGES:
        if name in ("overview", "payments", "auto-refill", "alerts"):
            await page.open(f"{server.http_base}{path}")
            assert not await axe(page), (name, await axe(page))
            await photograph(page, name)

    # 5. Filter the history, then download what the filter shows.
    await page.open(f"{server.http_base}/portal/history")
    from selenium.webdriver.support.ui import Select

    await page.run(lambda: Select(page.driver.find_element("css selector", "#f-type")).select_by_value("spend"))
    await fill(page, "#f-category", "training")
    await page.click("form[aria-label='Filter transactions'] button")
    await page.wait_url(lambda u: "category=training" in u)
    rows = await page.text("#transactions tbody")
    assert "training" in rows and "sandbox" not in rows and "storage" not in rows
    href = await page.attr("#csv", "href")
    assert "category=training" in href and "type=spend" in href
    async with aiohttp.ClientSession(cookies=await browser_cookies(page)) as s, s.get(href) as r:
        assert r.status == 200
        body = await r.text()
    spends = await transactions(server, user, common_pb2.TRANSACTION_TYPE_SPEND)
    want = [as_csv(t) for t in reversed(spends) if t.category == "training"]
    assert csv_rows(body) == want and len(want) > 20

    # 8. A form posted from another site changes nothing.
    evil = web.Application()
    target = f"{server.http_base}/portal/auto-refill"

    async def lure(_: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<!doctype html><html lang="en"><title>Win</title><form method="post" action="{target}">'
            '<input type="hidden" name="threshold" value="1"><input type="hidden" name="amount" value="10">'
            '<input type="hidden" name="csrf" value="guess"><input type="hidden" name="request_id" value="r1">'
            '<button id="go" type="submit">Claim your prize</button></form></html>'))

    evil.router.add_get("/", lure)
    runner = web.AppRunner(evil)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await page.open(f"http://localhost:{port}/")  # another site than 127.0.0.1
        await page.click("#go")
        await page.wait_url(lambda u: "/portal/auto-refill" in u)
        assert await page.text("h1") in ("Session ended", "Request refused")
    finally:
        await runner.cleanup()
    got = await server.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=auth(user))
    assert got.auto_refill.enabled and got.auto_refill.threshold_millicredits == 20_000
    await page.open(f"{server.http_base}/portal/")  # the session itself still works
    assert "credits" in await page.text("#balance")

    # 7. A forged cookie reaches nothing.
    await page.run(page.driver.delete_all_cookies)
    await page.run(page.driver.add_cookie, {"name": "portal_session", "value": secrets.token_urlsafe(32)})
    for _, path in PAGES:
        await page.open(f"{server.http_base}{path}")
        assert await page.text("h1") == "Session ended"
        assert "pat" not in await page.text("body")

    # 6. An expired link is refused.
    stale = await portal_link(server, user)
    clock.advance(301)
    await page.open(local(server, stale.url))
    assert await page.text("h1") == "Link expired"
    assert not await axe(page)
    assert "credits" not in await page.text("body")
