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
from typing import Any, Generic, TypeVar

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    earnings_pb2,
    earnings_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    orgs_pb2,
    orgs_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
    refill_pb2,
    refill_pb2_grpc,
    tier_pb2,
    tier_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from google.protobuf.message import Message

from flownexus_billing_client.errors import from_rpc_error
from flownexus_billing_client.service_config import channel_options

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class Unary(Generic[Req, Resp]):
    """One unary method of a service, with the three behaviours added:
    `response = await billing.usage.Spend(request)`."""

    __slots__ = ("_client", "_method")

    def __init__(self, client: BillingClient, method: Any) -> None:
        self._client = client
        self._method = method

    async def __call__(
        self, request: Req, *, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None  # noqa: ASYNC109 - the gRPC deadline
    ) -> Resp:
        response: Resp = await self._client._unary(self._method, request, metadata=metadata, timeout=timeout)
        return response


class Stream(Generic[Req, Resp]):
    """One server-streaming method: `async for item in billing.balance.WatchBalance(request)`."""

    __slots__ = ("_client", "_method")

    def __init__(self, client: BillingClient, method: Any) -> None:
        self._client = client
        self._method = method

    def __call__(
        self, request: Req, *, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None
    ) -> AsyncIterator[Resp]:
        return self._client._stream(self._method, request, metadata=metadata, timeout=timeout)


class _Service:
    """Wraps one generated stub. Each subclass declares the stub's methods with
    their request and response types (tests/client/test_client_typing.py checks the
    declarations against the generated stubs); each becomes a Unary or Stream
    over the stub's method."""

    def __init__(self, client: BillingClient, stub: Any) -> None:
        for name in type(self).__annotations__:
            method = getattr(stub, name)
            wrapper = Stream if isinstance(method, grpc.aio.UnaryStreamMultiCallable) else Unary
            setattr(self, name, wrapper(client, method))


class BalanceService(_Service):
    CheckBalance: Unary[balance_pb2.CheckBalanceRequest, balance_pb2.CheckBalanceResponse]
    GetBalance: Unary[balance_pb2.GetBalanceRequest, balance_pb2.GetBalanceResponse]
    WatchBalance: Stream[balance_pb2.WatchBalanceRequest, balance_pb2.WatchBalanceResponse]


class UsageService(_Service):
    Spend: Unary[usage_pb2.SpendRequest, usage_pb2.SpendResponse]
    SpendBatch: Unary[usage_pb2.SpendBatchRequest, usage_pb2.SpendBatchResponse]
    Reserve: Unary[usage_pb2.ReserveRequest, usage_pb2.ReserveResponse]
    Capture: Unary[usage_pb2.CaptureRequest, usage_pb2.CaptureResponse]
    Release: Unary[usage_pb2.ReleaseRequest, usage_pb2.ReleaseResponse]
    RefundUsage: Unary[usage_pb2.RefundUsageRequest, usage_pb2.RefundUsageResponse]


class HistoryService(_Service):
    ListTransactions: Unary[history_pb2.ListTransactionsRequest, history_pb2.ListTransactionsResponse]
    GetSpendingReport: Unary[history_pb2.GetSpendingReportRequest, history_pb2.GetSpendingReportResponse]


class EarningsService(_Service):
    AwardCredits: Unary[earnings_pb2.AwardCreditsRequest, earnings_pb2.AwardCreditsResponse]
    GetUserStats: Unary[earnings_pb2.GetUserStatsRequest, earnings_pb2.GetUserStatsResponse]


class TierService(_Service):
    ListTiers: Unary[tier_pb2.ListTiersRequest, tier_pb2.ListTiersResponse]
    GetTier: Unary[tier_pb2.GetTierRequest, tier_pb2.GetTierResponse]
    UpgradeTier: Unary[tier_pb2.UpgradeTierRequest, tier_pb2.UpgradeTierResponse]
    DowngradeTier: Unary[tier_pb2.DowngradeTierRequest, tier_pb2.DowngradeTierResponse]


class PaymentsService(_Service):
    CreatePaymentLink: Unary[payments_pb2.CreatePaymentLinkRequest, payments_pb2.CreatePaymentLinkResponse]
    GetPayment: Unary[payments_pb2.GetPaymentRequest, payments_pb2.GetPaymentResponse]
    ListPayments: Unary[payments_pb2.ListPaymentsRequest, payments_pb2.ListPaymentsResponse]
    TopUp: Unary[payments_pb2.TopUpRequest, payments_pb2.TopUpResponse]


class RefillService(_Service):
    ConfigureAutoRefill: Unary[refill_pb2.ConfigureAutoRefillRequest, refill_pb2.ConfigureAutoRefillResponse]
    GetAutoRefill: Unary[refill_pb2.GetAutoRefillRequest, refill_pb2.GetAutoRefillResponse]
    CreateSetupLink: Unary[refill_pb2.CreateSetupLinkRequest, refill_pb2.CreateSetupLinkResponse]


class AdminService(_Service):
    AdjustBalance: Unary[admin_pb2.AdjustBalanceRequest, admin_pb2.AdjustBalanceResponse]
    ReverseTransaction: Unary[admin_pb2.ReverseTransactionRequest, admin_pb2.ReverseTransactionResponse]
    SetAccountFlag: Unary[admin_pb2.SetAccountFlagRequest, admin_pb2.SetAccountFlagResponse]
    ClearAccountFlag: Unary[admin_pb2.ClearAccountFlagRequest, admin_pb2.ClearAccountFlagResponse]
    ListAdminActions: Unary[admin_pb2.ListAdminActionsRequest, admin_pb2.ListAdminActionsResponse]
    GetAccount: Unary[admin_pb2.GetAccountRequest, admin_pb2.GetAccountResponse]


class KeysService(_Service):
    CreateKey: Unary[keys_pb2.CreateKeyRequest, keys_pb2.CreateKeyResponse]
    GetKey: Unary[keys_pb2.GetKeyRequest, keys_pb2.GetKeyResponse]
    ListKeys: Unary[keys_pb2.ListKeysRequest, keys_pb2.ListKeysResponse]
    UpdateKey: Unary[keys_pb2.UpdateKeyRequest, keys_pb2.UpdateKeyResponse]
    RevokeKey: Unary[keys_pb2.RevokeKeyRequest, keys_pb2.RevokeKeyResponse]


class OrgsService(_Service):
    CreateOrg: Unary[orgs_pb2.CreateOrgRequest, orgs_pb2.CreateOrgResponse]
    GetOrg: Unary[orgs_pb2.GetOrgRequest, orgs_pb2.GetOrgResponse]
    ListOrgs: Unary[orgs_pb2.ListOrgsRequest, orgs_pb2.ListOrgsResponse]
    AddMember: Unary[orgs_pb2.AddMemberRequest, orgs_pb2.AddMemberResponse]
    UpdateMember: Unary[orgs_pb2.UpdateMemberRequest, orgs_pb2.UpdateMemberResponse]
    RemoveMember: Unary[orgs_pb2.RemoveMemberRequest, orgs_pb2.RemoveMemberResponse]
    ListMembers: Unary[orgs_pb2.ListMembersRequest, orgs_pb2.ListMembersResponse]


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
        self.balance = BalanceService(self, balance_pb2_grpc.BalanceServiceStub(ch))
        self.usage = UsageService(self, usage_pb2_grpc.UsageServiceStub(ch))
        self.history = HistoryService(self, history_pb2_grpc.HistoryServiceStub(ch))
        self.earnings = EarningsService(self, earnings_pb2_grpc.EarningsServiceStub(ch))
        self.tier = TierService(self, tier_pb2_grpc.TierServiceStub(ch))
        self.payments = PaymentsService(self, payments_pb2_grpc.PaymentsServiceStub(ch))
        self.refill = RefillService(self, refill_pb2_grpc.RefillServiceStub(ch))
        self.admin = AdminService(self, admin_pb2_grpc.AdminServiceStub(ch))
        self.keys = KeysService(self, keys_pb2_grpc.KeysServiceStub(ch))
        self.orgs = OrgsService(self, orgs_pb2_grpc.OrgsServiceStub(ch))

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
