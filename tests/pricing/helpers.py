"""Pricing test helpers: the stub, cards as requests, and the price rule
written out independently of the service (ceil by integer arithmetic)."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import common_pb2, pricing_pb2, pricing_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from server.platform.clock import Clock
from server.pricing import card as cards
from server.pricing.models import RateCardVersion
from server.pricing.service import DEFAULT_RATE_CARD, PricingService, Snapshot
from tests.harness import Running, auth

ADMIN = auth("ops", "admin")
USER = auth("uma")
SERVICE = auth("sandbox-runner", "service")

# The default card as the docs state it: meter -> (per_units, {dimension values: unit price}).
DEFAULT = {
    "sandbox.seconds": (1, {(("size", "small"),): 1, (("size", "medium"),): 2, (("size", "large"),): 4}),
    "training.steps": (1, {(("model", "small"),): 10, (("model", "base"),): 25, (("model", "large"),): 100}),
    "agent.deployments": (1, {(): 2000}),
    "template.deployments": (1, {(): 1000}),
    "api.calls": (1000, {(): 100}),
}


def stub(server: Running) -> pricing_pb2_grpc.PricingServiceStub:
    return pricing_pb2_grpc.PricingServiceStub(server.s.channel)


def ts(us: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(us)
    return t


def us(t: Timestamp) -> int:
    return t.seconds * 1_000_000 + t.nanos // 1000


def ceil_div(a: int, b: int) -> int:
    q, r = divmod(a, b)
    return q + (1 if r else 0)


def usage(meter: str, quantity: int, **dims: str) -> common_pb2.Usage:
    return common_pb2.Usage(meter=meter, quantity=quantity, dimensions=dims)


def meter(name: str, unit: str, prices: dict[tuple[tuple[str, str], ...], int] | int, *, per_units: int = 0,
          dims: dict[str, list[str]] | None = None, description: str = "") -> pricing_pb2.Meter:
    """A meter as PublishRateCard takes it: one price, or {((dim, value), ...): price}."""
    if isinstance(prices, int):
        pbs = [pricing_pb2.MeterPrice(unit_price_millicredits=prices)]
    else:
        pbs = [pricing_pb2.MeterPrice(dimensions=dict(k), unit_price_millicredits=v) for k, v in prices.items()]
    return pricing_pb2.Meter(
        name=name, unit=unit, description=description, per_units=per_units, prices=pbs,
        dimensions=[pricing_pb2.MeterDimension(name=n, values=v) for n, v in (dims or {}).items()],
    )


def doubled_default() -> list[pricing_pb2.Meter]:
    """The default card with every price doubled (a scheduled price change)."""
    out = []
    for name, (per, prices) in DEFAULT.items():
        dims: dict[str, list[str]] = {}
        for combo in prices:
            for d, v in combo:
                dims.setdefault(d, []).append(v)
        out.append(meter(name, "unit", {k: 2 * p for k, p in prices.items()}, per_units=per, dims=dims))
    return out


async def publish(server: Running, meters: list[pricing_pb2.Meter], request_id: str, *,
                  effective_us: int | None = None, md: Any = ADMIN) -> pricing_pb2.RateCardVersion:
    req = pricing_pb2.PublishRateCardRequest(meters=meters, request_id=request_id)
    if effective_us is not None:
        req.effective_time.CopyFrom(ts(effective_us))
    return (await stub(server).PublishRateCard(req, metadata=md)).rate_card


async def estimate(server: Running, u: common_pb2.Usage, at_us: int | None = None,
                   md: Any = USER) -> pricing_pb2.EstimateCostResponse:
    req = pricing_pb2.EstimateCostRequest(usage=u)
    if at_us is not None:
        req.usage_time.CopyFrom(ts(at_us))
    return await stub(server).EstimateCost(req, metadata=md)


def offline_pricing(*versions: RateCardVersion) -> PricingService:
    """A PricingService without a database: the default card as version 1
    (effective from the epoch), then `versions`, as a refresh would leave it."""
    card = cards.parse_toml(DEFAULT_RATE_CARD.read_text())
    pricing = PricingService(None, None, Clock(), card=card, lead_seconds=0)  # type: ignore[arg-type]
    pricing._snapshot = Snapshot([RateCardVersion(1, card, 0, 0, "config", "v1"), *versions])
    return pricing
