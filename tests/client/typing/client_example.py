"""A typed caller of the client helper: `mypy --strict` must accept it with
every response type known (tests/client/test_client_typing.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import assert_type

from flownexus.billing.v1 import balance_pb2, usage_pb2
from flownexus_billing_client import BillingClient, SyncUsageRecorder, UsageRecorder


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


async def record_usage(billing: BillingClient) -> int:
    async with UsageRecorder(billing, max_batch=100, flush_interval_ms=20) as recorder:
        pending = await recorder.spend(usage_pb2.SpendRequest(user_id="u1", amount_millicredits=1))
        assert_type(pending, asyncio.Future[usage_pb2.SpendResponse])
        r = await pending
        assert_type(r, usage_pb2.SpendResponse)
    batch = await billing.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=[usage_pb2.SpendRequest()]))
    assert_type(batch, usage_pb2.SpendBatchResponse)
    return r.credits_millicredits + len(batch.results)


def record_usage_from_threads(token: str) -> int:
    with SyncUsageRecorder("localhost:50051", token, max_batch=100) as recorder:
        future = recorder.spend(usage_pb2.SpendRequest(user_id="u1", amount_millicredits=1))
        assert_type(future, concurrent.futures.Future[usage_pb2.SpendResponse])
    return future.result().credits_millicredits
