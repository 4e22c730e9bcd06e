"""The portal's usage page shows spends priced from usage by meter and
dimension (quantity, operations, credits, average per unit), in a real
headless Chromium, on both databases; the page stays accessible (axe-core)."""

from __future__ import annotations

from flownexus.billing.v1 import usage_pb2

from tests.browser import Page
from tests.harness import Running
from tests.portal.portal import local, portal_link
from tests.portal.test_portal_browser import axe
from tests.pricing.usage_calls import SVC, spend_usage, used


async def test_usage_page_shows_meters_and_quantities(server: Running, page: Page) -> None:
    user = "meter-pat"
    await spend_usage(server, user, used("sandbox.seconds", 3_600, size="small"), "p1", category="sandbox")
    await spend_usage(server, user, used("sandbox.seconds", 900, size="large"), "p2", category="sandbox")
    await spend_usage(server, user, used("training.steps", 7, model="base"), "p3", category="training")
    await server.s.usage.Spend(usage_pb2.SpendRequest(user_id=user, amount_millicredits=50, request_id="p4"), metadata=SVC)
    link = await portal_link(server, user)
    await page.open(local(server, link.url))
    await page.wait_url(lambda u: u.endswith("/portal/"))
    await page.open(f"{server.http_base}/portal/usage")
    rows = (await page.text("#by-meter")).splitlines()
    # Meter, dimension, quantity, operations, credits, credits per unit.
    assert "sandbox.seconds all 4500 2 7.2 0.0016" in rows, rows
    assert "sandbox.seconds size=large 900 1 3.6 0.004" in rows, rows
    assert "sandbox.seconds size=small 3600 1 3.6 0.001" in rows, rows
    assert "training.steps model=base 7 1 0.175 0.025" in rows, rows
    assert not any("50" in r.split() for r in rows)  # the spend by amount has no meter
    assert not await axe(page)
