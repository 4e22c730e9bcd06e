"""Calls the usage-pricing tests make: spends, holds and captures by usage, and
a rate card version published through PricingService."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import common_pb2, pricing_pb2, pricing_pb2_grpc, usage_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.harness import Running, auth

SVC = auth("sandbox-runner", "service")


def used(meter: str, quantity: int, **dimensions: str) -> common_pb2.Usage:
    return common_pb2.Usage(meter=meter, quantity=quantity, dimensions=dimensions)


async def spend_usage(
    server: Running, user: str, usage: common_pb2.Usage, request_id: str, **fields: Any
) -> usage_pb2.SpendResponse:
    """A Spend priced from usage, made by a platform service for the user."""
    req = usage_pb2.SpendRequest(user_id=user, usage=usage, request_id=request_id, **fields)
    return await server.s.usage.Spend(req, metadata=SVC)


async def reserve_usage(
    server: Running, user: str, usage: common_pb2.Usage, request_id: str, *, ttl_s: int = 900
) -> usage_pb2.ReserveResponse:
    req = usage_pb2.ReserveRequest(user_id=user, usage=usage, request_id=request_id, ttl=Duration(seconds=ttl_s))
    return await server.s.usage.Reserve(req, metadata=SVC)


async def capture_quantity(server: Running, hold_id: str, quantity: int, request_id: str) -> usage_pb2.CaptureResponse:
    req = usage_pb2.CaptureRequest(hold_id=hold_id, quantity=quantity, request_id=request_id)
    return await server.s.usage.Capture(req, metadata=SVC)


ADMIN = auth("pricing-admin", "admin")


def card_with(sandbox_small: int) -> list[pricing_pb2.Meter]:
    """The default rate card's meters, with another price for a small sandbox second."""
    return [
        pricing_pb2.Meter(
            name="sandbox.seconds", unit="second", description="A sandbox running, per second, by size", per_units=1,
            dimensions=[pricing_pb2.MeterDimension(name="size", values=["small", "medium", "large"])],
            prices=[pricing_pb2.MeterPrice(dimensions={"size": s}, unit_price_millicredits=p)
                    for s, p in (("small", sandbox_small), ("medium", 2), ("large", 4))],
        ),
        pricing_pb2.Meter(name="api.calls", unit="call", description="Calls to the platform API", per_units=1000,
                          prices=[pricing_pb2.MeterPrice(unit_price_millicredits=100)]),
    ]


async def publish(server: Running, sandbox_small: int, effective_us: int, request_id: str) -> int:
    """A new rate card version (admin), effective at the instant; its number."""
    ts = Timestamp()
    ts.FromMicroseconds(effective_us)
    r = await pricing_pb2_grpc.PricingServiceStub(server.s.channel).PublishRateCard(
        pricing_pb2.PublishRateCardRequest(meters=card_with(sandbox_small), effective_time=ts, request_id=request_id),
        metadata=ADMIN,
    )
    assert r.rate_card.effective_time.ToMicroseconds() == effective_us
    return int(r.rate_card.version)
