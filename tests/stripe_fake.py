"""A Stripe-protocol server on loopback for tests: localstripe (subprocess)
behind a small aiohttp proxy that adds what localstripe lacks, Checkout Sessions.

    localstripe  <-  proxy (/v1/checkout/sessions served here, the rest forwarded)  <-  server under test

The server under test only gets `BILLING_STRIPE_API_BASE=<proxy url>`. Tests
drive the customer's side through `StripeFake.pay(...)` (creates a real
PaymentIntent and charge in localstripe) and deliver signed webhooks with the
same scheme Stripe uses (`t=<unix>,v1=<HMAC-SHA256 of "t.payload">`).

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
        self.requests: list[dict[str, str]] = []
        self.fail_next: int = 0  # answer the next N API calls with 500 (outage drills)
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
        self.requests.clear()
        self.fail_next = 0
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
        if form.get("mode") == "setup":  # auto-refill (issue 4): save a card, charge nothing
            form["line_items"] = [{"quantity": "1", "price_data": {"unit_amount": "0", "currency": form.get("currency", "usd")}}]
        line = form["line_items"][0]
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
            "line_items_requested": form["line_items"],
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "expires_at": int(time.time()) + 24 * 3600,
            "created": int(time.time()),
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
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._client.request(
            request.method, f"{self.upstream}{request.path_qs}", data=await request.read(), headers=headers
        ) as r:
            body = await r.read()
            return web.Response(body=body, status=r.status, content_type="application/json")

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
        pi = await self.api(
            "POST",
            "/v1/payment_intents",
            {
                "amount": s["amount_total"],
                "currency": s["currency"],
                "customer": s["customer"],
                "payment_method": card,
                "confirm": "true",
                "metadata": meta,
            },
        )
        s["payment_intent"] = pi["id"]
        if pi["status"] == "succeeded":
            s["status"], s["payment_status"] = "complete", "paid"
        return pi

    async def complete_setup(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """The customer completes a setup-mode checkout page: a real SetupIntent
        in localstripe confirmed with `card`. Returns the session as
        checkout.session.completed carries it."""
        s = self.sessions[session_id]
        si = await self.api("POST", "/v1/setup_intents", {"customer": s["customer"], "usage": "off_session"})
        si = await self.api("POST", f"/v1/setup_intents/{si['id']}/confirm", {"payment_method": card})
        s.update(setup_intent=si["id"], status="complete", payment_status="no_payment_required")
        return s

    def expire(self, session_id: str) -> dict[str, Any]:
        s = self.sessions[session_id]
        s["status"] = "expired"
        return s

    async def charge_of(self, pi: dict[str, Any]) -> dict[str, Any]:
        charge = pi["latest_charge"]
        cid = charge["id"] if isinstance(charge, dict) else charge
        return await self.api("GET", f"/v1/charges/{cid}")

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
