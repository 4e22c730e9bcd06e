"""What a domain plugs into the process: its gRPC servicer, HTTP routes,
background jobs, ledger extensions (hooks that run inside every group-commit
batch) and Stripe webhook handlers. Each domain's `register` (in its grpc.py)
fills it in; the App reads it once at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from server.ledger.tx import LedgerTx
from server.ledger.writer import BatchHook, LedgerWriter
from server.workers import Job, Workers

AddServicer = Callable[[Any, grpc.aio.Server], None]
StripeObject = dict[str, Any]  # a Stripe API object as plain JSON

PaymentHook = Callable[[LedgerTx, str, "dict[str, Any] | None", StripeObject], Awaitable[None]]
TypeHandler = Callable[[LedgerTx, StripeObject], Awaitable[str]]
CheckoutModeHandler = Callable[[LedgerTx, str, StripeObject], Awaitable[str]]


@dataclass
class EventRouter:
    """Where domains plug into Stripe webhook handling (payments runs it), inside
    the same transaction as the stored event:
    - `by_type`: event types another domain owns (tiers: invoices, subscriptions);
    - `checkout_modes`: Checkout Sessions of another mode (tiers: subscription);
    - `hooks`: fn(tx, event_type, payment or None, object) after every event
      (auto-refill: saved cards, refill outcomes)."""

    by_type: dict[str, TypeHandler] = field(default_factory=dict)
    checkout_modes: dict[str, CheckoutModeHandler] = field(default_factory=dict)
    hooks: list[PaymentHook] = field(default_factory=list)


@dataclass
class Registry:
    writer: LedgerWriter
    workers: Workers
    servicers: list[tuple[AddServicer, Any]] = field(default_factory=list)
    routes: list[web.RouteDef] = field(default_factory=list)
    # Stripe webhook events by type, by Checkout mode, and hooks after every event.
    webhooks: EventRouter = field(default_factory=EventRouter)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run on the HTTP application before it starts (template environments).
    http_setup: list[Callable[[web.Application], None]] = field(default_factory=list)

    def servicer(self, add: AddServicer, servicer: Any) -> None:
        self.servicers.append((add, servicer))

    def job(self, name: str, job: Job) -> None:
        self.workers.add(name, job)

    def ledger_extension(self, hook: BatchHook) -> None:
        """Runs inside every batch, before its write-back, under the batch's locks."""
        self.writer.before_flush.append(hook)
