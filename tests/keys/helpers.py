"""Calls the key tests share: create a key, fund a wallet, spend through a key."""

from __future__ import annotations

import itertools
from typing import Any

from flownexus.billing.v1 import admin_pb2, common_pb2, keys_pb2, keys_pb2_grpc, usage_pb2

from tests.harness import Running, auth

ADMIN = auth("ops", "admin")
SERVICE = auth("sandbox-runner", "service")
CREDIT = 1000
_ids = itertools.count()

DAY = keys_pb2.BUDGET_WINDOW_DAY
HOUR = keys_pb2.BUDGET_WINDOW_HOUR
MONTH = keys_pb2.BUDGET_WINDOW_MONTH
LIFETIME = keys_pb2.BUDGET_WINDOW_LIFETIME


def keys_stub(server: Running) -> keys_pb2_grpc.KeysServiceStub:
    return keys_pb2_grpc.KeysServiceStub(server.s.channel)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def fund(server: Running, user: str, millicredits: int) -> None:
    await server.s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
        user_id=user, amount_millicredits=millicredits, reason="test funds", lot=common_pb2.LOT_KIND_PURCHASED,
        request_id=f"fund-{next(_ids)}"), metadata=ADMIN)


async def create_key(
    server: Running, user: str, budgets: list[tuple[int, int]], *, label: str = "agent", **fields: Any
) -> keys_pb2.CreateKeyResponse:
    req = keys_pb2.CreateKeyRequest(
        label=label, budgets=[keys_pb2.Budget(window=w, limit_millicredits=limit) for w, limit in budgets],
        request_id=f"key-{next(_ids)}", **fields,
    )
    return await keys_stub(server).CreateKey(req, metadata=auth(user))


def spend_req(amount: int, request_id: str, **fields: Any) -> usage_pb2.SpendRequest:
    return usage_pb2.SpendRequest(amount_millicredits=amount, request_id=request_id, category="agent", **fields)
