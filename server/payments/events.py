"""The one dispatch of Stripe events: a table from event type to its handler.

Payments registers the handlers of purchases, refunds and disputes; other
domains register theirs in their `register` (tiers: invoices, subscriptions
and the Pro upgrade's subscription-mode Checkout; auto-refill: a hook after
every event). Every handler runs inside payments' exclusive webhook
transaction, with the stored event: they commit together or not at all.

To handle a new event type: write `async def handler(tx, obj) -> Handled`
and call `router.on("the.event.type", handler)` (with `mode=` for a
Checkout Session of one mode only). One handler per type (and mode).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.ledger.tx import LedgerTx
from server.payments.models import PaymentRow, StripeObject


@dataclass
class Handled:
    """What a handler did: the outcome stored with the event, and the payment
    the event concerned (the hooks see it; the stored event names it)."""

    outcome: str
    payment: PaymentRow | None = None
    card_saved_for: str = ""  # the user whose card the event saved


Handler = Callable[[LedgerTx, StripeObject], Awaitable[Handled]]
# After every event, with what its handler did: fn(tx, event_type, handled).
Hook = Callable[[LedgerTx, str, Handled], Awaitable[None]]


def outcome_only(fn: Callable[[LedgerTx, StripeObject], Awaitable[str]]) -> Handler:
    """A handler of an event that concerns no payment of its own."""

    async def handler(tx: LedgerTx, obj: StripeObject) -> Handled:
        return Handled(await fn(tx, obj))

    return handler


@dataclass
class EventRouter:
    # (event type, Checkout mode or "") -> handler; a mode's own handler wins.
    table: dict[tuple[str, str], Handler] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)

    def on(self, event_type: str, handler: Handler, *, mode: str = "") -> None:
        key = (event_type, mode)
        if key in self.table:
            raise ValueError(f"a handler of {event_type} {mode} is registered already")
        self.table[key] = handler

    def after_every_event(self, hook: Hook) -> None:
        self.hooks.append(hook)

    @property
    def types(self) -> set[str]:
        return {t for t, _ in self.table}

    async def dispatch(self, tx: LedgerTx, event_type: str, obj: StripeObject) -> Handled:
        mode = str(obj.get("mode") or "") if event_type.startswith("checkout.session.") else ""
        handler = (mode and self.table.get((event_type, mode))) or self.table.get((event_type, ""))
        handled = await handler(tx, obj) if handler is not None else Handled("ignored")
        for hook in self.hooks:
            await hook(tx, event_type, handled)
        return handled
