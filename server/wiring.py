"""Plugs the optional domains (payments, refill, tiers) into the App. Each
domain's issue adds its line here."""

from __future__ import annotations

from server.app import App


def build(app: App) -> App:
    _payments(app)
    _tiers(app)
    _refill(app)
    return app


def _tiers(app: App) -> None:
    """Issue 5: TierService (Pro through Stripe subscriptions, Enterprise by admins)."""
    from server.api.tiers import TierServicer
    from server.domain.tiers import TierRules
    from server.tiers.events import TierEvents
    from server.tiers.service import TierService

    rules = app.writer.tiers
    assert isinstance(rules, TierRules)
    gateway = getattr(app, "stripe", None)
    customers = app.payments.customers  # type: ignore[attr-defined]
    service = TierService(app.ledger, app.db, app.clock, app.settings, app.tiers, rules, gateway, customers)
    app.tier_service = service  # type: ignore[attr-defined]
    app.ext.tier = TierServicer(service)
    events = TierEvents(rules, app.tiers["pro"].monthly_millicredits)
    router = app.payments.events  # type: ignore[attr-defined]
    router.by_type.update(events.handlers())
    router.checkout_modes["subscription"] = events.checkout_session  # the Pro upgrade's Checkout
    app.workers.add("cancel_lapsed_subscriptions", service.cancel_lapsed)


def _payments(app: App) -> None:
    """Issue 3: PaymentsService, the Stripe webhook route and reconciliation."""
    from server.api.payments import PaymentsServicer, webhook_routes
    from server.payments.service import PaymentsService
    from server.stripe_gateway import StripeGateway

    s = app.settings
    gateway = StripeGateway(s.stripe_api_key, s.stripe_api_base)
    service = PaymentsService(s, app.db, app.writer, app.clock, gateway)
    app.payments = service  # type: ignore[attr-defined]  # for other domains (refill, tiers)
    app.stripe = gateway  # type: ignore[attr-defined]
    app.ext.payments = PaymentsServicer(service)
    app.ext.routes.extend(webhook_routes(service))
    app.ext.on_stop.append(gateway.close)
    app.workers.add("reconcile_payments", service.reconcile)


def _refill(app: App) -> None:
    """Issue 4: RefillService, the trigger in every ledger batch, the refill worker."""
    from server.api.refill import RefillServicer
    from server.refill.service import RefillService, on_stripe_event
    from server.refill.worker import RefillWorker

    service = RefillService(app.settings, app.db, app.writer, app.clock, app.stripe, app.payments)  # type: ignore[attr-defined]
    app.refill = service  # type: ignore[attr-defined]
    app.ext.refill = RefillServicer(service)
    app.ledger.refill_lookup = service.lookup  # CheckBalance reads the same data
    app.writer.before_flush.append(service.trigger)
    app.payments.events.hooks.append(on_stripe_event)  # type: ignore[attr-defined]
    app.workers.add("auto_refill", RefillWorker(service).run)
