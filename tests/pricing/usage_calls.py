"""Calls the usage-pricing tests make: spends, holds and captures by usage, and
a rate card version published through PricingService."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import common_pb2, usage_pb2
from google.protobuf.duration_pb2 import Duration

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
