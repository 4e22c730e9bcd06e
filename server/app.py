"""The process: grpc.aio server (health, reflection, interceptors), the HTTP
listener (webhooks, metrics, health), the ledger writer and background workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any

import grpc
from aiohttp import web
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    earnings_pb2,
    events_pb2,
    history_pb2,
    keys_pb2,
    orgs_pb2,
    payments_pb2,
    portal_pb2,
    pricing_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.admin import grpc as admin_grpc
from server.admin.repository import AdminRepository
from server.admin.service import AdminService
from server.balance import grpc as balance_grpc
from server.balance.fanout import PgFanout, asyncpg_dsn
from server.balance.service import BalanceService
from server.balance.watch import WatchHub
from server.db.engine import Database
from server.earnings import grpc as earnings_grpc
from server.earnings.repository import EarningsRepository
from server.earnings.service import EarningsService
from server.events import grpc as events_grpc
from server.events.service import EventsService
from server.grpc import health, reflection
from server.grpc.interceptors import CallInterceptor
from server.history import grpc as history_grpc
from server.history.repository import HistoryRepository
from server.history.service import HistoryService
from server.keys import grpc as keys_grpc
from server.keys.models import SECRET_PREFIX
from server.keys.repository import KeysRepository
from server.keys.service import KeysService
from server.ledger.model import BalanceEvent, tally
from server.ledger.quota import StoredQuota
from server.ledger.repository import LedgerReader
from server.ledger.writer import LedgerWriter
from server.orgs import grpc as orgs_grpc
from server.orgs.repository import OrgsRepository
from server.orgs.service import OrgsService
from server.payments import grpc as payments_grpc
from server.payments.events import EventRouter
from server.payments.gateway import StripeGateway
from server.payments.service import PaymentsService
from server.platform.clock import Clock
from server.platform.config import Settings
from server.platform.fairshare import FairShare
from server.platform.metrics import METRICS
from server.platform.ratelimit import caller_shares, limiters, mutation_limits
from server.portal import grpc as portal_grpc
from server.portal.pages import Domains
from server.portal.service import PortalService
from server.pricing import grpc as pricing_grpc
from server.pricing.repository import PricingRepository
from server.pricing.service import PricingService, rate_card_file
from server.refill import grpc as refill_grpc
from server.refill import repository as refill_repository
from server.refill.service import RefillService, follow_account_flag
from server.refill.worker import RefillWorker
from server.registry import Registry
from server.tiers import grpc as tiers_grpc
from server.tiers.events import TierEvents
from server.tiers.rules import TierRules, catalogue
from server.tiers.service import TierService
from server.usage import grpc as usage_grpc
from server.usage.service import UsageService
from server.workers import Retention, Workers, ledger_jobs

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    m.DESCRIPTOR.services_by_name[n].full_name
    for m, n in (
        (balance_pb2, "BalanceService"),
        (payments_pb2, "PaymentsService"),
        (refill_pb2, "RefillService"),
        (history_pb2, "HistoryService"),
        (tier_pb2, "TierService"),
        (earnings_pb2, "EarningsService"),
        (usage_pb2, "UsageService"),
        (admin_pb2, "AdminService"),
        (keys_pb2, "KeysService"),
        (orgs_pb2, "OrgsService"),
        (events_pb2, "EventsService"),
        (portal_pb2, "PortalService"),
        (pricing_pb2, "PricingService"),
    )
)

# The services that cannot work without Stripe (BILLING_STRIPE_API_KEY).
# The services whose every RPC needs Stripe (each answers STRIPE_NOT_CONFIGURED
# without it): NOT_SERVING in health then. TierService (ListTiers, GetTier,
# Enterprise) and RefillService (GetAutoRefill) still serve in part, and say
# STRIPE_NOT_CONFIGURED on the calls that need a card.
STRIPE_SERVICE_NAMES = frozenset({payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name})


class App:
    """The composition root: the ledger core, then every domain in dependency
    order (payments, refill, balance, usage, history, earnings, tiers). Each
    domain registers what it serves in `self.registry`."""

    def __init__(self, settings: Settings, clock: Clock | None = None, *, reuse_port: bool = False) -> None:
        self.settings = settings
        # One of the processes of `serve --workers N`: the ports are shared (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.clock = clock or Clock()
        self.db = Database(settings.database_url)
        self.hub = WatchHub(settings.watch_queue_size)
        # Several replicas on one PostgreSQL: WatchBalance events cross via LISTEN/NOTIFY.
        self.fanout: PgFanout | None = (
            None if self.db.is_sqlite else PgFanout(asyncpg_dsn(settings.database_url), self.hub)
        )
        self.tiers = catalogue(settings)
        self.tier_rules = TierRules(settings)
        # Each caller's share of the server (server/platform/fairshare.py): the
        # interceptor paces unary calls by it; the writer's batches tell it how busy the ledger is.
        self.fair = FairShare(
            settings.fair_calls_per_second, settings.user_fair_weight, settings.service_fair_weight,
            settings.fair_max_waiting, lag_target=settings.fair_loop_lag_ms / 1000,
        ) if settings.fair_calls_per_second > 0 else None
        self.writer = LedgerWriter(
            self.db,
            self.clock,
            self.tier_rules,
            max_batch=settings.batch_max_ops,
            publish=self._publish,
            after_batch=self._after_batch,
            quota=StoredQuota(settings.user_max_stored_requests_per_day, settings.service_max_stored_requests_per_day),
        )
        self.reader = LedgerReader(self.db.reader, self.db.fast)
        self.workers = Workers(settings.worker_interval_seconds)
        ledger_jobs(self.workers, self.writer, self.reader, self.clock, Retention(
            settings.idempotency_retention.total_seconds(), settings.idempotency_prune_batch,
            settings.idempotency_prune_max_batches,
        ))
        reg = self.registry = Registry(self.writer, self.workers)

        # Prices first: the domains that spend by usage price with it. The rate
        # card file is read and validated here: a bad one stops the start.
        self.pricing = PricingService(
            self.writer, PricingRepository(self.db.reader), self.clock, card=rate_card_file(settings.rate_card),
            lead_seconds=settings.rate_card_lead_seconds,
        )
        pricing_grpc.register(reg, self.pricing)

        self.stripe = StripeGateway(settings.stripe_api_key, settings.stripe_api_base)
        # Stripe events: one table, filled by payments, refill and tiers in this order.
        self.stripe_events = EventRouter()
        # Orgs first: every domain that acts on a wallet asks it about org wallets.
        self.orgs = OrgsService(self.writer, OrgsRepository(self.db.reader, self.db.fast), self.clock, settings)
        orgs_grpc.register(reg, self.orgs)
        self.workers.add("reset_member_budgets", self.orgs.reset_windows)

        self.payments = PaymentsService(
            settings, self.db, self.writer, self.clock, self.stripe, self.stripe_events, self.orgs.access
        )
        payments_grpc.register(reg, self.payments)

        # The worker first: enabling auto-refill below the threshold charges at once.
        self.refill_worker = RefillWorker(settings, self.writer, self.payments)
        self.refill = RefillService(
            settings, self.db, self.writer, self.clock, self.payments, self.refill_worker, self.orgs.access
        )
        refill_grpc.register(reg, self.refill, self.refill_worker, self.stripe_events)

        self.balance = BalanceService(self.writer, self.reader, self.clock, self.refill.lookup, self.orgs.wallet_of)
        balance_grpc.register(reg, self.balance, self.hub, self.clock)

        # Keys before usage: every Spend through a key is held to its budgets.
        self.keys = KeysService(
            self.writer, KeysRepository(self.db.reader, self.db.fast), self.clock, settings, self.orgs.access
        )
        keys_grpc.register(reg, self.keys)
        self.workers.add("reset_key_budgets", self.keys.reset_windows)

        self.mutations = mutation_limits(settings)
        # Usage given instead of amounts is priced from the rate card (built above).
        self.usage = UsageService(
            self.writer, self.reader, settings, self.orgs.access, self.mutations, pricing=self.pricing
        )
        usage_grpc.register(reg, self.usage)

        self.history = HistoryService(self.balance, HistoryRepository(
            self.db.bulk, max_rows_examined=settings.history_max_rows_examined,
            report_max_rows=settings.report_max_rows_examined,
        ), self.clock)
        history_grpc.register(reg, self.history)

        self.earnings = EarningsService(
            self.writer, EarningsRepository(self.db.reader), settings, self.orgs.wallet_of
        )
        earnings_grpc.register(reg, self.earnings)

        self.tier_service = TierService(
            self.balance, self.writer, self.reader, self.db, self.clock, settings, self.tiers, self.tier_rules,
            self.payments, self.orgs.access,
        )
        tiers_grpc.register(
            reg, self.tier_service, TierEvents(self.tier_rules, self.tiers["pro"].monthly_millicredits, self.payments),
            self.stripe_events,
        )

        # Last: admin flags follow refill's rule (a flag pauses, clearing resumes).
        self.admin = AdminService(self.writer, AdminRepository(self.db.reader), follow_account_flag, self.refill.view)
        admin_grpc.register(reg, self.admin)

        # Last of the ledger extensions: the outbox writes what the others emitted.
        self.events = EventsService(
            settings, self.db, self.writer, self.clock, refill_repository.alert_thresholds, self._monthly_allowance,
            self.orgs.wallet_of,
        )
        self.deliveries = events_grpc.register(reg, self.events)

        # The portal's pages call the services above, as the session's user.
        self.portal = PortalService(settings, self.db, self.writer, self.clock)
        portal_grpc.register(reg, self.portal, Domains(
            self.balance, self.history, self.payments, self.refill, self.tier_service, self.keys, self.events,
        ))

        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._http_runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        # Set when a shutdown begins: /healthz answers 503 from then on.
        self.draining = False

    def _monthly_allowance(self, user: dict[str, Any]) -> int | None:
        """A user's monthly allowance (Pro's comes with its invoices, not the calendar)."""
        if user["tier"] in self.tiers and user["tier"] != "enterprise":
            return self.tiers[user["tier"]].monthly_millicredits
        return self.tier_rules.calendar_allowance(user)

    def _after_batch(self, size: int, seconds: float) -> None:
        METRICS.observe_batch(size, seconds)
        if self.fair is not None:
            self.fair.writer_busy(size, seconds)

    def _publish(self, events: list[BalanceEvent]) -> None:
        t = tally(events)  # the ledger reports to the metrics, which know no ledger
        METRICS.observe_transfers(t.counts, spent=t.spent, granted=t.granted, clawed=t.clawed)
        self.hub.deliver(events)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, *, migrate: bool = True) -> None:
        if migrate:
            await self.db.migrate()
        if self.fanout is not None:
            # Registered last, after the domains' hooks: one NOTIFY per committed batch.
            self.writer.before_flush.append(self.fanout.before_flush)
            await self.fanout.start()
        await self.writer.start()
        # Before serving: every spend and estimate prices from the stored versions.
        await self.pricing.start()
        await self._start_grpc()
        await self._start_http()
        for hook in self.registry.on_start:
            await hook()
        self.workers.start()
        log.info("billing service started", extra={"grpc_port": self.grpc_port, "http_port": self.http_port})

    def _server_options(self) -> list[tuple[str, Any]]:
        s = self.settings
        return [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # Without these, grpc.aio silently stops accepting streams at ~3,000.
            ("grpc.server.max_pending_requests", s.max_concurrent_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", s.max_concurrent_rpcs),
            ("grpc.max_concurrent_streams", s.max_concurrent_rpcs),
            ("grpc.keepalive_time_ms", s.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", s.min_ping_interval_ms),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", s.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ]

    async def _start_grpc(self) -> None:
        s = self.settings
        streams, calls = caller_shares(s)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            CallInterceptor(
                s.effective_jwt_secret, s.jwt_issuer, limiters(s), s.max_concurrent_rpcs,
                mutations=self.mutations, streams=streams, calls=calls,
                keys=self.keys.principal, key_prefix=SECRET_PREFIX,
                fair=self.fair,
            ),
        ]
        if s.otel_enabled:
            from server.platform.tracing import (
                server_interceptor,  # optional extra, imported lazily
            )

            tracing = server_interceptor()
            if tracing is not None:
                interceptors.insert(0, tracing)
        server = grpc.aio.server(
            interceptors=interceptors,
            options=self._server_options(),
            # A backstop only: grpc.aio makes calls past it wait silently, so
            # billing RPCs are refused earlier, at once (server/ratelimit.py).
            maximum_concurrent_rpcs=2 * s.max_concurrent_rpcs,
        )
        for add, servicer in self.registry.servicers:
            add(servicer, server)

        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", *SERVICE_NAMES):
            # Without a Stripe key PaymentsService refuses every call: say so.
            serving = self.stripe.configured or name not in STRIPE_SERVICE_NAMES
            await self.health.set(name, health.SERVING if serving else health.NOT_SERVING)
        reflection.enable((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
        self.grpc_port = self._bind(server, f"{s.grpc_host}:{s.grpc_port}")
        await server.start()
        self.grpc_server = server

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        from server.platform.tls import server_credentials

        creds = server_credentials(self.settings)
        if creds is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, creds)

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.add_routes(self.registry.routes)
        for setup in self.registry.http_setup:
            setup(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port, reuse_port=self.reuse_port or None)
        await site.start()
        self._http_runner = runner
        sockets = site._server.sockets if site._server else []  # type: ignore[attr-defined]
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.http_port

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "serving"})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=METRICS.render(), content_type="text/plain", charset="utf-8")

    async def begin_drain(self) -> None:
        """Tell load balancers to go elsewhere: /healthz 503 and every gRPC
        health status NOT_SERVING, while calls are still served."""
        self.draining = True
        if hasattr(self, "health"):
            await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful drain: refuse new calls, let running ones finish, flush the writer."""
        await self.begin_drain()
        await self.workers.stop()
        for hook in self.registry.on_stop:
            await hook()
        if self.grpc_server:
            await self.grpc_server.stop(grace)
        if self._http_runner:
            await self._http_runner.cleanup()
        await self.writer.stop()
        if self.fanout is not None:
            await self.fanout.stop()
            self.writer.before_flush.remove(self.fanout.before_flush)
        await self.db.dispose()
        self._stopped.set()

    async def serve_forever(self, *, migrate: bool = True) -> None:
        await self.start(migrate=migrate)
        # Everything loaded so far lives for the whole process: keep it out of
        # the cyclic collector, and collect young objects less often (the hot
        # path allocates many short-lived dicts and no cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            await self.begin_drain()
            grace = self.settings.shutdown_grace_seconds
            log.info("shutting down: health is NOT_SERVING, still serving calls", extra={"grace_seconds": grace})
            stop.clear()
            # A second signal ends the grace period at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), grace)
            log.info("draining", extra={"drain_seconds": self.settings.shutdown_drain_seconds})
        finally:
            await self.stop(self.settings.shutdown_drain_seconds)
