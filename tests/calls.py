"""Small client calls that many tests make, through the generated stubs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
from flownexus.billing.v1 import balance_pb2, common_pb2, history_pb2, usage_pb2
from google.protobuf.duration_pb2 import Duration

from tests.harness import Running, auth
from tests.stripe_fake import WEBHOOK_SECRET, encode, sign

# The free tier's 100 credits, in millicredits.
FREE = 100_000
DAY_S = 86_400


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def balance(server: Running, user: str) -> balance_pb2.GetBalanceResponse:
    """The user's own balance, asked with the user's own token."""
    return await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))


async def credits(server: Running, user: str) -> int:
    return int((await balance(server, user)).credits_millicredits)


async def spend(server: Running, user: str, amount: int, request_id: str, **fields: Any) -> usage_pb2.SpendResponse:
    req = usage_pb2.SpendRequest(amount_millicredits=amount, request_id=request_id, **fields)
    return await server.s.usage.Spend(req, metadata=auth(user))


async def reserve(server: Running, user: str, amount: int, request_id: str, *, ttl_s: int = 900) -> usage_pb2.Hold:
    req = usage_pb2.ReserveRequest(amount_millicredits=amount, request_id=request_id, ttl=Duration(seconds=ttl_s))
    return (await server.s.usage.Reserve(req, metadata=auth(user))).hold


async def capture(server: Running, user: str, hold_id: str, amount: int, request_id: str) -> usage_pb2.CaptureResponse:
    req = usage_pb2.CaptureRequest(hold_id=hold_id, amount_millicredits=amount, request_id=request_id)
    return await server.s.usage.Capture(req, metadata=auth(user))


async def release(server: Running, user: str, hold_id: str, request_id: str) -> usage_pb2.ReleaseResponse:
    req = usage_pb2.ReleaseRequest(hold_id=hold_id, request_id=request_id)
    return await server.s.usage.Release(req, metadata=auth(user))


async def transactions(
    server: Running, user: str, *types: common_pb2.TransactionType.ValueType
) -> list[common_pb2.Transaction]:
    """Every transaction of the user, oldest first."""
    out: list[common_pb2.Transaction] = []
    token = ""
    while True:
        page = await server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(user_id=user, page_size=100, page_token=token, types=list(types)),
            metadata=auth(user),
        )
        out.extend(page.transactions)
        token = page.next_page_token
        if not token:
            return out[::-1]


# ---- Stripe webhooks -------------------------------------------------------------------------


async def post_webhook(server: Running, body: bytes, headers: dict[str, str]) -> int:
    """POST a raw body to the webhook endpoint; the HTTP status."""
    assert server.app is not None
    url = f"http://127.0.0.1:{server.app.http_port}/webhooks/stripe"
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as r:
        return r.status


async def deliver(server: Running, ev: dict[str, Any], *, secret: str = WEBHOOK_SECRET, t: int | None = None) -> int:
    """Deliver a Stripe event, signed as Stripe would sign it; the HTTP status."""
    body = encode(ev)
    return await post_webhook(server, body, {"Stripe-Signature": sign(body, secret, t)})
