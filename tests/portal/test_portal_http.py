"""The portal's rules over plain HTTP (aiohttp client) on the real server, on
SQLite and PostgreSQL: who may create a session for which wallet; a link
opens once and expires; the cookie is HttpOnly and SameSite; a forged or
ended session reaches nothing; forms need the session's CSRF token and our
own origin; every value is escaped; a session has a rate limit; the CSV
export equals ListTransactions, filters included, across many pages; the
alerts page reads and sets what GetBalanceAlerts and SetBalanceAlerts do."""

from __future__ import annotations

import csv
import html
import io
import re
import secrets
import uuid
from datetime import datetime, timedelta

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    common_pb2,
    events_pb2,
    history_pb2,
    keys_pb2,
    payments_pb2,
    portal_pb2,
    usage_pb2,
)

from server.platform.clock import ManualClock
from tests.calls import FREE, spend, transactions
from tests.harness import Running, auth, error_info, expect_error, serving
from tests.keys.helpers import keys_stub
from tests.payments.test_topup import save_card
from tests.portal.portal import (
    browser_client,
    fetch,
    form_tokens,
    local,
    opened,
    opened_form,
    portal_link,
    post,
)
from tests.stripe_fake import StripeFake


async def test_a_service_creates_a_link_that_opens_once(server: Running) -> None:
    link = await portal_link(server, "alice", return_url="https://app.example.com/settings")
    assert link.user_id == "alice" and "alice" not in link.url
    assert link.url.startswith("http://localhost:8080/portal/open/")
    async with browser_client() as s:
        status, _, headers = await fetch(s, local(server, link.url))
        assert status == 303 and headers["Location"] == "/portal/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=3600" in cookie
        assert "Path=/" in cookie and "Secure" not in cookie  # plain http here; Secure over https
        status, body, headers = await fetch(s, f"{server.http_base}/portal/")
        assert status == 200
        assert f"{FREE // 1000} <span" in body and "https://app.example.com/settings" in body
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "'nonce-" in csp and "unsafe-inline" not in csp
        assert headers["Cache-Control"] == "no-store"
    async with browser_client() as s:  # the same link again, from anywhere: refused
        status, body, headers = await fetch(s, local(server, link.url))
        assert status == 410 and "Set-Cookie" not in headers
        assert (await fetch(s, f"{server.http_base}/portal/"))[0] == 401


async def test_a_link_expires_and_a_session_ends(server: Running, clock: ManualClock) -> None:
    link = await portal_link(server, "bob")
    clock.advance(301)  # BILLING_PORTAL_LINK_TTL_SECONDS is 300
    async with browser_client() as s:
        assert (await fetch(s, local(server, link.url)))[0] == 410
    async with browser_client() as s:
        await opened(server, s, "bob")
        assert (await fetch(s, f"{server.http_base}/portal/history"))[0] == 200
        clock.advance(3601)
        status, body, _ = await fetch(s, f"{server.http_base}/portal/history")
        assert status == 401 and "Session ended" in body


async def test_who_may_create_a_session(server: Running) -> None:
    mine = await portal_link(server, "carol", as_service=False)
    assert mine.user_id == "carol"
    req = portal_pb2.CreatePortalSessionRequest(user_id="dave", request_id=uuid.uuid4().hex)
    await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("carol")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    req = portal_pb2.CreatePortalSessionRequest(user_id="dave", org_id="org_" + "0" * 32, request_id=uuid.uuid4().hex)
    await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("svc", "service")),
                       grpc.StatusCode.INVALID_ARGUMENT, "ORG_PORTAL_UNSUPPORTED")
    for bad in ("http://app.example.com/", "http://127.0.0.1:3000/", "javascript:alert(1)", "https://u:p@x.com/",
                "https:///nohost", "ftp://x.com/", "https://x.com/\nSet-Cookie: a=b"):
        req = portal_pb2.CreatePortalSessionRequest(user_id="dave", return_url=bad, request_id=uuid.uuid4().hex)
        await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("svc", "service")),
                           grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RETURN_URL")
    req = portal_pb2.CreatePortalSessionRequest(user_id="dave", request_id="")
    await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("svc", "service")),
                       grpc.StatusCode.INVALID_ARGUMENT, "MISSING_REQUEST_ID")
    # The same request again: the same link; other parameters: refused.
    rid = uuid.uuid4().hex
    first = await portal_link(server, "dave", request_id=rid)
    assert (await portal_link(server, "dave", request_id=rid)).url == first.url
    req = portal_pb2.CreatePortalSessionRequest(user_id="erin", request_id=rid)
    await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("platform", "service")),
                       grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_http_return_url_on_loopback_only_when_allowed(db_url: str, clock: ManualClock) -> None:
    async with serving(db_url, clock, portal_allow_http_loopback=True) as server:
        link = await portal_link(server, "frank", return_url="http://127.0.0.1:3000/back")
        assert link.url
        req = portal_pb2.CreatePortalSessionRequest(user_id="frank", return_url="http://example.com/",
                                                    request_id=uuid.uuid4().hex)
        await expect_error(server.s.portal.CreatePortalSession(req, metadata=auth("svc", "service")),
                           grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RETURN_URL")


async def test_a_forged_cookie_reaches_nothing(server: Running) -> None:
    await spend(server, "gina", 5_000, uuid.uuid4().hex, category="secret-project")
    async with browser_client() as real:
        await opened(server, real, "gina")
        assert "secret-project" in (await fetch(real, f"{server.http_base}/portal/history"))[1]
    pages = ("/portal/", "/portal/usage", "/portal/history", "/portal/history.csv", "/portal/payments",
             "/portal/buy", "/portal/auto-refill", "/portal/plan", "/portal/keys", "/portal/alerts")
    for forged in (secrets.token_urlsafe(32), "x", "gina", "wallet:gina", ""):
        async with browser_client() as s:
            for path in pages:
                status, body, _ = await fetch(s, f"{server.http_base}{path}", cookies={"portal_session": forged})
                assert status == 401 and "secret-project" not in body and "gina" not in body, (forged, path)
            status, _, _ = await post(s, f"{server.http_base}/portal/auto-refill",
                                      {"enabled": "on", "threshold": "10", "amount": "10", "csrf": "x", "request_id": "r"},
                                      cookies={"portal_session": forged})
            assert status == 401


async def test_forms_need_the_token_and_our_origin(server: Running) -> None:
    async with browser_client() as s:
        url, fields = await opened_form(server, s, "hank", "/portal/auto-refill")
        fields = {**fields, "threshold": "20", "amount": "15"}  # enabled off: always allowed
        for bad in ({**fields, "csrf": ""}, {**fields, "csrf": fields["csrf"][:-2] + "AA"},
                    {k: v for k, v in fields.items() if k != "csrf"}):
            assert (await post(s, url, bad))[0] == 403
        assert (await post(s, url, fields, headers={"Origin": "https://evil.example"}))[0] == 403
        assert (await post(s, url, fields, headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
        status, _, headers = await post(s, url, fields, headers={"Origin": server.http_base,
                                                                 "Sec-Fetch-Site": "same-origin"})
        assert status == 303 and headers["Location"] == "/portal/auto-refill?done=refill-saved"
        # Another session's token is not this session's.
        async with browser_client() as other:
            await opened(server, other, "ivan")
            theirs = await form_tokens(other, url)
        assert (await post(s, url, {**fields, "csrf": theirs["csrf"]}))[0] == 403


async def test_values_are_escaped(server: Running) -> None:
    evil = '<script>alert("x")</script>'
    user = "judy"
    await spend(server, user, 1_000, uuid.uuid4().hex, category="sandbox", description=evil)
    async with browser_client() as s:
        await opened(server, s, user)
        status, body, _ = await fetch(s, f"{server.http_base}/portal/history")
        assert status == 200 and "<script>" not in body and "&lt;script&gt;alert(&#34;x&#34;)" in body
        _, body, _ = await fetch(s, f"{server.http_base}/portal/history?category=%3Cb%3E")
        assert "<b>" not in body and 'value="&lt;b&gt;"' in body


async def test_a_session_has_a_rate_limit(db_url: str, clock: ManualClock) -> None:
    async with serving(db_url, clock, portal_rate_per_second=0.01, portal_rate_burst=3) as server:
        async with browser_client() as s, browser_client() as other:
            await opened(server, s, "kim")
            await opened(server, other, "lee")
            codes = [(await fetch(s, f"{server.http_base}/portal/plan"))[0] for _ in range(5)]
            assert codes == [200, 200, 200, 429, 429]
            assert (await fetch(other, f"{server.http_base}/portal/plan"))[0] == 200  # per session


def csv_rows(body: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == ["id", "date", "type", "amount_millicredits", "balance_after_millicredits", "category",
                       "description"]
    return rows[1:]


def as_csv(t: common_pb2.Transaction) -> list[str]:
    """A transaction as the CSV must show it: every field ListTransactions gives."""
    return [t.id, t.date.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ"), common_pb2.TransactionType.Name(t.type),
            str(t.amount_millicredits), str(t.balance_after_millicredits), t.category, t.description]


async def test_csv_export_equals_list_transactions(server: Running, clock: ManualClock) -> None:
    from server.portal import pages

    user = "mia"
    for i in range(23):
        await spend(server, user, 100 + i, uuid.uuid4().hex, category="train" if i % 3 else "sandbox",
                    description=f"job {i}")
        clock.advance(3600)
    pages.CSV_PAGE, before = 5, pages.CSV_PAGE  # many pages of the export
    try:
        async with browser_client() as s:
            await opened(server, s, user)
            status, body, headers = await fetch(s, f"{server.http_base}/portal/history.csv")
            assert status == 200 and headers["Content-Type"].startswith("text/csv")
            assert "attachment" in headers["Content-Disposition"]
            every = await transactions(server, user)  # oldest first
            assert csv_rows(body) == [as_csv(t) for t in reversed(every)]
            assert len(every) == 24  # the free allowance and 23 spends

            _, body, _ = await fetch(s, f"{server.http_base}/portal/history.csv?category=sandbox&type=spend")
            want = [as_csv(t) for t in reversed(every) if t.category == "sandbox"]
            assert csv_rows(body) == want and len(want) == 8

            spends = await transactions(server, user, common_pb2.TRANSACTION_TYPE_SPEND)
            _, body, _ = await fetch(s, f"{server.http_base}/portal/history.csv?type=spend")
            assert csv_rows(body) == [as_csv(t) for t in reversed(spends)]

            # A date window, as ListTransactions' start_time/end_time give it.
            day = every[5].date.ToDatetime().date()
            req = history_pb2.ListTransactionsRequest(user_id=user, page_size=100)
            req.start_time.FromDatetime(datetime(day.year, day.month, day.day))
            req.end_time.FromDatetime(datetime(day.year, day.month, day.day) + timedelta(days=1))
            listed = (await server.s.history.ListTransactions(req, metadata=auth(user))).transactions
            _, body, _ = await fetch(s, f"{server.http_base}/portal/history.csv?from={day}&to={day}")
            assert csv_rows(body) == [as_csv(t) for t in listed] and listed
    finally:
        pages.CSV_PAGE = before


async def test_https_cookie_and_frame_ancestors_follow_the_settings(db_url: str, clock: ManualClock) -> None:
    async with serving(db_url, clock, public_base_url="https://billing.example.com",
                       portal_frame_ancestors="https://app.example.com") as server:
        link = await portal_link(server, "nina")
        assert link.url.startswith("https://billing.example.com/portal/open/")
        async with browser_client() as s:
            status, _, headers = await fetch(s, local(server, link.url))
            assert status == 303
            cookie = headers["Set-Cookie"]
            assert cookie.startswith("__Host-portal_session=") and "Secure" in cookie and "HttpOnly" in cookie
            status, _, headers = await fetch(s, f"{server.http_base}/portal/open/{'A' * 43}")
            assert status == 410 and "frame-ancestors https://app.example.com" in headers["Content-Security-Policy"]


async def test_actions_follow_the_services_rules(stripe_server: Running, stripe_fake: StripeFake) -> None:
    """The portal's forms answer what the RPCs answer: the same amount limits,
    the same saved-card rule, the same pause on a flagged account."""
    server, user = stripe_server, "olga"
    async with browser_client() as s:
        await opened(server, s, user)
        buy = f"{server.http_base}/portal/buy"
        fields = await form_tokens(s, buy)
        status, body, _ = await post(s, buy, {**fields, "amount": "5"})  # below the $10 minimum
        assert status == 400 and "INVALID_AMOUNT" in body
        status, body, _ = await post(s, buy, {**fields, "amount": "ten"})
        assert status == 400 and "INVALID_AMOUNT" in body
        status, body, _ = await post(s, f"{server.http_base}/portal/top-up", {**fields, "amount": "10"})
        assert status == 409 and "PAYMENT_METHOD_REQUIRED" in body  # no card saved yet
        refill = f"{server.http_base}/portal/auto-refill"
        status, body, _ = await post(s, refill, {**fields, "enabled": "on", "threshold": "20", "amount": "10"})
        assert status == 409 and "PAYMENT_METHOD_REQUIRED" in body

        await save_card(server, stripe_fake, user, "pm_card_visa")
        fields = await form_tokens(s, refill)
        status, _, _ = await post(s, refill, {**fields, "enabled": "on", "threshold": "20", "amount": "10"})
        assert status == 303
        _, body, _ = await fetch(s, f"{server.http_base}/portal/")
        assert 'id="refill-state">On<' in body
        # An admin flags the account: refill pauses, and the overview says why and where to fix it.
        req = admin_pb2.SetAccountFlagRequest(user_id=user, flag=admin_pb2.ACCOUNT_FLAG_DISPUTED,
                                              reason="chargeback review", request_id=uuid.uuid4().hex)
        await server.s.admin.SetAccountFlag(req, metadata=auth("ops", "admin"))
        _, body, _ = await fetch(s, f"{server.http_base}/portal/")
        assert 'id="refill-state">Paused<' in body and "account flagged" in body
        assert 'href="/portal/auto-refill">Fix it' in body


async def test_history_and_payments_pages_follow_their_older_links(
    stripe_server: Running, stripe_fake: StripeFake, clock: ManualClock
) -> None:
    from server.portal import pages

    server, user = stripe_server, "pia"
    await save_card(server, stripe_fake, user, "pm_card_visa")
    for i in range(7):
        await spend(server, user, 100 + i, uuid.uuid4().hex, category="sandbox")
        req = payments_pb2.TopUpRequest(amount_cents=1_000 + i * 100, request_id=uuid.uuid4().hex)
        await server.s.payments.TopUp(req, metadata=auth(user))
        clock.advance(60)
    pages.PAGE_SIZE, before = 3, pages.PAGE_SIZE
    try:
        async with browser_client() as s:
            await opened(server, s, user)
            for path, row, want in (
                ("/portal/history", re.compile(r'<tr data-id="(\d+)">'),
                 [t.id for t in reversed(await transactions(server, user))]),
                ("/portal/payments", re.compile(r'<td class="num">\$(\d+\.\d\d)</td>'),
                 [f"{10 + i}.00" for i in range(6, -1, -1)]),
            ):
                seen: list[str] = []
                url = f"{server.http_base}{path}"
                while url:
                    status, body, _ = await fetch(s, url)
                    assert status == 200, body
                    page_rows = row.findall(body)
                    assert len(page_rows) <= 3
                    seen += page_rows
                    older = re.search(r'href="(/portal/(?:history|payments)\?[^"]*before=[^"]+)">Older', body)
                    url = f"{server.http_base}{html.unescape(older.group(1))}" if older else ""
                assert seen == want, path
    finally:
        pages.PAGE_SIZE = before


async def test_keys_page_creates_and_revokes_through_the_keys_service(server: Running) -> None:
    user = "quinn"
    async with browser_client() as s:
        url, fields = await opened_form(server, s, user, "/portal/keys")
        status, body, _ = await post(s, url, {**fields, "label": "nightly <job>", "budget_day": "25"})
        assert status == 200 and "shown only this once" in body and "nightly &lt;job&gt;" in body
        secret = re.search(r'<code id="new-secret">([^<]+)</code>', body)
        assert secret
        listed = (await keys_stub(server).ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(user))).keys
        assert [(k.label, [(b.window, b.limit_millicredits) for b in k.budgets]) for k in listed] == [
            ("nightly <job>", [(keys_pb2.BUDGET_WINDOW_DAY, 25_000)])]
        # The secret spends from this wallet: it is a real key.
        spent = await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=1_000, request_id=uuid.uuid4().hex),
            metadata=(("authorization", f"Bearer {html.unescape(secret.group(1))}"),))
        assert spent.credits_millicredits == FREE - 1_000
        _, body, _ = await fetch(s, url)
        assert "new-secret" not in body and html.unescape(secret.group(1)) not in body  # shown once only
        assert "day: 1 of 25" in body
        fields = await form_tokens(s, url)
        status, _, _ = await post(s, f"{url}/revoke", {**fields, "key_id": listed[0].id})
        assert status == 303
        got = await keys_stub(server).GetKey(keys_pb2.GetKeyRequest(key_id=listed[0].id), metadata=auth(user))
        assert got.key.HasField("revoke_time")
        # Another wallet's key cannot be revoked from this session.
        other = await keys_stub(server).CreateKey(
            keys_pb2.CreateKeyRequest(label="theirs", request_id=uuid.uuid4().hex,
                                      budgets=[keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_DAY, limit_millicredits=1)]), metadata=auth("rita"))
        fields = await form_tokens(s, url)
        status, _, _ = await post(s, f"{url}/revoke", {**fields, "key_id": other.key.id})
        assert status in (403, 404)
        got = await keys_stub(server).GetKey(keys_pb2.GetKeyRequest(key_id=other.key.id), metadata=auth("rita"))
        assert not got.key.HasField("revoke_time")


async def get_alerts(server: Running, user: str) -> events_pb2.BalanceAlerts:
    return (await server.s.events.GetBalanceAlerts(events_pb2.GetBalanceAlertsRequest(), metadata=auth(user))).alerts


def shown_alerts(body: str) -> tuple[str, str, str]:
    found = [re.search(rf'<dd id="alerts-{k}">([^<]*)</dd>', body) for k in ("thresholds", "expiry", "forecast")]
    assert all(found), body
    return tuple(m.group(1) for m in found if m)  # type: ignore[return-value]


async def test_alerts_page_shows_the_defaults_and_the_wallets_events(server: Running) -> None:
    user = "sam"
    want = await get_alerts(server, user)
    assert want.defaults and len(want.thresholds_millicredits) == 1
    # Below the default threshold: a balance.low event, as ListEvents gives it.
    await spend(server, user, FREE - want.thresholds_millicredits[0] + 1_000, uuid.uuid4().hex)
    listed = (await server.s.events.ListEvents(events_pb2.ListEventsRequest(), metadata=auth(user))).events
    assert [e.type for e in listed] == ["balance.low"]
    async with browser_client() as s:
        await opened(server, s, user)
        status, body, headers = await fetch(s, f"{server.http_base}/portal/alerts")
        assert status == 200 and "'nonce-" in headers["Content-Security-Policy"]
        assert 'href="/portal/alerts" aria-current="page"' in body
        assert "These are the <strong>defaults</strong>" in body
        assert shown_alerts(body) == (
            f"{want.thresholds_millicredits[0] // 1000} credits",
            f"{want.expiry_lead_seconds // 3600} hours before credits expire",
            f"when fewer than {want.forecast_days} days of credits are left",
        )
        assert re.findall(r'<tr data-id="(evt_\d+)">', body) == [e.id for e in listed]
        assert "<code>balance.low</code>" in body


async def test_alerts_form_sets_what_get_balance_alerts_returns(server: Running) -> None:
    user = "tara"
    async with browser_client() as s:
        url, fields = await opened_form(server, s, user, "/portal/alerts")
        form = {**fields, "thresholds": "20, 500,100", "expiry_lead_hours": "48", "forecast_days": "7"}
        status, _, headers = await post(s, url, form)
        assert status == 303 and headers["Location"] == "/portal/alerts?done=alerts-saved"
        got = await get_alerts(server, user)
        assert (list(got.thresholds_millicredits), got.expiry_lead_seconds, got.forecast_days, got.defaults) == (
            [500_000, 100_000, 20_000], 48 * 3600, 7, False)
        assert (await post(s, url, form))[0] == 303  # the same request again: one action
        _, body, _ = await fetch(s, f"{server.http_base}{headers['Location']}")
        assert "Alert settings saved." in body and "your own settings" in body
        assert shown_alerts(body) == ("500 credits, 100 credits, 20 credits", "48 hours before credits expire",
                                      "when fewer than 7 days of credits are left")
        # Back to the defaults, through the same form's reset.
        fields = await form_tokens(s, url)
        assert (await post(s, url, {**fields, "reset": "on"}))[0] == 303
        assert (await get_alerts(server, user)).defaults
        # An empty list turns balance alerts off, as an empty thresholds_millicredits does.
        fields = await form_tokens(s, url)
        assert (await post(s, url, {**fields, "thresholds": "", "expiry_lead_hours": "0", "forecast_days": "0"}))[0] == 303
        got = await get_alerts(server, user)
        assert (list(got.thresholds_millicredits), got.expiry_lead_seconds, got.forecast_days, got.defaults) == (
            [], 0, 0, False)


async def test_an_invalid_threshold_gives_the_rpcs_error_and_changes_nothing(server: Running) -> None:
    user = "uma"
    before = await get_alerts(server, user)
    async with browser_client() as s:
        await opened(server, s, user)
        url = f"{server.http_base}/portal/alerts"
        for credits in ([100, 100], [0], list(range(1, 12))):
            try:
                await server.s.events.SetBalanceAlerts(events_pb2.SetBalanceAlertsRequest(
                    thresholds_millicredits=[c * 1000 for c in credits], forecast_days=3, request_id=uuid.uuid4().hex,
                ), metadata=auth(user))
                raise AssertionError(f"SetBalanceAlerts took {credits}")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                rpc_message, rpc_reason = exc.details() or "", error_info(exc).reason
            fields = await form_tokens(s, url)
            status, body, _ = await post(s, url, {**fields, "thresholds": ", ".join(map(str, credits)),
                                                  "expiry_lead_hours": "72", "forecast_days": "3"})
            assert status == 400 and rpc_message and html.escape(rpc_message, quote=False) in body, (credits, body)
            assert f"Reason code: {rpc_reason}" in body
        status, body, _ = await post(s, url, {**fields, "thresholds": "ten", "expiry_lead_hours": "72",
                                              "forecast_days": "3"})
        assert status == 400 and "INVALID_AMOUNT" in body
    assert await get_alerts(server, user) == before


async def test_a_cross_site_alerts_post_is_refused(server: Running) -> None:
    user = "vera"
    before = await get_alerts(server, user)
    async with browser_client() as s:
        url, fields = await opened_form(server, s, user, "/portal/alerts")
        fields = {**fields, "thresholds": "40", "expiry_lead_hours": "1", "forecast_days": "1"}
        assert (await post(s, url, fields, headers={"Origin": "https://evil.example"}))[0] == 403
        assert (await post(s, url, fields, headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
        assert (await post(s, url, {**fields, "csrf": ""}))[0] == 403
        assert await get_alerts(server, user) == before
        # The same form from our own origin goes through.
        status, _, _ = await post(s, url, fields, headers={"Origin": server.http_base, "Sec-Fetch-Site": "same-origin"})
        assert status == 303 and list((await get_alerts(server, user)).thresholds_millicredits) == [40_000]
