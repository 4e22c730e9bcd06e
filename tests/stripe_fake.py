"""A Stripe-protocol server on loopback for tests: localstripe (subprocess)
behind a small aiohttp proxy that adds what localstripe lacks, Checkout Sessions.

    localstripe  <-  proxy (/v1/checkout/sessions served here, the rest forwarded)  <-  server under test

The server under test only gets `BILLING_STRIPE_API_BASE=<proxy url>`. Tests
drive the customer's side through `StripeFake.pay(...)` (creates a real
PaymentIntent and charge in localstripe) and deliver signed webhooks with the
same scheme Stripe uses (`t=<unix>,v1=<HMAC-SHA256 of "t.payload">`).

With `webhook_url` set, the fake also plays Stripe's webhook sender:
`complete(session_id)` finishes a Checkout Session of any mode the way Stripe
does (payment: charge + card saved for off-session use; subscription: a real
localstripe subscription whose first invoice is paid with the card; setup: a
confirmed SetupIntent) and delivers the signed events Stripe would send.
Subscriptions the server creates itself through the proxy (Pro on a saved
card) get their invoice events delivered too; `await settled()` waits for them.

`python -m tests.stripe_fake --port N --state FILE` is the localstripe
launcher: localstripe's own CLI binds every interface and keeps its state in
/tmp/localstripe.pickle, so we bind 127.0.0.1 and give it its own file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

API_KEY = "sk_test_localstripe_0123456789"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


# ---- signed webhooks ------------------------------------------------------------------


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(etype: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": etype,
        "data": {"object": obj},
    }


def encode(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, indent=2).encode()


# ---- form decoding (the SDK sends a[b][0][c]=v) --------------------------------------------


def unflatten(items: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        parts = key.replace("]", "").split("[")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


# ---- the proxy -----------------------------------------------------------------------------


class StripeFake:
    def __init__(self, localstripe_url: str) -> None:
        self.upstream = localstripe_url.rstrip("/")
        self.url = ""
        self.sessions: dict[str, dict[str, Any]] = {}
        self.by_idempotency: dict[str, str] = {}
        self.customers_by_key: dict[str, bytes] = {}
        self._customer_lock = asyncio.Lock()
        self.requests: list[dict[str, str]] = []
        self.fail_next: int = 0  # answer the next N API calls with 500 (outage drills)
        # PaymentIntents: Stripe's idempotency (localstripe ignores keys), and what localstripe cannot do.
        self.intents_by_key: dict[str, tuple[int, bytes]] = {}
        self.intents_created = 0  # PaymentIntents really created upstream
        self.decline_next: list[tuple[str, str]] = []  # (code, decline_code) for the next creations, e.g. authentication_required
        self.lose_next = 0  # create the next N PaymentIntents, then answer 500 as if the response was lost
        # Where Stripe would send webhooks (the server's /webhooks/stripe); "" = tests deliver by hand.
        self.webhook_url = ""
        self.webhook_secret = WEBHOOK_SECRET
        self.delivered: list[tuple[str, int]] = []  # (event type, HTTP status) of every delivery
        # Stripe's clock for the sessions it creates (created, expires_at): a
        # test may set it to the service's clock.
        self.clock: Callable[[], float] = time.time
        self._deliveries: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self, port: int) -> StripeFake:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._create_session)
        app.router.add_get("/v1/checkout/sessions/{id}", self._get_session)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._client = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self._client:
            await self._client.close()
        if self._runner:
            await self._runner.cleanup()

    async def reset(self) -> None:
        self.sessions.clear()
        self.by_idempotency.clear()
        self.customers_by_key.clear()
        self.requests.clear()
        self.fail_next = 0
        self.intents_by_key.clear()
        self.intents_created = 0
        self.decline_next.clear()
        self.lose_next = 0
        await self.settled()
        self.webhook_url = ""
        self.delivered.clear()
        self.clock = time.time
        assert self._client is not None
        async with self._client.delete(f"{self.upstream}/_config/data") as r:
            assert r.status == 200

    def _record(self, request: web.Request) -> web.Response | None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "idempotency_key": request.headers.get("Idempotency-Key", ""),
                "stripe_version": request.headers.get("Stripe-Version", ""),
                "authorization": request.headers.get("Authorization", ""),
            }
        )
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {"type": "api_error", "message": "injected outage"}}, status=500)
        return None

    async def _create_session(self, request: web.Request) -> web.Response:
        if (failed := self._record(request)) is not None:
            return failed
        key = request.headers.get("Idempotency-Key", "")
        if key and key in self.by_idempotency:
            return web.json_response(self.sessions[self.by_idempotency[key]])
        form = unflatten(list((await request.post()).items()))  # type: ignore[arg-type]
        if form.get("mode") == "setup":  # auto-refill: save a card, charge nothing
            form["line_items"] = [{"quantity": "1", "price_data": {"unit_amount": "0", "currency": form.get("currency", "usd")}}]
        line = form["line_items"][0]
        if "price_data" not in line:  # a configured Price id: localstripe knows it as a Plan
            plan = await self.api("GET", f"/v1/plans/{line['price']}")
            line["price_data"] = {"unit_amount": str(plan["amount"]), "currency": plan["currency"]}
        amount = int(line["price_data"]["unit_amount"]) * int(line.get("quantity", 1))
        sid = f"cs_test_{uuid.uuid4().hex[:24]}"
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": form["mode"],
            "url": f"{self.url}/pay/{sid}",
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount,
            "currency": line["price_data"]["currency"],
            "customer": form.get("customer"),
            "client_reference_id": form.get("client_reference_id"),
            "metadata": form.get("metadata", {}),
            "payment_intent": None,
            "payment_intent_data": form.get("payment_intent_data", {}),
            "subscription": None,
            "subscription_data": form.get("subscription_data", {}),
            "invoice": None,
            "setup_intent": None,
            "line_items_requested": form["line_items"],
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "expires_at": int(self.clock()) + 24 * 3600,
            "created": int(self.clock()),
            "livemode": False,
        }
        self.sessions[sid] = session
        if key:
            self.by_idempotency[key] = sid
        return web.json_response(session)

    async def _get_session(self, request: web.Request) -> web.Response:
        if (failed := self._record(request)) is not None:
            return failed
        sid = request.match_info["id"]
        if sid not in self.sessions:
            return web.json_response({"error": {"type": "invalid_request_error", "message": "No such session"}}, status=404)
        return web.json_response(self.sessions[sid])

    async def _forward(self, request: web.Request) -> web.Response:
        if (failed := self._record(request)) is not None:
            return failed
        key = request.headers.get("Idempotency-Key", "")
        if request.method == "POST" and request.path == "/v1/customers" and key:
            # Stripe answers a repeated idempotency key with the first response,
            # concurrent repeats included; localstripe ignores keys, so the fake
            # does it for customers.
            async with self._customer_lock:
                if key not in self.customers_by_key:
                    status, body = await self._upstream(request)
                    if status != 200:
                        return web.Response(body=body, status=status, content_type="application/json")
                    self.customers_by_key[key] = body
            return web.Response(body=self.customers_by_key[key], status=200, content_type="application/json")
        if request.method == "POST" and request.path == "/v1/payment_intents":
            status, body = await self._payment_intent(request, key)
            return web.Response(body=body, status=status, content_type="application/json")
        status, body = await self._upstream(request)
        if request.method == "POST" and request.path == "/v1/subscriptions" and status == 200 and self.webhook_url:
            # Stripe announces the new subscription's first invoice by webhook, after answering.
            self._spawn(self._announce_subscription(json.loads(body)))
        return web.Response(body=body, status=status, content_type="application/json")

    async def _payment_intent(self, request: web.Request, key: str) -> tuple[int, bytes]:
        """POST /v1/payment_intents as Stripe answers it: a repeated idempotency
        key gets the first answer (a decline too) and creates nothing; declines
        localstripe cannot make come from `decline_next`."""
        if key and key in self.intents_by_key:
            status, body = self.intents_by_key[key]
        elif self.decline_next:
            code, decline = self.decline_next.pop(0)
            pi = {"id": f"pi_fake_{uuid.uuid4().hex[:20]}", "object": "payment_intent",
                  "status": "requires_payment_method", "last_payment_error": {"code": code, "decline_code": decline}}
            err = {"type": "card_error", "code": code, "decline_code": decline,
                   "message": "Your card was declined.", "payment_intent": pi}
            status, body = 402, json.dumps({"error": err}).encode()
        else:
            status, body = await self._upstream(request)
            if status == 200:
                self.intents_created += 1
        if key:
            self.intents_by_key[key] = (status, body)
        if self.lose_next > 0:
            self.lose_next -= 1
            return 500, json.dumps({"error": {"type": "api_error", "message": "response lost"}}).encode()
        return status, body

    async def _upstream(self, request: web.Request) -> tuple[int, bytes]:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._client.request(
            request.method, f"{self.upstream}{request.path_qs}", data=await request.read(), headers=headers
        ) as r:
            return r.status, await r.read()

    # ---- driving localstripe as "the customer" and "the Stripe dashboard" ----------------

    async def api(self, method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._client is not None
        flat: dict[str, str] = {}
        for k, v in (data or {}).items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    flat[f"{k}[{k2}]"] = str(v2)
            else:
                flat[k] = str(v)
        async with self._client.request(
            method, f"{self.upstream}{path}", data=flat or None, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as r:
            body = await r.json()
            assert r.status == 200, body
            return dict(body)

    async def pay(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """The customer completes the checkout page: a real PaymentIntent and
        charge in localstripe, the session turns complete/paid. Returns the
        payment intent (its latest_charge expanded)."""
        s = self.sessions[session_id]
        meta = s["payment_intent_data"].get("metadata") or s["metadata"]
        pm = await self.payment_method(card)
        pi = await self.api(
            "POST",
            "/v1/payment_intents",
            {
                "amount": s["amount_total"],
                "currency": s["currency"],
                "customer": s["customer"],
                "payment_method": pm,
                "confirm": "true",
                "metadata": meta,
            },
        )
        s["payment_intent"] = pi["id"]
        if pi["status"] == "succeeded":
            s["status"], s["payment_status"] = "complete", "paid"
            if s["payment_intent_data"].get("setup_future_usage") and s["customer"]:
                # setup_future_usage: Stripe attaches the card to the customer once the payment succeeds.
                await self.api("POST", f"/v1/payment_methods/{pm}/attach", {"customer": s["customer"]})
        return pi

    async def payment_method(self, card: str) -> str:
        """A concrete PaymentMethod id for a test card token (pm_card_visa -> pm_...),
        as Stripe.js would create it on the checkout page."""
        return str((await self.api("GET", f"/v1/payment_methods/{card}"))["id"])

    async def complete_setup(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """The customer completes a setup-mode checkout page: a real SetupIntent
        in localstripe confirmed with `card`. Returns the session as
        checkout.session.completed carries it."""
        s = self.sessions[session_id]
        si = await self.api("POST", "/v1/setup_intents", {"customer": s["customer"], "usage": "off_session"})
        si = await self.api("POST", f"/v1/setup_intents/{si['id']}/confirm", {"payment_method": card})
        s.update(setup_intent=si["id"], status="complete", payment_status="no_payment_required")
        return s

    async def complete_subscription(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """The customer completes a subscription-mode checkout page: the card is
        attached to the customer, a real localstripe subscription is created
        with the session's subscription_data.metadata and its first invoice is
        paid with that card. Returns {"session", "subscription", "invoice"}.

        localstripe takes no default_payment_method on subscriptions, so the card
        becomes the customer's invoice default (Stripe sets it on the subscription;
        both are "a card attached to the customer")."""
        s = self.sessions[session_id]
        assert s["mode"] == "subscription", s["mode"]
        pm = await self.payment_method(card)
        await self.api("POST", f"/v1/payment_methods/{pm}/attach", {"customer": s["customer"]})
        await self.api("POST", f"/v1/customers/{s['customer']}",
                       {"invoice_settings": {"default_payment_method": pm}})
        line = s["line_items_requested"][0]
        plan_id = line.get("price") or await self._plan(line["price_data"])
        meta = s["subscription_data"].get("metadata") or {}
        sub = await self.api(
            "POST", "/v1/subscriptions", {"customer": s["customer"], "items[0][plan]": plan_id, "metadata": meta}
        )
        invoice = await self.invoice_of(sub)
        if sub["status"] == "active" and invoice["status"] == "paid":
            s.update(status="complete", payment_status="paid", subscription=sub["id"], invoice=invoice["id"])
        return {"session": s, "subscription": sub, "invoice": invoice}

    async def _plan(self, price_data: dict[str, Any]) -> str:
        interval = (price_data.get("recurring") or {}).get("interval", "month")
        plan_id = f"fake-plan-{price_data['unit_amount']}-{price_data['currency']}-{interval}"
        assert self._client is not None
        async with self._client.get(
            f"{self.upstream}/v1/plans/{plan_id}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as r:
            if r.status == 200:
                return plan_id
        name = (price_data.get("product_data") or {}).get("name", "Subscription")
        await self.api("POST", "/v1/plans", {"id": plan_id, "amount": price_data["unit_amount"],
                                             "currency": price_data["currency"], "interval": interval,
                                             "product": {"name": name}})
        return plan_id

    async def invoice_of(self, sub: dict[str, Any]) -> dict[str, Any]:
        """The subscription's latest invoice as API 2025-03-31.basil sends it: the
        subscription's metadata under parent.subscription_details (localstripe omits it)."""
        invoice = await self.api("GET", f"/v1/invoices/{sub['latest_invoice']}")
        # localstripe has no hosted invoice pages; Stripe gives every finalized invoice one.
        invoice.setdefault("hosted_invoice_url", f"https://invoice.stripe.test/{invoice['id']}")
        invoice["parent"] = {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub["id"], "metadata": dict(sub.get("metadata") or {})},
        }
        return invoice

    # ---- Stripe's webhook sender ------------------------------------------------------------

    async def deliver(self, ev: dict[str, Any]) -> int:
        """POST one signed event to webhook_url; returns the HTTP status."""
        assert self._client is not None and self.webhook_url, "set StripeFake.webhook_url first"
        body = encode(ev)
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, self.webhook_secret)}
        async with self._client.post(self.webhook_url, data=body, headers=headers) as r:
            self.delivered.append((ev["type"], r.status))
            return r.status

    async def deliver_all(self, events: list[dict[str, Any]]) -> dict[str, int]:
        return {ev["type"]: await self.deliver(ev) for ev in events}

    async def complete(self, session_id: str, card: str = "pm_card_visa", *, invoice_first: bool = False) -> dict[str, Any]:
        """Finish a Checkout Session like Stripe (see the module doc) and deliver
        its events. Returns {"events": [...], "statuses": {type: http status}, ...}:
        the objects created, and the events (redeliver them to test replays)."""
        s = self.sessions[session_id]
        out: dict[str, Any] = {}
        events: list[dict[str, Any]] = []
        if s["mode"] == "payment":
            pi = await self.pay(session_id, card)
            out["payment_intent"] = pi
            if pi["status"] == "succeeded":
                charge = await self.charge_of(pi)
                events = [event("charge.succeeded", charge), event("payment_intent.succeeded", pi),
                          event("checkout.session.completed", json.loads(json.dumps(s)))]
            else:
                events = [event("payment_intent.payment_failed", pi)]
        elif s["mode"] == "setup":
            await self.complete_setup(session_id, card)
            events = [event("checkout.session.completed", json.loads(json.dumps(s)))]
        else:
            made = await self.complete_subscription(session_id, card)
            out.update(subscription=made["subscription"], invoice=made["invoice"])
            if s["status"] == "complete":
                completed = event("checkout.session.completed", json.loads(json.dumps(s)))
                invoices = [event("invoice.paid", made["invoice"]), event("invoice.payment_succeeded", made["invoice"])]
                events = [*invoices, completed] if invoice_first else [completed, *invoices]
            else:
                events = [event("invoice.payment_failed", made["invoice"])]
        out["events"] = events
        out["statuses"] = await self.deliver_all(events) if self.webhook_url else {}
        out["session"] = s
        return out

    async def _announce_subscription(self, sub: dict[str, Any]) -> None:
        if not sub.get("latest_invoice"):
            return
        invoice = await self.invoice_of(sub)
        kinds = ("invoice.paid", "invoice.payment_succeeded") if invoice["status"] == "paid" else ("invoice.payment_failed",)
        for kind in kinds:
            await self.deliver(event(kind, invoice))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def settled(self) -> None:
        """Wait for the webhooks the fake is still sending on its own."""
        while self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    def expire(self, session_id: str) -> dict[str, Any]:
        s = self.sessions[session_id]
        s["status"] = "expired"
        return s

    async def charge_of(self, pi: dict[str, Any]) -> dict[str, Any]:
        charge = pi["latest_charge"]
        cid = charge["id"] if isinstance(charge, dict) else charge
        found = await self.api("GET", f"/v1/charges/{cid}")
        # localstripe has no receipts; Stripe gives every card charge one.
        found.setdefault("receipt_url", f"https://pay.stripe.test/receipts/{cid}")
        return found

    async def refund(self, pi: dict[str, Any], amount_cents: int | None = None) -> dict[str, Any]:
        """Refund in localstripe; returns the charge as charge.refunded carries it."""
        data: dict[str, Any] = {"payment_intent": pi["id"]}
        if amount_cents is not None:
            data["amount"] = amount_cents
        await self.api("POST", "/v1/refunds", data)
        return await self.charge_of(pi)


# ---- localstripe subprocess ---------------------------------------------------------------


def launch_localstripe(port: int, state: Path) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stripe_fake", "--port", str(port), "--state", str(state)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_http(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


def _serve(port: int, state: Path) -> None:
    import pickle

    from localstripe import resources
    from localstripe.server import app

    def dump(self: Any) -> None:
        with open(state, "wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)

    resources.Store.dump_to_disk = dump  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    _serve(args.port, args.state)
