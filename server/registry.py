"""What a domain plugs into the process: its gRPC servicer, HTTP routes,
background jobs and ledger extensions (hooks that run inside every
group-commit batch). Each domain's `register` (in its grpc.py) fills it in;
the App reads it once at start. Stripe events have their own table, owned by
payments (server/payments/events.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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

    def ledger_extension(self, hook: BatchHook, *, wallet_tables: Sequence[Any] = ()) -> None:
        """Runs inside every batch, before its write-back, under the batch's locks.
        `wallet_tables`: tables keyed by user_id that the hook reads with
        `tx.read_in` for the batch's wallets; they are loaded with the wallets
        (one round trip on PostgreSQL) instead of by a statement of the hook's."""
        self.writer.before_flush.append(hook)
        self.writer.wallet_tables += [t for t in wallet_tables if t not in self.writer.wallet_tables]
