"""A thin async helper over the generated stubs. It does only three things:
- attaches the bearer token to every call;
- gives a mutation without a request_id one, once, and installs the packaged
  gRPC service config (service_config.json), so the channel itself retries
  UNAVAILABLE resending the same request (the same request_id: the server
  applies a mutation once however often it arrives);
- turns ErrorInfo reasons into typed exceptions (flownexus_billing_client.errors).

    async with BillingClient("localhost:50051", token) as billing:
        r = await billing.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1500, request_id="job-42"))
        async for event in billing.balance.WatchBalance(balance_pb2.WatchBalanceRequest()):
            ...
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from flownexus.billing.v1 import (
    balance_pb2_grpc,
    earnings_pb2_grpc,
    history_pb2_grpc,
    payments_pb2_grpc,
    refill_pb2_grpc,
    tier_pb2_grpc,
    usage_pb2_grpc,
)

from flownexus_billing_client.errors import from_rpc_error
from flownexus_billing_client.service_config import channel_options


class _Service:
    """Wraps one generated stub; each attribute is the stub's method with the
    three behaviours added."""

    def __init__(self, client: BillingClient, stub: Any) -> None:
        self._client = client
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if isinstance(method, grpc.aio.UnaryStreamMultiCallable):
            return lambda request, **kw: self._client._stream(method, request, **kw)
        return lambda request, **kw: self._client._unary(method, request, **kw)


class BillingClient:
    def __init__(
        self,
        target: str,
        token: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        max_attempts: int = 4,
        backoff_seconds: float = 0.2,
        timeout_seconds: float | None = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.token = token
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        # The caller's options come last: their own grpc.service_config wins.
        options = [
            *channel_options(max_attempts=self.max_attempts, initial_backoff_seconds=backoff_seconds),
            *options,
        ]
        self.channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._bind_services()

    def _bind_services(self) -> None:
        ch = self.channel
        self.balance = _Service(self, balance_pb2_grpc.BalanceServiceStub(ch))
        self.usage = _Service(self, usage_pb2_grpc.UsageServiceStub(ch))
        self.history = _Service(self, history_pb2_grpc.HistoryServiceStub(ch))
        self.earnings = _Service(self, earnings_pb2_grpc.EarningsServiceStub(ch))
        self.tier = _Service(self, tier_pb2_grpc.TierServiceStub(ch))
        self.payments = _Service(self, payments_pb2_grpc.PaymentsServiceStub(ch))
        self.refill = _Service(self, refill_pb2_grpc.RefillServiceStub(ch))

    def with_token(self, token: str) -> BillingClient:
        """The same channel, calling with another bearer token (a service that
        acts for many principals keeps one connection). Close only the original."""
        view = object.__new__(BillingClient)
        view.__dict__.update(self.__dict__)
        view.token = token
        view._bind_services()
        return view

    async def __aenter__(self) -> BillingClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _metadata(self, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"), *extra)

    async def _unary(
        self, method: Any, request: Any, *, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None  # noqa: ASYNC109 - the gRPC deadline
    ) -> Any:
        # A mutation without a request_id gets one here, once, so that every
        # retry of the channel (the service config's retryPolicy) carries the same id.
        if "request_id" in request.DESCRIPTOR.fields_by_name and not request.request_id:
            request.request_id = uuid.uuid4().hex
        try:
            return await method(request, metadata=self._metadata(metadata), timeout=timeout or self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def _stream(
        self, method: Any, request: Any, *, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None  # noqa: ASYNC109 - the gRPC deadline
    ) -> AsyncIterator[Any]:
        call = method(request, metadata=self._metadata(metadata), timeout=timeout)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()
