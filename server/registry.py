"""What a domain plugs into the process: its gRPC servicer, HTTP routes,
background jobs and ledger extensions (hooks that run inside every
group-commit batch). Each domain's `register` (in its grpc.py) fills it in;
the App reads it once at start. Stripe events have their own table, owned by
payments (server/payments/events.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from server.ledger.tx import MemberGuard, SpendGuard
from server.ledger.writer import BatchHook, LedgerWriter
from server.workers import Job, Workers

AddServicer = Callable[[Any, grpc.aio.Server], None]


@dataclass
class Registry:
    writer: LedgerWriter
    workers: Workers
    servicers: list[tuple[AddServicer, Any]] = field(default_factory=list)
    routes: list[web.RouteDef] = field(default_factory=list)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run on the HTTP application before it starts (template environments).
    http_setup: list[Callable[[web.Application], None]] = field(default_factory=list)

    def servicer(self, add: AddServicer, servicer: Any) -> None:
        self.servicers.append((add, servicer))

    def job(self, name: str, job: Job) -> None:
        self.workers.add(name, job)

    def spend_guard(self, guard: SpendGuard) -> None:
        """The scoped keys' budgets, used inside every batch under its locks."""
        self.writer.guard = guard

    def member_guard(self, guard: MemberGuard) -> None:
        """Org members' budgets, used inside every batch under its locks."""
        self.writer.member_guard = guard

    def ledger_extension(self, hook: BatchHook) -> None:
        """Runs inside every batch, before its write-back, under the batch's locks."""
        self.writer.before_flush.append(hook)
