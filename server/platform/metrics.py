"""Prometheus metrics, served at GET /metrics on the HTTP listener.

RPC metrics follow the gRPC ecosystem's convention (go-grpc-prometheus /
go-grpc-middleware): `grpc_server_started_total`, `grpc_server_handled_total`
and the `grpc_server_handling_seconds` histogram, labelled `grpc_type`,
`grpc_service`, `grpc_method` (and `grpc_code`, spelt as Go spells codes:
`OK`, `FailedPrecondition`, ...), so stock gRPC dashboards and alerts work.
The process and Python runtime collectors add `process_*` and `python_*`."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# grpc_code values as go-grpc-prometheus writes them (Go's codes.Code.String()).
GO_CODE_NAMES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


class RpcMetrics:
    """One method's series, resolved once: labels() hashes and locks on every
    call, so the hot path keeps the children."""

    __slots__ = ("_handled", "_labels", "_parent", "handling", "method", "started")

    def __init__(self, metrics: Metrics, method: str, grpc_type: str) -> None:
        self.method = method
        service, _, name = method.lstrip("/").partition("/")
        self._labels = (grpc_type, service, name)
        self._parent = metrics.handled_total
        self.started = metrics.started_total.labels(*self._labels)
        self.handling = metrics.handling_seconds.labels(*self._labels)
        self._handled: dict[str, Any] = {}

    def done(self, code: str, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._parent.labels(*self._labels, GO_CODE_NAMES.get(code, code))
        child.inc()
        self.handling.observe(seconds)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        rpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started_total = Counter(
            "grpc_server_started_total", "RPCs started on the server", rpc_labels, registry=r
        )
        self.handled_total = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code",
            [*rpc_labels, "grpc_code"], registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds",
            rpc_labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self._kind_children: dict[str, Any] = {}
        self.transfers_total = Counter("billing_ledger_transfers_total", "Ledger transfers by kind", ["kind"], registry=r)
        self.credits_spent = Counter("billing_credits_spent_millicredits_total", "Credits spent", registry=r)
        self.credits_granted = Counter("billing_credits_granted_millicredits_total", "Credits granted", registry=r)
        self.credits_clawed_back = Counter(
            "billing_credits_clawed_back_millicredits_total", "Credits clawed back", registry=r
        )
        self.refill_attempts = Counter("billing_refill_attempts_total", "Auto-refill attempts by outcome", ["outcome"], registry=r)
        self.webhook_events = Counter("billing_webhook_events_total", "Stripe webhook events", ["type", "result"], registry=r)
        # Calls and batch items refused, by ErrorInfo reason (BUDGET_EXCEEDED,
        # INSUFFICIENT_CREDITS, KEY_REVOKED, ...).
        self.refusals = Counter("billing_refusals_total", "Refused calls and batch items, by reason", ["reason"], registry=r)
        self._refusal_children: dict[str, Any] = {}
        self.watch_streams = Gauge("billing_watch_streams", "Active WatchBalance streams", registry=r)
        self.batch_size = Histogram(
            "billing_group_commit_batch_size",
            "Operations per group-commit transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "billing_group_commit_seconds", "Group-commit transaction time", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.events_total = Counter(
            "billing_events_total", "Billing events committed, by type (balance.low: low-balance alerts)", ["type"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "billing_webhook_deliveries_total", "Webhook delivery attempts to the platform's endpoints, by outcome",
            ["outcome"], registry=r,
        )
        self._refills = {"refill.succeeded": 0, "refill.failed": 0}
        Gauge(
            "billing_auto_refill_success_ratio",
            "Auto-refill charges that succeeded over those that succeeded or failed (this process, since its start; 1 before any)",
            registry=r,
        ).set_function(self._refill_ratio)

    def refused(self, reason: str) -> None:
        child = self._refusal_children.get(reason)
        if child is None:
            child = self._refusal_children[reason] = self.refusals.labels(reason)
        child.inc()

    def observe_billing_events(self, types: dict[str, int]) -> None:
        for t, n in types.items():
            self.events_total.labels(t).inc(n)
            if t in self._refills:
                self._refills[t] += n

    def _refill_ratio(self) -> float:
        ok, failed = self._refills["refill.succeeded"], self._refills["refill.failed"]
        return ok / (ok + failed) if ok + failed else 1.0

    def rpc(self, method: str, grpc_type: str) -> RpcMetrics:
        """The series of one method (`/pkg.Service/Method`); `grpc_type` is
        `unary` or `server_stream`."""
        return RpcMetrics(self, method, grpc_type)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_transfers(self, counts: dict[str, int], *, spent: int, granted: int, clawed: int) -> None:
        """One committed batch's transfers, tallied by the ledger
        (server/ledger/model.py `tally`): one counter update per kind."""
        for kind, n in counts.items():
            child = self._kind_children.get(kind)
            if child is None:
                child = self._kind_children[kind] = self.transfers_total.labels(kind)
            child.inc(n)
        if spent:
            self.credits_spent.inc(spent)
        if granted:
            self.credits_granted.inc(granted)
        if clawed:
            self.credits_clawed_back.inc(clawed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()
