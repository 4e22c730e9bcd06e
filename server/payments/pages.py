"""The pages Stripe Checkout returns the buyer to, on the HTTP listener, with no login.

- `GET /billing/success?session_id=cs_...`: the payment of that Checkout Session,
  live: waiting for confirmation, then credited (with the balance the credits
  made) or failed (with the reason). The page polls
  `GET /billing/success/status?session_id=...` until the state is final; that
  JSON holds this one payment's state and nothing else.
- `GET /billing/cancel?ref=...`: nothing was charged; a button (`POST`) makes a
  new link for the same amount. `ref` is the payment id signed by the server.
- `/billing/card-saved`, `/billing/tier/success`, `/billing/tier/cancel`: where
  the setup and Pro Checkouts return; they name no payment, so they only say
  what happens next.

The session id is Stripe's unguessable reference, known only to the buyer's
browser; payment ids are never accepted alone. The HTML is small and
server-rendered: inline CSS and a few lines of script under a per-response
nonce, no external assets, readable on a phone, and usable without script
(a refresh link; the state is in the first response).
"""

from __future__ import annotations

import html
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.payments.models import PaymentRow, PaymentStatus
from server.payments.service import PaymentsService, ReturnState
from server.platform import errors
from server.platform.units import credits_text

log = logging.getLogger(__name__)

# Stripe ids: a prefix and letters, digits and underscores.
_STRIPE_ID = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_REF = re.compile(r"^[A-Za-z0-9_]{1,64}\.[0-9a-f]{32}$")
POLL_MS = 2000

# Decline codes a buyer meets most, in words; others are shown as Stripe's code.
_REASONS = {
    "card_declined": "the card was declined",
    "insufficient_funds": "the card has insufficient funds",
    "expired_card": "the card has expired",
    "incorrect_cvc": "the security code was incorrect",
    "authentication_required": "the bank asked for confirmation that was not completed",
    "async_payment_failed": "the bank did not complete the payment",
    "processing_error": "the card could not be processed",
}


def money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def reason_text(code: str) -> str:
    code = code or "payment_failed"
    return _REASONS.get(code, f"the payment did not go through ({code})")


@dataclass
class View:
    """What the success page shows; the status JSON is exactly this."""

    state: str  # waiting | credited | failed | expired | refunded | disputed
    final: bool
    title: str
    message: str
    amount_cents: int
    credits_millicredits: int
    balance_millicredits: int | None = None
    reason: str = ""
    retry_url: str = ""

    def json(self) -> dict[str, object]:
        return {
            "state": self.state, "final": self.final, "title": self.title, "message": self.message,
            "amount_cents": self.amount_cents, "credits_millicredits": self.credits_millicredits,
            "balance_millicredits": self.balance_millicredits, "reason": self.reason, "retry_url": self.retry_url,
        }


def view_of(found: ReturnState) -> View:
    p = found.payment
    amount, cr = p["amount_cents"], p["credits"]
    what = f"{money(amount)} for {credits_text(cr)} credits"
    status = p["status"]

    def mk(state: str, final: bool, title: str, message: str, **more: Any) -> View:
        return View(state, final, title, message, amount, cr, **more)

    if status == PaymentStatus.PENDING:
        return mk("waiting", False, "Waiting for confirmation",
                    f"Your payment of {what} is being confirmed. This page updates by itself.")
    if status == PaymentStatus.FAILED:
        # Not final: Checkout lets the buyer try another card in the same session.
        return mk("failed", False, "Payment failed",
                    f"Your payment of {what} failed: {reason_text(p['failure_reason'])}. Nothing was charged.",
                    reason=p["failure_reason"] or "payment_failed", retry_url=p["payment_url"])
    if status == PaymentStatus.EXPIRED:
        return mk("expired", True, "Payment link expired",
                    f"The payment of {what} was not completed and its link expired. Nothing was charged.")
    after = found.balance_after
    balance = f" Your balance was then {credits_text(after)} credits." if after is not None else ""
    if status == PaymentStatus.PAID:
        return mk("credited", True, "Credits added",
                    f"Thank you: {credits_text(cr)} credits were added for {money(amount)}.{balance}",
                    balance_millicredits=after)
    if status == PaymentStatus.DISPUTED:
        return mk("disputed", True, "Payment disputed",
                    f"The payment of {what} is disputed; its credits were taken back while it is open.")
    return mk("refunded", True, "Payment refunded",
                f"The payment of {what} was refunded ({money(p['refunded_cents'])}); "
                "the refunded credits were taken back.")


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#4a525c;--ok:#0b6b2f;--bad:#a3161b;--wait:#6b4b00;--line:#d5d9de}
@media (prefers-color-scheme:dark){:root{--fg:#eef1f4;--bg:#14171a;--muted:#b8c0c8;--ok:#6fdc95;--bad:#ff8d8f;--wait:#f2cc60;--line:#3a4047}}
*{box-sizing:border-box}
body{margin:0;font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:34rem;margin:0 auto;padding:2rem 1.25rem}
h1{font-size:1.5rem;line-height:1.25;margin:.25rem 0 .75rem}
.badge{display:inline-block;font-weight:600;font-size:.875rem;letter-spacing:.02em;text-transform:uppercase;padding:.15rem .55rem;border:2px solid currentColor;border-radius:1rem}
.waiting .badge{color:var(--wait)}
.credited .badge{color:var(--ok)}
.failed .badge,.expired .badge,.refunded .badge,.disputed .badge,.missing .badge{color:var(--bad)}
dl{display:grid;grid-template-columns:auto 1fr;gap:.35rem 1rem;margin:1.25rem 0;padding:1rem 0;border-top:1px solid var(--line);border-bottom:1px solid var(--line)}
dt{color:var(--muted)}dd{margin:0;font-weight:600}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.25rem}
a.button,button{font:inherit;font-weight:600;padding:.7rem 1.1rem;min-height:44px;border-radius:.5rem;border:2px solid var(--fg);background:var(--fg);color:var(--bg);text-decoration:none;cursor:pointer}
a.secondary{background:transparent;color:var(--fg)}
a:focus-visible,button:focus-visible{outline:3px solid #2f6feb;outline-offset:2px}
.muted{color:var(--muted);font-size:.9375rem}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('payment'); if(!box||box.dataset.final==='true')return;
  var url=box.dataset.poll, every=parseInt(box.dataset.every,10)||2000;
  function set(id,text){var el=document.getElementById(id); if(el)el.textContent=text;}
  function show(s){
    box.className='state '+s.state; box.dataset.state=s.state; box.dataset.final=String(s.final);
    set('badge',s.state); set('title',s.title); set('message',s.message);
    var retry=document.getElementById('retry');
    if(retry){ if(s.retry_url){retry.href=s.retry_url; retry.hidden=false;} else {retry.hidden=true;} }
    if(s.final){var r=document.getElementById('refresh'); if(r)r.hidden=true;}
  }
  function tick(){
    fetch(url,{cache:'no-store',credentials:'omit'}).then(function(r){
      if(!r.ok)throw new Error(r.status); return r.json();
    }).then(function(s){show(s); if(!s.final)setTimeout(tick,every);})
      .catch(function(){setTimeout(tick,every*3);});
  }
  setTimeout(tick,every);
})();
"""


def _page(title: str, body: str, *, status: int = 200, script: bool = False) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    js = f'<script nonce="{nonce}">{_SCRIPT}</script>' if script else ""
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)} · FlowNexus billing</title>"
        f'<style nonce="{nonce}">{_CSS}</style></head>'
        f"<body><main>{body}</main>{js}</body></html>"
    )
    resp = web.Response(text=doc, status=status, content_type="text/html", charset="utf-8")
    _secure(resp, nonce)
    return resp


def _secure(resp: web.StreamResponse, nonce: str = "") -> None:
    src = f"'nonce-{nonce}'" if nonce else "'none'"
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {src}; script-src {src}; connect-src 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    resp.headers["Cache-Control"] = "no-store"
    # The URL holds the session id: never send it on to another site.
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _success_body(v: View, session_id: str) -> str:
    poll = f"/billing/success/status?session_id={session_id}"
    retry_hidden = "" if v.retry_url else " hidden"
    refresh_hidden = " hidden" if v.final else ""
    return (
        f'<section id="payment" class="state {_e(v.state)}" data-state="{_e(v.state)}" '
        f'data-final="{str(v.final).lower()}" data-poll="{_e(poll)}" data-every="{POLL_MS}" '
        'role="status" aria-live="polite" aria-atomic="true">'
        f'<span id="badge" class="badge">{_e(v.state)}</span>'
        f'<h1 id="title">{_e(v.title)}</h1>'
        f'<p id="message">{_e(v.message)}</p></section>'
        f"<dl><dt>Amount</dt><dd>{_e(money(v.amount_cents))}</dd>"
        f"<dt>Credits</dt><dd>{_e(credits_text(v.credits_millicredits))}</dd></dl>"
        '<div class="actions">'
        f'<a id="retry" class="button" href="{_e(v.retry_url or "#")}"{retry_hidden}>Try another card</a>'
        f'<a id="refresh" class="button secondary" href="?session_id={_e(session_id)}"{refresh_hidden}>Refresh</a>'
        "</div>"
        '<p class="muted">You can close this page at any time: the credits are added as soon as the '
        "payment is confirmed, whether this page is open or not.</p>"
    )


def _missing(title: str, message: str, status: int = 404) -> web.Response:
    body = (
        f'<section class="state missing" role="alert"><span class="badge">not found</span>'
        f"<h1>{_e(title)}</h1><p>{_e(message)}</p></section>"
    )
    return _page(title, body, status=status)


def _notice(title: str, badge: str, message: str, *, state: str = "expired") -> web.Response:
    """A page with nothing to look up (setup and Pro Checkouts name no payment of ours)."""
    body = (
        f'<section class="state {_e(state)}" role="status"><span class="badge">{_e(badge)}</span>'
        f"<h1>{_e(title)}</h1><p>{_e(message)}</p></section>"
    )
    return _page(title, body)


def _cancel_body(p: PaymentRow, ref: str) -> str:
    what = f"{money(p['amount_cents'])} for {credits_text(p['credits'])} credits"
    if p["status"] in (PaymentStatus.PENDING, PaymentStatus.FAILED, PaymentStatus.EXPIRED):
        return (
            '<section class="state expired" role="status"><span class="badge">cancelled</span>'
            "<h1>Payment cancelled</h1>"
            f"<p>You left the checkout before paying {_e(what)}. Nothing was charged.</p></section>"
            '<form method="post" action="/billing/cancel" class="actions">'
            f'<input type="hidden" name="ref" value="{_e(ref)}">'
            '<button type="submit">Get a new payment link</button></form>'
            '<p class="muted">The new link is for the same amount. You can also close this page.</p>'
        )
    # Paid after all (another tab, the back button): say so rather than "cancelled".
    return (
        '<section class="state credited" role="status"><span class="badge">paid</span>'
        "<h1>This payment went through</h1>"
        f"<p>The payment of {_e(what)} was completed; its credits are on your account.</p></section>"
    )


# ---- routes --------------------------------------------------------------------------------


def page_routes(service: PaymentsService) -> list[web.RouteDef]:
    async def lookup(request: web.Request) -> tuple[str, ReturnState | None]:
        sid = request.query.get("session_id", "")
        if not _STRIPE_ID.match(sid):
            return sid, None
        return sid, await service.by_session(sid)

    async def success(request: web.Request) -> web.Response:
        sid, found = await lookup(request)
        if found is None:
            return _missing("Payment not found",
                            "This link does not name a payment of ours. Nothing was charged by this page; "
                            "check your payment history in the app.")
        v = view_of(found)
        return _page(v.title, _success_body(v, sid), script=not v.final)

    async def status(request: web.Request) -> web.Response:
        _, found = await lookup(request)
        if found is None:
            resp = web.json_response({"error": "payment not found"}, status=404)
        else:
            resp = web.json_response(view_of(found).json())
        _secure(resp)
        return resp

    async def cancel(request: web.Request) -> web.Response:
        ref = request.query.get("ref", "")
        if not ref:  # a card setup or a Pro upgrade left unfinished: nothing to name
            return _notice("Nothing was charged", "cancelled", "You left the checkout before finishing. "
                           "Nothing was charged; you can start again from the app.")
        p = await service.by_return_ref(ref) if _REF.match(ref) else None
        if p is None:
            return _missing("Link not recognised", "This cancel link does not name a payment of ours. "
                            "Nothing was charged by this page.")
        return _page("Payment cancelled", _cancel_body(p, ref))

    async def new_link(request: web.Request) -> web.StreamResponse:
        ref = str((await request.post()).get("ref") or "")
        p = await service.by_return_ref(ref) if _REF.match(ref) else None
        if p is None:
            return _missing("Link not recognised", "This cancel link does not name a payment of ours.")
        try:
            link = await service.new_link_after_cancel(p)
        except errors.DomainError as exc:
            log.info("no new link after cancel", extra={"payment_id": p["id"], "reason": exc.reason})
            return _missing("No new link right now", "A new payment link could not be made; please try "
                            "again later from the app. Nothing was charged.", status=503)
        raise web.HTTPSeeOther(link.payment_url)

    async def card_saved(request: web.Request) -> web.Response:
        return _notice("Card saved", "saved", "Your card is saved for auto-refill. Turn auto-refill on, or "
                       "check its settings, in the app. You can close this page.", state="credited")

    async def tier_success(request: web.Request) -> web.Response:
        return _notice("Pro upgrade received", "confirming", "Thank you. Pro starts, with its monthly "
                       "credits, as soon as Stripe confirms the first invoice; the app shows it then. "
                       "You can close this page.", state="waiting")

    return [
        web.get("/billing/card-saved", card_saved),
        web.get("/billing/tier/success", tier_success),
        web.get("/billing/tier/cancel", cancel),
        web.get("/billing/success", success),
        web.get("/billing/success/status", status),
        web.get("/billing/cancel", cancel),
        web.post("/billing/cancel", new_link),
    ]
