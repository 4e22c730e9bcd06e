"""The one place that talks to Stripe.

Everything goes through `StripeGateway`: the API base comes from settings
(BILLING_STRIPE_API_BASE points it at an emulator), the API version is pinned,
calls are async over httpx, and every mutating call carries an idempotency key
derived from the caller's request so that a retry never charges or creates twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from pydantic import SecretStr

from server.ledger import keys
from server.payments.models import stripe_id
from server.platform import deadline, errors

log = logging.getLogger(__name__)

# Pinned: webhook payloads and responses are parsed against this version.
STRIPE_API_VERSION = "2025-03-31.basil"
NOT_CONFIGURED_SETTING = "BILLING_STRIPE_API_KEY"
# The object a Checkout Session of each mode creates, by its parameter.
_CHECKOUT_CHILD = {"payment": "payment_intent_data", "subscription": "subscription_data", "setup": "setup_intent_data"}


def not_configured() -> errors.DomainError:
    return errors.FailedPrecondition(
        f"payments are not configured: set {NOT_CONFIGURED_SETTING}",
        reason="STRIPE_NOT_CONFIGURED",
        metadata={"setting": NOT_CONFIGURED_SETTING},
    )


def _plain(obj: Any) -> dict[str, Any]:
    """StripeObject -> plain dicts (the domain never sees SDK types)."""
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(obj)


class StripeGateway:
    def __init__(
        self, api_key: str | SecretStr, api_base: str = "", *, timeout: float = 20.0, max_retries: int = 2
    ) -> None:
        # Settings hold the key as a SecretStr (hidden from repr); Stripe needs the string.
        api_key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._http: stripe.HTTPXClient | None = None
        self._client: stripe.StripeClient | None = None
        if api_key:
            self._http = stripe.HTTPXClient(timeout=timeout)
            bases: dict[str, str] = {"api": self.api_base} if self.api_base else {}
            self._client = stripe.StripeClient(
                api_key,
                stripe_version=STRIPE_API_VERSION,
                base_addresses=bases,  # type: ignore[arg-type]
                http_client=self._http,
                # The SDK retries with the same idempotency key.
                max_network_retries=max_retries,
            )

    @property
    def configured(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            raise not_configured()
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()

    @staticmethod
    def _options(idempotency_key: str | None) -> dict[str, Any]:
        return {"idempotency_key": idempotency_key} if idempotency_key else {}

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            # Never longer than the caller waits: its retry (same request_id, so
            # the same Stripe idempotency key) finds whatever Stripe did.
            async with deadline.bounded(self.timeout):
                return _plain(await fn(*args, **kwargs))
        except stripe.CardError as exc:
            raise errors.DomainError(
                "the card was declined",
                code=errors.Code.FAILED_PRECONDITION,
                reason="PAYMENT_FAILED",
                metadata={"decline_code": exc.code or "card_declined"},
            ) from None
        except stripe.StripeError as exc:
            log.warning("stripe call failed", extra={"call": what, "error": type(exc).__name__, "status": exc.http_status})
            raise errors.Unavailable(
                "the payment provider is unavailable, retry with the same request_id",
                reason="STRIPE_UNAVAILABLE",
                metadata={"call": what},
            ) from None

    # ---- customers -----------------------------------------------------------------

    async def create_customer(self, user_id: str) -> dict[str, Any]:
        """One customer per user: the idempotency key is the user's (server/ledger/keys.py)."""
        params = {"metadata": {"user_id": user_id}, "description": f"FlowNexus user {user_id}"}
        return await self._call(
            "customers.create", self.client.v1.customers.create_async, params,
            self._options(keys.stripe_customer(user_id)),
        )

    # ---- checkout --------------------------------------------------------------------

    async def _checkout_session(
        self,
        mode: str,
        *,
        customer_id: str,
        user_id: str,
        metadata: dict[str, str],
        content: dict[str, Any],
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        child: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A Checkout Session of `mode` for the user's customer: `content` is what
        it sells (line items, or a currency), and the object it creates (the
        PaymentIntent, Subscription or SetupIntent) carries `child` and the same
        metadata, so that its events map back."""
        params: dict[str, Any] = {
            "mode": mode,
            "customer": customer_id,
            "client_reference_id": user_id,
            **content,
            "metadata": metadata,
            _CHECKOUT_CHILD[mode]: {**(child or {}), "metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        return await self._call(
            "checkout.sessions.create",
            self.client.v1.checkout.sessions.create_async,
            params,
            self._options(idempotency_key),
        )

    async def create_checkout_session(
        self,
        *,
        customer_id: str,
        user_id: str,
        payment_id: str,
        amount_cents: int,
        credits_millicredits: int,
        product_name: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        item = {
            "quantity": 1,
            "price_data": {"currency": "usd", "unit_amount": amount_cents, "product_data": {"name": product_name}},
        }
        return await self._checkout_session(
            "payment",
            customer_id=customer_id,
            user_id=user_id,
            metadata={"user_id": user_id, "credits": str(credits_millicredits), "payment_id": payment_id},
            content={"line_items": [item]},
            # The card is saved for off-session auto-refill later.
            child={"setup_future_usage": "off_session"},
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call(
            "checkout.sessions.retrieve", self.client.v1.checkout.sessions.retrieve_async, session_id
        )

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return await self._call(
            "payment_intents.retrieve", self.client.v1.payment_intents.retrieve_async, payment_intent_id
        )

    # ---- webhooks ----------------------------------------------------------------------

    @staticmethod
    def verify_event(payload: bytes, signature: str | None, secret: str, tolerance: int = 300) -> Any:
        """The signed body's JSON, whatever its shape (the caller checks it).
        Raises ValueError / stripe.SignatureVerificationError when not authentic."""
        # The SDK's construct_event assumes a JSON object and fails on any
        # other authentic body with errors of its own: check the signature
        # here, parse after.
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature or "", secret, tolerance)
        return json.loads(text)

    # ---- subscriptions (tiers) ---------------------------------------------------

    async def saved_payment_method(self, customer_id: str) -> str | None:
        """The customer's default card for invoices, else the first saved card."""
        cus = await self._call("customers.retrieve", self.client.v1.customers.retrieve_async, customer_id)
        default = (cus.get("invoice_settings") or {}).get("default_payment_method")
        if default:
            return str(default if isinstance(default, str) else default.get("id"))
        listed = await self._call(
            "payment_methods.list", self.client.v1.payment_methods.list_async,
            {"customer": customer_id, "type": "card", "limit": 1},
        )
        data = listed.get("data") or []
        return str(data[0]["id"]) if data else None

    async def _pro_plan(self, amount_cents: int) -> str:
        """A monthly USD plan for Pro, created once under a deterministic id."""
        plan_id = f"flownexus-pro-{amount_cents}-usd-month"
        try:
            async with deadline.bounded(self.timeout):
                await self.client.v1.plans.retrieve_async(plan_id)
        except stripe.InvalidRequestError:
            await self._call(
                "plans.create", self.client.v1.plans.create_async,
                {"id": plan_id, "amount": amount_cents, "currency": "usd", "interval": "month",
                 "product": {"name": "FlowNexus Pro"}},
                self._options(f"plan:{plan_id}"),
            )
        return plan_id

    async def create_pro_subscription(
        self, *, customer_id: str, user_id: str, payment_method: str, price_id: str, amount_cents: int,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Charges the saved card now; a decline raises PAYMENT_FAILED (nothing is left open)."""
        await self._call(
            "customers.update", self.client.v1.customers.update_async, customer_id,
            {"invoice_settings": {"default_payment_method": payment_method}},
            self._options(f"{idempotency_key}:default-pm"),
        )
        item = {"price": price_id} if price_id else {"plan": await self._pro_plan(amount_cents)}
        params: dict[str, Any] = {
            "customer": customer_id,
            "items": [item],
            "metadata": {"user_id": user_id, "tier": "pro"},
            "payment_behavior": "error_if_incomplete",
        }
        sub = await self._call(
            "subscriptions.create", self.client.v1.subscriptions.create_async, params, self._options(idempotency_key)
        )
        if sub.get("status") == "incomplete":
            # The first invoice was declined but Stripe kept the subscription
            # (an emulator, or an account that allows incomplete ones): the same
            # answer as a 402, and nothing left open.
            code = await self._invoice_decline(sub.get("latest_invoice"))
            try:
                await self.cancel_subscription(str(sub["id"]))
            except errors.DomainError:
                log.warning("could not cancel an incomplete subscription", extra={"subscription": sub["id"]})
            raise errors.DomainError(
                "the card was declined", code=errors.Code.FAILED_PRECONDITION, reason="PAYMENT_FAILED",
                metadata={"decline_code": code},
            )
        return sub

    async def _invoice_decline(self, invoice: Any) -> str:
        invoice_id = stripe_id(invoice)
        if not invoice_id:
            return "card_declined"
        try:
            found = await self._call("invoices.retrieve", self.client.v1.invoices.retrieve_async, str(invoice_id))
        except errors.DomainError:
            return "card_declined"
        charge = found.get("charge")
        code = charge.get("failure_code") if isinstance(charge, dict) else None
        return str(code or "card_declined")

    async def create_subscription_checkout(
        self, *, customer_id: str, user_id: str, price_id: str, amount_cents: int, success_url: str,
        cancel_url: str, idempotency_key: str,
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"quantity": 1}
        if price_id:
            item["price"] = price_id
        else:
            item["price_data"] = {
                "currency": "usd",
                "unit_amount": amount_cents,
                "recurring": {"interval": "month"},
                "product_data": {"name": "FlowNexus Pro"},
            }
        return await self._checkout_session(
            "subscription",
            customer_id=customer_id,
            user_id=user_id,
            metadata={"user_id": user_id, "tier": "pro"},
            content={"line_items": [item]},
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )

    async def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> dict[str, Any]:
        return await self._call(
            "subscriptions.update", self.client.v1.subscriptions.update_async, subscription_id,
            {"cancel_at_period_end": True}, self._options(idempotency_key),
        )

    async def cancel_subscription(self, subscription_id: str) -> dict[str, Any]:
        return await self._call(
            "subscriptions.cancel", self.client.v1.subscriptions.cancel_async, subscription_id
        )

    # ---- auto-refill ------------------------------------------------------------

    async def charge_off_session(
        self, *, customer_id: str, payment_method: str, amount_cents: int, metadata: dict[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        """An off-session PaymentIntent, confirmed at once. A decline is an outcome,
        not an exception: {"status": "failed", "code", "decline_code", "id"}.
        Network errors and timeouts raise STRIPE_UNAVAILABLE; the caller retries
        with the same idempotency key, so Stripe never charges twice."""
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": "usd",
            "customer": customer_id,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": metadata,
        }
        try:
            async with deadline.bounded(self.timeout):
                pi = _plain(
                    await self.client.v1.payment_intents.create_async(params, self._options(idempotency_key))  # type: ignore[arg-type]
                )
        except stripe.CardError as exc:
            err = exc.error
            pi_obj = getattr(err, "payment_intent", None) if err is not None else None
            return {
                "status": "failed",
                "code": exc.code or "card_declined",
                "decline_code": (getattr(err, "decline_code", None) if err is not None else None) or "",
                "id": str((pi_obj or {}).get("id") or "") if isinstance(pi_obj, dict) else str(getattr(pi_obj, "id", "") or ""),
            }
        except stripe.InvalidRequestError as exc:
            # The saved card is gone (detached, deleted) or unusable: not retryable.
            return {"status": "failed", "code": exc.code or "invalid_request", "decline_code": "", "id": ""}
        except stripe.StripeError as exc:
            log.warning("stripe call failed", extra={"call": "payment_intents.create", "error": type(exc).__name__, "status": exc.http_status})
            raise errors.Unavailable(
                "the payment provider is unavailable", reason="STRIPE_UNAVAILABLE", metadata={"call": "payment_intents.create"}
            ) from None
        return pi

    async def retrieve_payment_method(self, payment_method_id: str) -> dict[str, Any]:
        return await self._call(
            "payment_methods.retrieve", self.client.v1.payment_methods.retrieve_async, payment_method_id
        )

    async def retrieve_setup_intent(self, setup_intent_id: str) -> dict[str, Any]:
        return await self._call("setup_intents.retrieve", self.client.v1.setup_intents.retrieve_async, setup_intent_id)

    async def create_setup_session(
        self, *, customer_id: str, user_id: str, success_url: str, cancel_url: str, idempotency_key: str
    ) -> dict[str, Any]:
        """A setup-mode Checkout Session: saves a card for off-session refills."""
        return await self._checkout_session(
            "setup",
            customer_id=customer_id,
            user_id=user_id,
            metadata={"user_id": user_id, "purpose": "auto_refill_setup"},
            content={"currency": "usd"},
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )
