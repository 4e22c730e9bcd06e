"""Prometheus metrics, served at GET /metrics on the HTTP listener."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.ledger.model import EARNED_KINDS, BalanceEvent, Kind

GRANT_KINDS = {Kind.PURCHASE, Kind.AUTO_REFILL, Kind.ALLOWANCE_GRANT, *EARNED_KINDS, Kind.DISPUTE_RESTORE}
CLAWBACK_KINDS = {Kind.REFUND_CLAWBACK, Kind.DISPUTE_CLAWBACK}
_SPENT = {Kind.SPEND, Kind.HOLD_CAPTURE}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_total = Counter("billing_rpc_total", "RPCs by method and status code", ["method", "code"], registry=r)
        self.rpc_seconds = Histogram(
            "billing_rpc_seconds",
            "RPC latency by method and status code",
            ["method", "code"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._kind_children: dict[str, Any] = {}
        self.transfers_total = Counter("billing_ledger_transfers_total", "Ledger transfers by kind", ["kind"], registry=r)
        self.credits_spent = Counter("billing_credits_spent_millicredits_total", "Credits spent", registry=r)
        self.credits_granted = Counter("billing_credits_granted_millicredits_total", "Credits granted", registry=r)
        self.credits_clawed_back = Counter(
            "billing_credits_clawed_back_millicredits_total", "Credits clawed back", registry=r
        )
        self.refill_attempts = Counter("billing_refill_attempts_total", "Auto-refill attempts by outcome", ["outcome"], registry=r)
        self.webhook_events = Counter("billing_webhook_events_total", "Stripe webhook events", ["type", "result"], registry=r)
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

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        # labels() hashes and locks on every call; the hot path keeps the children.
        children = self._rpc_children.get((method, code))
        if children is None:
            short = method.rsplit(".", 1)[-1]
            children = self._rpc_children[(method, code)] = (
                self.rpc_total.labels(short, code), self.rpc_seconds.labels(short, code)
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_events(self, events: list[BalanceEvent]) -> None:
        # Each transfer is seen from at most two wallets; count it once, by its id.
        # Summed per batch first: one counter update per kind, not per transfer.
        seen: set[int] = set()
        counts: dict[str, int] = {}
        spent = granted = clawed = 0
        for e in events:
            t = e.transfer
            if t is None or t.id in seen:
                continue
            seen.add(t.id)
            kind = t.kind
            counts[kind] = counts.get(kind, 0) + 1
            amount = abs(t.amount)
            if kind in _SPENT:
                spent += amount
            elif kind in GRANT_KINDS:
                granted += amount
            elif kind in CLAWBACK_KINDS:
                clawed += amount
        for kind, n in counts.items():
            child = self._kind_children.get(kind)
            if child is None:
                child = self._kind_children[kind] = self.transfers_total.labels(Kind(kind).value)
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
