"""The billing portal's pages on the HTTP listener (under /portal/).

A portal link (`/portal/open/{token}`) opens once and sets the session cookie
(HttpOnly, SameSite=Lax, Secure over https). Every page then acts as that
session's user through the domains' public services, exactly as a gRPC call
with that user's token would: no rule of theirs is repeated here.

Safety: every form carries the session's CSRF token and a request_id (a
double submit is one action), a post from another site is refused (Origin and
Sec-Fetch-Site), the Content-Security-Policy allows only this response's
nonce, templates escape every value, and each session has a rate limit. The
pages need no script at all."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from flownexus.billing.v1 import (
    common_pb2,
    events_pb2,
    keys_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
)

from server.balance.service import BalanceService
from server.events.models import event_name
from server.events.service import EventsService
from server.grpc import convert, validation
from server.history.service import HistoryService, forecast
from server.keys.models import BudgetLimit, Window
from server.keys.service import KeyFields, KeysService, check_key_id
from server.ledger import keys
from server.ledger.model import Kind, LotKind, TransferView
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.auth import Principal
from server.platform.ratelimit import RateLimiter
from server.portal.charts import credits_label, daily_chart, per_unit_label
from server.portal.models import COOKIE, SECURE_COOKIE, PortalSession
from server.portal.service import PortalService
from server.refill.service import RefillService
from server.tiers.service import TierService

log = logging.getLogger(__name__)

PAGE_SIZE = 50
CSV_PAGE = 500
DAY_US = 86_400_000_000
CSV_FIELDS = ("id", "date", "type", "amount_millicredits", "balance_after_millicredits", "category", "description")
# What a redirect back to a page may say (never text taken from the request).
DONE = {
    "alerts-saved": "Alert settings saved.",
    "refill-saved": "Auto-refill settings saved.",
    "topped-up": "Top-up paid: the credits are on your balance.",
    "upgraded": "Your plan was changed.",
}
HTTP_STATUS = {
    errors.Code.INVALID_ARGUMENT: 400, errors.Code.FAILED_PRECONDITION: 409, errors.Code.PERMISSION_DENIED: 403,
    errors.Code.NOT_FOUND: 404, errors.Code.RESOURCE_EXHAUSTED: 429, errors.Code.UNAUTHENTICATED: 401,
}
NAV = (
    ("overview", "/portal/", "Overview"), ("usage", "/portal/usage", "Usage"),
    ("history", "/portal/history", "History"), ("payments", "/portal/payments", "Payments"),
    ("buy", "/portal/buy", "Buy credits"), ("refill", "/portal/auto-refill", "Auto-refill"),
    ("plan", "/portal/plan", "Plan"), ("keys", "/portal/keys", "Keys"), ("alerts", "/portal/alerts", "Alerts"),
)
# The alerts page lists this many of the wallet's latest events.
RECENT_EVENTS = 50


@dataclass
class Domains:
    """The services the pages call, the same objects the gRPC servicers call."""

    balance: BalanceService
    history: HistoryService
    payments: PaymentsService
    refill: RefillService
    tiers: TierService
    keys: KeysService
    events: EventsService


@dataclass
class Ctx:
    request: web.Request
    session: PortalSession
    principal: Principal
    nonce: str
    csrf: str
    form: dict[str, str]


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


# ---- formatting (template filters) ---------------------------------------------------------


def money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def when(us: int, fmt: str = "%Y-%m-%d") -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime(fmt) if us else ""


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("server.portal", "templates"),
        autoescape=True,  # every value, in every template
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(credits=credits_label, money=money, when=when)


# ---- input ---------------------------------------------------------------------------------


def dollars_to_cents(text: str) -> int:
    """"25", "25.5" or "25.50" -> 2550; anything else is INVALID_AMOUNT."""
    whole, _, frac = text.strip().removeprefix("$").partition(".")
    if not whole.isdigit() or len(whole) > 9 or (frac and (not frac.isdigit() or len(frac) > 2)):
        raise errors.InvalidAmount("enter an amount in dollars, such as 25 or 25.50")
    return int(whole) * 100 + int((frac or "0").ljust(2, "0"))


def whole_credits(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 12:
        raise errors.InvalidAmount(f"enter the {what} as a whole number of credits")
    return int(text) * 1000


def whole_number(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 9:
        raise errors.InvalidArgument(f"enter the {what} as a whole number", reason="INVALID_ALERTS")
    return int(text)


def day_start(text: str, field: str) -> int | None:
    if not text:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise errors.InvalidArgument(f"{field} must be a date such as 2026-01-31", reason="INVALID_TIME_RANGE") from None
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000


@dataclass
class Filters:
    """History's filters, from the query string."""

    kind: str = ""
    category: str = ""
    start: str = ""
    end: str = ""

    @classmethod
    def of(cls, q: Any) -> Filters:
        f = cls(q.get("type", ""), q.get("category", "").strip()[:64], q.get("from", ""), q.get("to", ""))
        if f.kind and f.kind not in {k.value for k in Kind}:
            raise errors.InvalidArgument("unknown transaction type", reason="INVALID_ENUM_VALUE")
        return f

    def query(self, **more: str) -> str:
        items = {"type": self.kind, "category": self.category, "from": self.start, "to": self.end, **more}
        return urlencode({k: v for k, v in items.items() if v})

    def args(self) -> dict[str, Any]:
        end = day_start(self.end, "to")
        return {
            "kinds": [Kind(self.kind)] if self.kind else [],
            "category": self.category or None,
            "start_us": day_start(self.start, "from"),
            "end_us": end + DAY_US if end is not None else None,  # the "to" day is included
        }


def csv_row(t: TransferView) -> list[str]:
    """One transaction as ListTransactions gives it; text cells that a
    spreadsheet would run as a formula are prefixed with a quote."""

    def cell(s: str) -> str:
        return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s

    return [str(t.id), iso(t.created_at_us), common_pb2.TransactionType.Name(convert.kind_pb(t.kind)),
            str(t.amount), str(t.balance_after), cell(t.category), cell(t.description)]


# ---- responses ---------------------------------------------------------------------------


class Guard:
    """Session, rate limit, CSRF and headers around every page."""

    def __init__(self, service: PortalService) -> None:
        self.service = service
        s = service.settings
        self.limiter = RateLimiter(s.portal_rate_per_second, s.portal_rate_burst)
        self.frame_ancestors = s.portal_frame_ancestors.strip() or "'none'"
        # Forms may lead to Stripe's hosted pages (Checkout, card setup).
        origins = {"https://checkout.stripe.com"}
        if s.stripe_api_base:
            p = urlsplit(s.stripe_api_base)
            origins.add(f"{p.scheme}://{p.netloc}")
        self.form_action = " ".join(["'self'", *sorted(origins)])

    def secure(self, resp: web.StreamResponse, nonce: str = "") -> web.StreamResponse:
        src = f"'nonce-{nonce}'" if nonce else "'none'"
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src {src}; img-src 'self'; form-action {self.form_action}; "
            f"base-uri 'none'; frame-ancestors {self.frame_ancestors}"
        )
        resp.headers["Cache-Control"] = "no-store"
        # Our own forms keep their Origin; other sites (Stripe, the return URL) get no referrer.
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    def render(self, request: web.Request, name: str, context: dict[str, Any], *, status: int = 200,
               nonce: str = "") -> web.StreamResponse:
        import secrets

        nonce = nonce or secrets.token_urlsafe(16)
        context.setdefault("nav", NAV)
        context.setdefault("active", "")
        context.setdefault("csrf", "")
        context.setdefault("session", None)
        context.setdefault("done", "")
        resp = aiohttp_jinja2.render_template(name, request, {**context, "nonce": nonce}, status=status)
        return self.secure(resp, nonce)

    def refused(self, request: web.Request, title: str, message: str, status: int) -> web.StreamResponse:
        return self.render(request, "refused.html", {"title": title, "message": message}, status=status)

    def cookie(self, request: web.Request) -> str:
        return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE) or ""

    def same_site(self, request: web.Request) -> bool:
        """A form post from our own pages: a browser says where it came from."""
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site != "same-origin":
            return False
        origin = request.headers.get("Origin")
        if origin is None or (origin == "null" and fetch_site == "same-origin"):
            return True  # an old browser, or a privacy setting; the CSRF token still decides
        own = {f"{request.scheme}://{request.host}"}
        base = urlsplit(self.service.settings.public_base_url)
        own.add(f"{base.scheme}://{base.netloc}")
        return origin in own

    def page(self, handler: Handler, *, post: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            import secrets

            session = await self.service.session(self.cookie(request))
            if session is None:
                return self.refused(request, "Session ended", "This portal session has ended or is not valid. "
                                    "Open the billing portal again from the app.", 401)
            wait = self.limiter.acquire(session.cookie_hash)
            if wait > 0:
                resp = self.refused(request, "Too many requests", "Please wait a moment and try again.", 429)
                resp.headers["Retry-After"] = str(max(1, round(wait)))
                return resp
            form: dict[str, str] = {}
            if post:
                if not self.same_site(request):
                    return self.refused(request, "Request refused", "This form was sent from another site.", 403)
                form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
                if not self.service.csrf_ok(session, form.get("csrf", "")):
                    return self.refused(request, "Request refused", "This form has expired or was not sent from "
                                        "the portal. Go back, reload the page and try again.", 403)
            ctx = Ctx(request, session, self.service.principal(session), secrets.token_urlsafe(16),
                      self.service.csrf_token(session), form)
            try:
                return await handler(ctx)
            except errors.DomainError as exc:
                status = HTTP_STATUS.get(exc.code, 503)
                log.info("portal action refused", extra={"reason": exc.reason})
                return self.render(request, "refused.html", {
                    "title": "That did not work", "message": exc.message, "reason": exc.reason,
                    "csrf": ctx.csrf, "session": session,
                }, status=status, nonce=ctx.nonce)

        return run




# ---- routes ----------------------------------------------------------------------------------


def page_routes(service: PortalService, d: Domains) -> list[web.RouteDef]:
    guard = Guard(service)
    settings = service.settings

    def render(ctx: Ctx, name: str, active: str, **context: Any) -> web.StreamResponse:
        done = DONE.get(ctx.request.query.get("done", ""), "")
        return guard.render(ctx.request, name, {
            "active": active, "csrf": ctx.csrf, "session": ctx.session, "done": done,
            "request_id": uuid.uuid4().hex, **context,
        }, nonce=ctx.nonce)

    async def open_link(request: web.Request) -> web.StreamResponse:
        opened = await service.open(request.match_info["token"])
        if opened is None:
            return guard.refused(request, "Link expired", "This portal link has expired or was already used. "
                                 "Links work once, for a few minutes: open the billing portal again from the app.", 410)
        cookie, _ = opened
        resp = web.HTTPSeeOther("/portal/")
        https = request.secure or settings.public_base_url.startswith("https://")
        resp.set_cookie(SECURE_COOKIE if https else COOKIE, cookie, max_age=settings.portal_session_ttl_seconds,
                        path="/", httponly=True, samesite="Lax", secure=https)
        guard.secure(resp)
        raise resp

    async def overview(ctx: Ctx) -> web.StreamResponse:
        p = ctx.principal
        state = await d.balance.get_balance(p, "")
        refill = await d.refill.get(p, "")
        tier = await d.tiers.get(p, "")
        _, rows, _, start, end = await d.history.spending_report(p, "", None, None)
        burn, days_left = forecast(sum(r[1] for r in rows), start, end, d.history.clock.now_us(), state.credits)
        split = {k: 0 for k in LotKind}
        for lot in state.lots:
            split[LotKind(lot["kind"])] += lot["remaining"]
        now = d.history.clock.now_us()
        runs_out = now + int(days_left * DAY_US) if days_left >= 0 else 0
        return render(ctx, "overview.html", "overview", state=state, refill=refill, tier=tier, split=split,
                      lots=state.lots, burn=burn, days_left=days_left, runs_out=runs_out,
                      spent_30=sum(r[1] for r in rows))

    async def usage(ctx: Ctx) -> web.StreamResponse:
        days = 90 if ctx.request.query.get("days") == "90" else 30
        start, rows = await d.history.daily_spending(ctx.principal, "", days)
        _, cats, by_key, start, end = await d.history.spending_report(ctx.principal, "", start, None)
        per_op = [(c, s, n, s // n if n else 0) for c, s, n in cats]
        # Spends priced from usage, by meter and dimension value (averages rounded down).
        meters: list[tuple[str, str, int, int, int, str]] = []
        for m in await d.history.spending_by_meter(ctx.principal, "", "", start, end):
            meters.append((m.meter, "all", m.quantity, m.operations, m.spent, per_unit_label(m.spent, m.quantity)))
            meters.extend(
                (m.meter, f"{dim}={value}", t.quantity, t.operations, t.spent, per_unit_label(t.spent, t.quantity))
                for (dim, value), t in sorted(m.dimensions.items())
            )
        return render(ctx, "usage.html", "usage", chart=daily_chart(start, days, rows), days=days, per_op=per_op,
                      by_key=[(k, s, n) for k, s, n in by_key if k], meters=meters)

    async def history(ctx: Ctx) -> web.StreamResponse:
        f = Filters.of(ctx.request.query)
        before = ctx.request.query.get("before", "")
        before_id = int(before) if before.isdigit() and len(before) < 19 else None
        rows, resume = await d.history.history(
            ctx.principal, user_id="", limit=PAGE_SIZE + 1, before_id=before_id, **f.args())
        # A filtered page may stop short at its bound of rows examined: "Older" resumes there.
        older_id = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else resume
        older = f.query(before=str(older_id)) if older_id is not None else ""
        return render(ctx, "history.html", "history", rows=rows[:PAGE_SIZE], f=f, kinds=[k.value for k in Kind],
                      older=older, csv=f.query(), first=bool(before_id))

    async def history_csv(ctx: Ctx) -> web.StreamResponse:
        f = Filters.of(ctx.request.query)
        args = f.args()
        resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                           "Content-Disposition": 'attachment; filename="transactions.csv"'})
        guard.secure(resp)
        await resp.prepare(ctx.request)
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(CSV_FIELDS)
        before: int | None = None
        while True:  # page by page: memory holds one page, whatever the history's length
            rows, resume = await d.history.history(
                ctx.principal, user_id="", limit=CSV_PAGE, before_id=before, **args)
            for t in rows:
                out.writerow(csv_row(t))
            await resp.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
            if len(rows) == CSV_PAGE:
                before = rows[-1].id
            elif resume is not None:  # stopped at its bound of rows examined: the rest lies past it
                before = resume
            else:
                break
        await resp.write_eof()
        return resp

    async def payments(ctx: Ctx) -> web.StreamResponse:
        before_q = ctx.request.query.get("before", "")
        at, _, pid = before_q.partition(".")
        before = (int(at), pid) if at.isdigit() and len(at) < 19 and keys.is_server_id(pid) else None
        rows = await d.payments.list(ctx.principal, "", limit=PAGE_SIZE + 1, before=before)
        older = ""
        if len(rows) > PAGE_SIZE:
            last = rows[PAGE_SIZE - 1]
            older = urlencode({"before": f"{last['created_at_us']}.{last['id']}"})
        return render(ctx, "payments.html", "payments", rows=rows[:PAGE_SIZE], older=older)

    async def buy(ctx: Ctx) -> web.StreamResponse:
        refill = await d.refill.get(ctx.principal, "")
        return render(ctx, "buy.html", "buy", refill=refill, rate=settings.credits_per_usd,
                      min_cents=settings.min_purchase_cents, max_cents=settings.max_purchase_cents)

    def amount_request(ctx: Ctx, method: str, message: Any) -> dict[str, Any]:
        """A form's amount as the RPC `method` takes it, fingerprinted as its request would be."""
        cents = dollars_to_cents(ctx.form.get("amount", ""))
        return {"amount_cents": cents, "request_id": validation.request_id(ctx.form.get("request_id", "")),
                "fingerprint": validation.fingerprint(method, message(amount_cents=cents))}

    async def buy_post(ctx: Ctx) -> web.StreamResponse:
        req = amount_request(ctx, "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest)
        link = await d.payments.create_link(ctx.principal, **req)
        return see_other(link.payment_url)

    async def top_up(ctx: Ctx) -> web.StreamResponse:
        done = await d.payments.top_up(ctx.principal, **amount_request(ctx, "TopUp", payments_pb2.TopUpRequest))
        if done.payment_url:  # the bank wants the card holder: finish on Stripe's page
            return see_other(done.payment_url)
        return see_other("/portal/?done=topped-up")

    async def auto_refill(ctx: Ctx) -> web.StreamResponse:
        refill = await d.refill.get(ctx.principal, "")
        return render(ctx, "refill.html", "refill", refill=refill, rate=settings.credits_per_usd)

    async def auto_refill_post(ctx: Ctx) -> web.StreamResponse:
        enabled = ctx.form.get("enabled") == "on"
        threshold = whole_credits(ctx.form.get("threshold", ""), "threshold")
        cents = dollars_to_cents(ctx.form.get("amount", ""))
        req = refill_pb2.ConfigureAutoRefillRequest(enabled=enabled, threshold_millicredits=threshold, amount_cents=cents)
        await d.refill.configure(
            ctx.principal, enabled=enabled, threshold=threshold, amount_cents=cents,
            request_id=validation.request_id(ctx.form.get("request_id", "")),
            fingerprint=validation.fingerprint("ConfigureAutoRefill", req),
        )
        return see_other("/portal/auto-refill?done=refill-saved")

    async def card(ctx: Ctx) -> web.StreamResponse:
        url, _ = await d.refill.setup_link(ctx.principal, validation.request_id(ctx.form.get("request_id", "")))
        return see_other(url)

    async def plan(ctx: Ctx) -> web.StreamResponse:
        view = await d.tiers.get(ctx.principal, "")
        return render(ctx, "plan.html", "plan", tier=view, tiers=list(d.tiers.tiers.values()))

    async def upgrade(ctx: Ctx) -> web.StreamResponse:
        req = tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO)
        change = await d.tiers.upgrade(
            ctx.principal, user_id="", tier="pro", request_id=validation.request_id(ctx.form.get("request_id", "")),
            fingerprint=validation.fingerprint("UpgradeTier", req), monthly=0,
        )
        return see_other(change.payment_url or "/portal/plan?done=upgraded")

    async def keys_page(ctx: Ctx, *, new_secret: str = "", new_label: str = "") -> web.StreamResponse:
        found = await d.keys.list(ctx.principal, "", 100, None)
        return render(ctx, "keys.html", "keys", keys=found, new_secret=new_secret, new_label=new_label)

    async def keys_list(ctx: Ctx) -> web.StreamResponse:
        return await keys_page(ctx)

    async def key_create(ctx: Ctx) -> web.StreamResponse:
        label = ctx.form.get("label", "").strip()
        budgets: list[BudgetLimit] = []
        pb: list[keys_pb2.Budget] = []
        for window, pb_window in ((Window.DAY, keys_pb2.BUDGET_WINDOW_DAY), (Window.MONTH, keys_pb2.BUDGET_WINDOW_MONTH)):
            text = ctx.form.get(f"budget_{window}", "").strip()
            if text:
                limit = whole_credits(text, f"{window} budget")
                budgets.append(BudgetLimit(window, limit))
                pb.append(keys_pb2.Budget(window=pb_window, limit_millicredits=limit))
        req = keys_pb2.CreateKeyRequest(label=label, budgets=pb)
        view, secret = await d.keys.create(
            ctx.principal, user_id="", fields=KeyFields(label=label, budgets=budgets, categories=[], max_spend=0,
                                                        expires_at_us=None),
            request_id=validation.request_id(ctx.form.get("request_id", "")),
            fingerprint=validation.fingerprint("CreateKey", req),
        )
        # The secret is shown once, in this response; never in a URL.
        return await keys_page(ctx, new_secret=secret, new_label=view.label)

    async def key_revoke(ctx: Ctx) -> web.StreamResponse:
        key_id = check_key_id(ctx.form.get("key_id", ""))
        await d.keys.revoke(ctx.principal, key_id, request_id=validation.request_id(ctx.form.get("request_id", "")),
                            fingerprint=validation.fingerprint("RevokeKey", keys_pb2.RevokeKeyRequest(key_id=key_id)))
        return see_other("/portal/keys")

    async def alerts(ctx: Ctx) -> web.StreamResponse:
        view = await d.events.get_alerts(ctx.principal, "")
        scope = d.events.reader_scope(ctx.principal, "")
        recent = [(event_name(e.id), e, json.loads(e.payload)) for e in await d.events.recent_events(scope, RECENT_EVENTS)]
        return render(ctx, "alerts.html", "alerts", alerts=view, events=recent)

    async def alerts_post(ctx: Ctx) -> web.StreamResponse:
        reset = ctx.form.get("reset") == "on"
        if reset:
            thresholds, lead, days = [], 0, 0
        else:
            # Credits, comma separated, as the servicer checks each amount; an empty list turns balance alerts off.
            thresholds = [validation.amount(whole_credits(t, "thresholds"), field="thresholds_millicredits")
                          for t in ctx.form.get("thresholds", "").split(",") if t.strip()]
            lead = whole_number(ctx.form.get("expiry_lead_hours", ""), "expiry warning lead time in hours") * 3600
            days = whole_number(ctx.form.get("forecast_days", ""), "forecast days")
        req = events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=thresholds, expiry_lead_seconds=lead,
                                                 forecast_days=days, reset_to_defaults=reset)
        await d.events.set_alerts(
            ctx.principal, "", thresholds=thresholds, expiry_lead_seconds=lead, forecast_days=days, reset=reset,
            request_id=validation.request_id(ctx.form.get("request_id", "")),
            fingerprint=validation.fingerprint("SetBalanceAlerts", req),
        )
        return see_other("/portal/alerts?done=alerts-saved")

    def see_other(location: str) -> web.StreamResponse:
        raise guard.secure(web.HTTPSeeOther(location))  # type: ignore[misc]

    g = guard.page
    return [
        web.get("/portal/open/{token}", open_link),
        web.get("/portal/", g(overview)),
        web.get("/portal/usage", g(usage)),
        web.get("/portal/history", g(history)),
        web.get("/portal/history.csv", g(history_csv)),
        web.get("/portal/payments", g(payments)),
        web.get("/portal/buy", g(buy)),
        web.post("/portal/buy", g(buy_post, post=True)),
        web.post("/portal/top-up", g(top_up, post=True)),
        web.get("/portal/auto-refill", g(auto_refill)),
        web.post("/portal/auto-refill", g(auto_refill_post, post=True)),
        web.post("/portal/auto-refill/card", g(card, post=True)),
        web.get("/portal/plan", g(plan)),
        web.post("/portal/plan/upgrade", g(upgrade, post=True)),
        web.get("/portal/keys", g(keys_list)),
        web.post("/portal/keys", g(key_create, post=True)),
        web.post("/portal/keys/revoke", g(key_revoke, post=True)),
        web.get("/portal/alerts", g(alerts)),
        web.post("/portal/alerts", g(alerts_post, post=True)),
    ]
