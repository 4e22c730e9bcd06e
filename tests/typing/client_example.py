"""A typed caller of the client helper: `mypy --strict` must accept it with
every response type known (tests/test_client_typing.py)."""

from __future__ import annotations

from typing import assert_type

from flownexus.billing.v1 import balance_pb2, usage_pb2
from flownexus_billing_client import BillingClient


async def spend_and_watch(token: str) -> int:
    async with BillingClient("localhost:50051", token) as billing:
        r = await billing.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1500, request_id="job-42"))
        assert_type(r, usage_pb2.SpendResponse)
        balance = await billing.balance.GetBalance(balance_pb2.GetBalanceRequest(), timeout=2.0)
        assert_type(balance, balance_pb2.GetBalanceResponse)
        async for event in billing.balance.WatchBalance(balance_pb2.WatchBalanceRequest()):
            assert_type(event, balance_pb2.WatchBalanceResponse)
            break
        other = billing.with_token("t2")
        hold = await other.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=1))
        return r.credits_millicredits + balance.credits_millicredits + hold.hold.amount_millicredits
