"""Hostile input, table-driven, for every RPC: field bounds, int64 extremes,
oversized strings, Unicode in ids, unknown enums, huge page sizes, bad tokens
(expired, garbled, wrongly signed, alg=none, role escalation), non-UTF-8 and
binary metadata, and messages above the size limit.

Each case must get the right status code and ErrorInfo reason, no traceback,
and leave the ledger exactly as it was. A fuzz test throws random bodies and
headers at POST /webhooks/stripe.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    common_pb2,
    earnings_pb2,
    events_pb2,
    history_pb2,
    keys_pb2,
    orgs_pb2,
    payments_pb2,
    portal_pb2,
    pricing_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from server.app import SERVICE_NAMES
from server.db.schema import accounts, holds, idempotency, transfers
from tests.harness import JWT_SECRET, Running, auth, expect_error, free_port

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
I32_MAX = 2**31 - 1
HUGE = "x" * 10_000
IA = grpc.StatusCode.INVALID_ARGUMENT
USER = "mallory"
SVC = "svc-hostile"


def registered_rpcs() -> dict[str, MethodDescriptor]:
    """Every RPC of every service the server registers, by method name, from
    the generated descriptors: the list EVERY_RPC must cover."""
    out: dict[str, MethodDescriptor] = {}
    for name in SERVICE_NAMES:
        for m in descriptor_pool.Default().FindServiceByName(name).methods:
            assert m.name not in out, f"{m.full_name}: two services name an RPC alike"
            out[m.name] = m
    return out


REGISTERED = registered_rpcs()
KEY_X = "key_" + "0" * 32
# A webhook URL that passes its checks without DNS (a public address literal).
PUBLIC_URL = "https://93.184.216.34/hook"
ORG_X = "org_" + "0" * 32

# (service, method, request): every RPC the server registers appears here
# (test_every_registered_rpc_is_listed).
EVERY_RPC: list[tuple[str, str, Any]] = [
    ("balance", "CheckBalance", balance_pb2.CheckBalanceRequest()),
    ("balance", "GetBalance", balance_pb2.GetBalanceRequest()),
    ("balance", "WatchBalance", balance_pb2.WatchBalanceRequest()),
    ("usage", "Spend", usage_pb2.SpendRequest(amount_millicredits=1, request_id="t")),
    ("usage", "Reserve", usage_pb2.ReserveRequest(amount_millicredits=1, request_id="t")),
    ("usage", "Capture", usage_pb2.CaptureRequest(hold_id="hold_x", amount_millicredits=1, request_id="t")),
    ("usage", "Release", usage_pb2.ReleaseRequest(hold_id="hold_x", request_id="t")),
    ("history", "ListTransactions", history_pb2.ListTransactionsRequest()),
    ("history", "GetSpendingReport", history_pb2.GetSpendingReportRequest()),
    ("earnings", "AwardCredits", earnings_pb2.AwardCreditsRequest(user_id="x", amount_millicredits=1, source=1, request_id="t")),
    ("earnings", "GetUserStats", earnings_pb2.GetUserStatsRequest()),
    ("tier", "ListTiers", tier_pb2.ListTiersRequest()),
    ("tier", "GetTier", tier_pb2.GetTierRequest()),
    ("tier", "UpgradeTier", tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="t")),
    ("tier", "DowngradeTier", tier_pb2.DowngradeTierRequest(tier=common_pb2.TIER_FREE, request_id="t")),
    ("payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=1000, request_id="t")),
    ("payments", "GetPayment", payments_pb2.GetPaymentRequest(payment_id="pay_x")),
    ("payments", "ListPayments", payments_pb2.ListPaymentsRequest()),
    ("refill", "ConfigureAutoRefill", refill_pb2.ConfigureAutoRefillRequest(request_id="t")),
    ("refill", "GetAutoRefill", refill_pb2.GetAutoRefillRequest()),
    ("refill", "CreateSetupLink", refill_pb2.CreateSetupLinkRequest(request_id="t")),
    ("usage", "RefundUsage", usage_pb2.RefundUsageRequest(transaction_id="1", amount_millicredits=1, request_id="t")),
    ("admin", "AdjustBalance", admin_pb2.AdjustBalanceRequest(user_id="x", amount_millicredits=1, reason="r", lot=2, request_id="t")),
    ("admin", "ReverseTransaction", admin_pb2.ReverseTransactionRequest(transaction_id="1", reason="r", request_id="t")),
    ("admin", "SetAccountFlag", admin_pb2.SetAccountFlagRequest(user_id="x", flag=1, reason="r", request_id="t")),
    ("admin", "ClearAccountFlag", admin_pb2.ClearAccountFlagRequest(user_id="x", flag=1, reason="r", request_id="t")),
    ("admin", "ListAdminActions", admin_pb2.ListAdminActionsRequest()),
    ("admin", "GetAccount", admin_pb2.GetAccountRequest(user_id="x")),
    ("usage", "SpendBatch", usage_pb2.SpendBatchRequest(requests=[usage_pb2.SpendRequest(amount_millicredits=1, request_id="t")])),
    ("payments", "TopUp", payments_pb2.TopUpRequest(amount_cents=1000, request_id="t")),
    ("keys", "CreateKey", keys_pb2.CreateKeyRequest(budgets=[keys_pb2.Budget(window=2, limit_millicredits=1)], request_id="t")),
    ("keys", "GetKey", keys_pb2.GetKeyRequest(key_id=KEY_X)),
    ("keys", "ListKeys", keys_pb2.ListKeysRequest()),
    ("keys", "UpdateKey", keys_pb2.UpdateKeyRequest(key_id=KEY_X, update_mask=FieldMask(paths=["label"]), request_id="t")),
    ("keys", "RevokeKey", keys_pb2.RevokeKeyRequest(key_id=KEY_X, request_id="t")),
    ("orgs", "CreateOrg", orgs_pb2.CreateOrgRequest(name="n", request_id="t")),
    ("orgs", "GetOrg", orgs_pb2.GetOrgRequest(org_id=ORG_X)),
    ("orgs", "ListOrgs", orgs_pb2.ListOrgsRequest()),
    ("orgs", "AddMember", orgs_pb2.AddMemberRequest(org_id=ORG_X, user_id="x", role=3, request_id="t")),
    ("orgs", "UpdateMember", orgs_pb2.UpdateMemberRequest(org_id=ORG_X, user_id="x", role=3, update_mask=FieldMask(paths=["role"]), request_id="t")),
    ("orgs", "RemoveMember", orgs_pb2.RemoveMemberRequest(org_id=ORG_X, user_id="x", request_id="t")),
    ("orgs", "ListMembers", orgs_pb2.ListMembersRequest(org_id=ORG_X)),
    ("events", "ListEvents", events_pb2.ListEventsRequest()),
    ("events", "WatchEvents", events_pb2.WatchEventsRequest()),
    ("events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url="https://example.com/h", request_id="t")),
    ("events", "ListWebhookEndpoints", events_pb2.ListWebhookEndpointsRequest()),
    ("events", "UpdateWebhookEndpoint", events_pb2.UpdateWebhookEndpointRequest(endpoint_id="we_x", request_id="t")),
    ("events", "DeleteWebhookEndpoint", events_pb2.DeleteWebhookEndpointRequest(endpoint_id="we_x", request_id="t")),
    ("events", "RotateWebhookSecret", events_pb2.RotateWebhookSecretRequest(endpoint_id="we_x", request_id="t")),
    ("events", "ListWebhookDeliveries", events_pb2.ListWebhookDeliveriesRequest(endpoint_id="we_x")),
    ("events", "RedeliverEvent", events_pb2.RedeliverEventRequest(endpoint_id="we_x", event_id="evt_1", request_id="t")),
    ("events", "SetBalanceAlerts", events_pb2.SetBalanceAlertsRequest(thresholds_millicredits=[1], request_id="t")),
    ("events", "GetBalanceAlerts", events_pb2.GetBalanceAlertsRequest()),
    ("portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="https://example.com/", request_id="t")),
    ("pricing", "ListMeters", pricing_pb2.ListMetersRequest()),
    ("pricing", "GetRateCard", pricing_pb2.GetRateCardRequest()),
    ("pricing", "ListRateCardVersions", pricing_pb2.ListRateCardVersionsRequest()),
    ("pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(
        name="api.calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], request_id="t")),
    ("pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="api.calls", quantity=1))),
]


def test_every_registered_rpc_is_listed() -> None:
    """A new RPC (or service) without an entry here fails: it gets no bad-token
    nor bad-field cases otherwise."""
    listed = [m for _, m, _ in EVERY_RPC]
    assert len(listed) == len(set(listed)), "an RPC is listed twice"
    assert set(listed) == set(REGISTERED), (
        f"missing: {sorted(set(REGISTERED) - set(listed))}, unknown: {sorted(set(listed) - set(REGISTERED))}"
    )
    for stub, method, req in EVERY_RPC:
        assert req.DESCRIPTOR is REGISTERED[method].input_type, f"{method}: request of another type"
        assert REGISTERED[method].containing_service.name.lower().startswith(stub), f"{method}: not a {stub} RPC"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(role: str = "user", sub: str = USER, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "role": role, "iat": now, "exp": now + 600, "iss": "flownexus-billing", **extra}


def bearer(tok: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tok}"),)


# (name, metadata, reason): each must be UNAUTHENTICATED on every RPC.
BAD_TOKENS: list[tuple[str, tuple[tuple[str, Any], ...], str]] = [
    ("missing", (), "MISSING_TOKEN"),
    ("empty bearer", (("authorization", "Bearer "),), "INVALID_TOKEN"),
    ("basic scheme", (("authorization", "Basic dXNlcjpwYXNz"),), "INVALID_TOKEN"),
    ("garbled", bearer("not.a.jwt"), "INVALID_TOKEN"),
    ("garbled segments", bearer("eyJhbGciOiJIUzI1NiJ9.@@@.###"), "INVALID_TOKEN"),
    ("oversized", bearer("a" * 6000), "INVALID_TOKEN"),
    ("expired", bearer(jwt.encode(_claims(exp=int(time.time()) - 10), JWT_SECRET, algorithm="HS256")), "TOKEN_EXPIRED"),
    ("wrong secret", bearer(jwt.encode(_claims(), "another-secret-0123456789-0123456789", algorithm="HS256")), "INVALID_SIGNATURE"),
    ("forged admin, other secret", bearer(jwt.encode(_claims("admin"), "attacker-secret-0123456789-01234567", algorithm="HS256")), "INVALID_SIGNATURE"),
    ("alg none admin", bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims('admin'))}."), "INVALID_TOKEN"),
    ("role superadmin", bearer(jwt.encode(_claims("superadmin"), JWT_SECRET, algorithm="HS256")), "INVALID_TOKEN"),
    ("role list", bearer(jwt.encode(_claims(["admin", "user"]), JWT_SECRET, algorithm="HS256")), "INVALID_TOKEN"),  # type: ignore[arg-type]
    ("no role", bearer(jwt.encode({k: v for k, v in _claims().items() if k != "role"}, JWT_SECRET, algorithm="HS256")), "INVALID_TOKEN"),
    ("wrong issuer", bearer(jwt.encode(_claims(iss="evil"), JWT_SECRET, algorithm="HS256")), "INVALID_TOKEN"),
    ("numeric sub", bearer(jwt.encode({**_claims(), "sub": 42}, JWT_SECRET, algorithm="HS256")), "INVALID_TOKEN"),
    ("token in -bin header", (("authorization-bin", b"Bearer x"),), "MISSING_TOKEN"),
    # Scoped-key secrets (fnk_...): unknown, empty after the prefix, oversized.
    ("unknown key secret", bearer("fnk_" + "x" * 43), "INVALID_KEY"),
    ("key prefix only", bearer("fnk_"), "INVALID_KEY"),
    ("key secret oversized", bearer("fnk_" + "a" * 6000), "INVALID_KEY"),
    # A subject outside the one grammar of user ids: an org's id (its wallet), a look-alike.
    ("sub an org id", bearer(jwt.encode(_claims(sub="org_" + "0" * 32), JWT_SECRET, algorithm="HS256")), "INVALID_SUBJECT"),
    ("service sub an org id", bearer(jwt.encode(_claims("service", sub="org_" + "0" * 32), JWT_SECRET, algorithm="HS256")), "INVALID_SUBJECT"),
    ("sub look-alike", bearer(jwt.encode(_claims(sub="m\u0430llory"), JWT_SECRET, algorithm="HS256")), "INVALID_SUBJECT"),
]


async def snapshot(server: Running) -> tuple[int, ...]:
    """The ledger's state: counts of transfers, stored requests, holds, and balances."""
    assert server.app is not None
    async with server.read() as conn:
        out = []
        for table in (transfers, idempotency, holds, accounts):
            out.append(int((await conn.execute(select(func.count()).select_from(table))).scalar_one()))
        out.append(int((await conn.execute(select(func.coalesce(func.sum(func.abs(accounts.c.balance)), 0)))).scalar_one()))
        return tuple(out)


async def invoke(server: Running, stub: str, method: str, req: Any, md: Any) -> Any:
    """Any registered RPC by its path, through the generated message classes
    (a stream: its first message)."""
    desc = REGISTERED[method]
    path = f"/{desc.containing_service.full_name}/{desc.name}"
    out = message_factory.GetMessageClass(desc.output_type)
    channel = server.s.channel
    if desc.server_streaming:
        call = channel.unary_stream(path, request_serializer=_serialize, response_deserializer=out.FromString)(
            req, metadata=md, timeout=5)
        return await call.read()
    return await channel.unary_unary(path, request_serializer=_serialize, response_deserializer=out.FromString)(
        req, metadata=md, timeout=10)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


@pytest.fixture
async def hostile(db_url: str, clock) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    # On both databases. Stripe is "configured" but unreachable (a closed
    # loopback port): every case here must be refused before any call to it.
    server = Running(
        db_url, clock, stripe_api_key="sk_test_hostile", stripe_webhook_secret="whsec_hostile",
        stripe_api_base=f"http://127.0.0.1:{free_port()}", payment_link_rate_per_second=0,
    )
    await server.start()
    try:
        # wallets of the callers exist, so that reads by them change nothing
        for who in (USER, "victim"):
            await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(who))
        yield server
        await server.verify()
    finally:
        await server.stop()


async def test_bad_tokens_on_every_rpc(hostile: Running) -> None:
    before = await snapshot(hostile)
    n = 0
    for stub, method, req in EVERY_RPC:
        for name, md, reason in BAD_TOKENS:
            try:
                await expect_error(invoke(hostile, stub, method, req, md), grpc.StatusCode.UNAUTHENTICATED, reason)
            except AssertionError as exc:
                raise AssertionError(f"{method} with {name} token: {exc}") from None
            n += 1
    assert n == len(EVERY_RPC) * len(BAD_TOKENS)
    assert await snapshot(hostile) == before


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def field_cases(
    charge: str = "1", grant: str = "1", own_org: str = ORG_X, their_org: str = ORG_X, their_key: str = KEY_X,
    own_key: str = KEY_X,
) -> list[tuple[str, str, str, Any, tuple[str, str], grpc.StatusCode, str | None]]:
    """(case, stub, method, request, (caller, role), code, reason). `charge` is
    a Spend of victim's made by another service; `grant` an allowance grant;
    `own_org` an org mallory owns (victim a member), `their_org` and
    `their_key` victim's own."""
    u = (USER, "user")
    s = (SVC, "service")
    a = ("ops", "admin")
    pd = grpc.StatusCode.PERMISSION_DENIED
    fp = grpc.StatusCode.FAILED_PRECONDITION
    rf = usage_pb2.RefundUsageRequest
    ad = admin_pb2.AdjustBalanceRequest
    rt = admin_pb2.ReverseTransactionRequest
    sf = admin_pb2.SetAccountFlagRequest
    cf = admin_pb2.ClearAccountFlagRequest
    la = admin_pb2.ListAdminActionsRequest
    ga = admin_pb2.GetAccountRequest
    sp = usage_pb2.SpendRequest
    rv = usage_pb2.ReserveRequest
    cp = usage_pb2.CaptureRequest
    aw = earnings_pb2.AwardCreditsRequest
    c: list[tuple[str, str, str, Any, tuple[str, str], grpc.StatusCode, str | None]] = []
    for amount in (0, -1, I64_MAX, I64_MIN, 10**15 + 1):
        c.append((f"spend amount {amount}", "usage", "Spend", sp(amount_millicredits=amount, request_id="r"), u, IA, "INVALID_AMOUNT"))
        c.append((f"reserve amount {amount}", "usage", "Reserve", rv(amount_millicredits=amount, request_id="r"), u, IA, "INVALID_AMOUNT"))
        c.append((f"award amount {amount}", "earnings", "AwardCredits", aw(user_id=USER, amount_millicredits=amount, source=1, request_id="r"), s, IA, "INVALID_AMOUNT"))
        c.append((f"refund amount {amount}", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=amount, request_id="r"), a, IA, "INVALID_AMOUNT"))
    for amount in (0, I64_MAX, I64_MIN, 10**15 + 1, -(10**15 + 1)):
        c.append((f"adjust amount {amount}", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=amount, reason="r", lot=2, request_id="r"), a, IA, "INVALID_AMOUNT"))
    for tid in ("", "abc", "-1", "0", "9" * 20, "\uff11\uff12", "1 OR 1=1", HUGE):  # \uff11: fullwidth digits
        c.append((f"refund transaction_id {tid[:20]!r}", "usage", "RefundUsage", rf(transaction_id=tid, amount_millicredits=1, request_id="r"), a, IA, "INVALID_TRANSACTION_ID"))
        c.append((f"reverse transaction_id {tid[:20]!r}", "admin", "ReverseTransaction", rt(transaction_id=tid, reason="r", request_id="r"), a, IA, "INVALID_TRANSACTION_ID"))
    for flag in (0, 99, -1):
        c.append((f"set flag {flag}", "admin", "SetAccountFlag", sf(user_id=USER, flag=flag, reason="r", request_id="r"), a, IA, "INVALID_ENUM"))
        c.append((f"clear flag {flag}", "admin", "ClearAccountFlag", cf(user_id=USER, flag=flag, reason="r", request_id="r"), a, IA, "INVALID_ENUM"))
    c += [
        ("spend no request_id", "usage", "Spend", sp(amount_millicredits=1), u, IA, "MISSING_REQUEST_ID"),
        ("spend request_id 129", "usage", "Spend", sp(amount_millicredits=1, request_id="r" * 129), u, IA, "INVALID_REQUEST_ID"),
        ("spend request_id unicode", "usage", "Spend", sp(amount_millicredits=1, request_id="réq-✓"), u, IA, "INVALID_REQUEST_ID"),
        ("spend request_id newline", "usage", "Spend", sp(amount_millicredits=1, request_id="a\nb"), u, IA, "INVALID_REQUEST_ID"),
        ("spend user unicode", "usage", "Spend", sp(user_id="mällory", amount_millicredits=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("spend user RTL override", "usage", "Spend", sp(user_id="a\u202eb", amount_millicredits=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("spend user huge", "usage", "Spend", sp(user_id=HUGE, amount_millicredits=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("spend user path", "usage", "Spend", sp(user_id="../etc/passwd", amount_millicredits=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("spend user NUL", "usage", "Spend", sp(user_id="a\x00b", amount_millicredits=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("spend other's account", "usage", "Spend", sp(user_id="victim", amount_millicredits=1, request_id="r"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("spend category upper", "usage", "Spend", sp(amount_millicredits=1, request_id="r", category="SANDBOX"), u, IA, "INVALID_CATEGORY"),
        ("spend category huge", "usage", "Spend", sp(amount_millicredits=1, request_id="r", category=HUGE), u, IA, "INVALID_CATEGORY"),
        ("spend description huge", "usage", "Spend", sp(amount_millicredits=1, request_id="r", description=HUGE), u, IA, "FIELD_TOO_LONG"),
        ("spend description NUL", "usage", "Spend", sp(amount_millicredits=1, request_id="r", description="a\x00"), u, IA, "INVALID_TEXT"),
        ("spend metadata 17", "usage", "Spend", sp(amount_millicredits=1, request_id="r", metadata={str(i): "v" for i in range(17)}), u, IA, "INVALID_METADATA"),
        ("spend metadata key huge", "usage", "Spend", sp(amount_millicredits=1, request_id="r", metadata={"k" * 65: "v"}), u, IA, "INVALID_METADATA"),
        ("spend metadata value huge", "usage", "Spend", sp(amount_millicredits=1, request_id="r", metadata={"k": HUGE}), u, IA, "INVALID_METADATA"),
        ("spend app without publisher", "usage", "Spend", sp(amount_millicredits=1, request_id="r", app_id="a"), u, IA, "INVALID_REVENUE_SHARE"),
        ("spend self revenue share", "usage", "Spend", sp(amount_millicredits=1, request_id="r", app_id="a", publisher_user_id=USER), u, IA, "SELF_REVENUE_SHARE"),
        ("spend publisher unicode", "usage", "Spend", sp(amount_millicredits=1, request_id="r", app_id="a", publisher_user_id="pübl"), u, IA, "INVALID_USER_ID"),
        ("spend app_id huge", "usage", "Spend", sp(amount_millicredits=1, request_id="r", app_id=HUGE, publisher_user_id="victim"), u, IA, "FIELD_TOO_LONG"),
        ("spend beyond balance", "usage", "Spend", sp(amount_millicredits=10**15, request_id="r"), u, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS"),
        ("reserve ttl negative", "usage", "Reserve", rv(amount_millicredits=1, request_id="r", ttl=Duration(seconds=-5)), u, IA, "INVALID_TTL"),
        ("reserve ttl huge", "usage", "Reserve", rv(amount_millicredits=1, request_id="r", ttl=Duration(seconds=I64_MAX // 10**9)), u, IA, "INVALID_TTL"),
        ("capture no hold", "usage", "Capture", cp(amount_millicredits=1, request_id="r"), u, IA, "INVALID_HOLD_ID"),
        ("capture hold unicode", "usage", "Capture", cp(hold_id="höld", amount_millicredits=1, request_id="r"), u, IA, "INVALID_HOLD_ID"),
        ("capture hold huge", "usage", "Capture", cp(hold_id=HUGE, amount_millicredits=1, request_id="r"), u, IA, "INVALID_HOLD_ID"),
        ("capture unknown hold", "usage", "Capture", cp(hold_id="hold_nope", amount_millicredits=1, request_id="r"), u, grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND"),
        ("capture amount min", "usage", "Capture", cp(hold_id="hold_nope", amount_millicredits=I64_MIN, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("release hold injection", "usage", "Release", usage_pb2.ReleaseRequest(hold_id="x' OR '1'='1", request_id="r"), u, IA, "INVALID_HOLD_ID"),
        ("release no request_id", "usage", "Release", usage_pb2.ReleaseRequest(hold_id="hold_x"), u, IA, "MISSING_REQUEST_ID"),
        ("award by a user", "earnings", "AwardCredits", aw(user_id="victim", amount_millicredits=1, source=1, request_id="r"), u, grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED"),
        ("award to self", "earnings", "AwardCredits", aw(user_id=SVC, amount_millicredits=1, source=1, request_id="r"), s, grpc.StatusCode.PERMISSION_DENIED, "SELF_AWARD"),
        ("award source unspecified", "earnings", "AwardCredits", aw(user_id=USER, amount_millicredits=1, request_id="r"), s, IA, "INVALID_ENUM"),
        ("award source unknown", "earnings", "AwardCredits", aw(user_id=USER, amount_millicredits=1, source=99, request_id="r"), s, IA, "INVALID_ENUM"),
        ("award source negative", "earnings", "AwardCredits", aw(user_id=USER, amount_millicredits=1, source=-1, request_id="r"), s, IA, "INVALID_ENUM"),
        ("award no user", "earnings", "AwardCredits", aw(amount_millicredits=1, source=1, request_id="r"), s, IA, "INVALID_USER_ID"),
        ("award source_ref huge", "earnings", "AwardCredits", aw(user_id=USER, amount_millicredits=1, source=1, source_ref=HUGE, request_id="r"), s, IA, "FIELD_TOO_LONG"),
        ("stats unicode user", "earnings", "GetUserStats", earnings_pb2.GetUserStatsRequest(user_id="ü"), u, IA, "INVALID_USER_ID"),
        ("stats other user", "earnings", "GetUserStats", earnings_pb2.GetUserStatsRequest(user_id="victim"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("balance unicode user", "balance", "GetBalance", balance_pb2.GetBalanceRequest(user_id="用户"), u, IA, "INVALID_USER_ID"),
        ("balance huge user", "balance", "GetBalance", balance_pb2.GetBalanceRequest(user_id=HUGE), s, IA, "INVALID_USER_ID"),
        ("balance other user", "balance", "GetBalance", balance_pb2.GetBalanceRequest(user_id="victim"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("watch unicode user", "balance", "WatchBalance", balance_pb2.WatchBalanceRequest(user_id="ü"), u, IA, "INVALID_USER_ID"),
        ("watch other user", "balance", "WatchBalance", balance_pb2.WatchBalanceRequest(user_id="victim"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("history page_size int32 min", "history", "ListTransactions", history_pb2.ListTransactionsRequest(page_size=-I32_MAX - 1), u, IA, "INVALID_PAGE_SIZE"),
        ("history page_size negative", "history", "ListTransactions", history_pb2.ListTransactionsRequest(page_size=-1), u, IA, "INVALID_PAGE_SIZE"),
        ("history page_token garbage", "history", "ListTransactions", history_pb2.ListTransactionsRequest(page_token="%%%garbage"), u, IA, "INVALID_PAGE_TOKEN"),
        ("history page_token huge", "history", "ListTransactions", history_pb2.ListTransactionsRequest(page_token=HUGE), u, IA, "INVALID_PAGE_TOKEN"),
        ("history page_token forged", "history", "ListTransactions", history_pb2.ListTransactionsRequest(page_token=_b64({"p": "x", "f": "y"})), u, IA, "INVALID_PAGE_TOKEN"),
        ("history type unknown", "history", "ListTransactions", history_pb2.ListTransactionsRequest(types=[999]), u, IA, "INVALID_ENUM"),
        ("history type unspecified", "history", "ListTransactions", history_pb2.ListTransactionsRequest(types=[0]), u, IA, "INVALID_ENUM"),
        ("history other user", "history", "ListTransactions", history_pb2.ListTransactionsRequest(user_id="victim"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("report inverted range", "history", "GetSpendingReport", history_pb2.GetSpendingReportRequest(start_time=ts(2_000_000_000), end_time=ts(1_000_000_000)), u, IA, "INVALID_TIME_RANGE"),
        ("report unicode user", "history", "GetSpendingReport", history_pb2.GetSpendingReportRequest(user_id="ü"), u, IA, "INVALID_USER_ID"),
        ("tier unicode user", "tier", "GetTier", tier_pb2.GetTierRequest(user_id="ü"), u, IA, "INVALID_USER_ID"),
        ("upgrade unknown tier", "tier", "UpgradeTier", tier_pb2.UpgradeTierRequest(tier=99, request_id="r"), u, IA, "INVALID_ENUM"),
        ("upgrade unspecified tier", "tier", "UpgradeTier", tier_pb2.UpgradeTierRequest(request_id="r"), u, IA, "INVALID_ENUM"),
        ("upgrade no request_id", "tier", "UpgradeTier", tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO), u, IA, "MISSING_REQUEST_ID"),
        ("downgrade unknown tier", "tier", "DowngradeTier", tier_pb2.DowngradeTierRequest(tier=-7, request_id="r"), u, IA, "INVALID_ENUM"),
        ("payment link 0", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=0, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("payment link below min", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=999, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("payment link above max", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=1_000_001, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("payment link int64 max", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=I64_MAX, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("payment link int64 min", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=I64_MIN, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("payment link no request_id", "payments", "CreatePaymentLink", payments_pb2.CreatePaymentLinkRequest(amount_cents=1000), u, IA, "MISSING_REQUEST_ID"),
        ("get payment unicode", "payments", "GetPayment", payments_pb2.GetPaymentRequest(payment_id="pay_ü"), u, IA, "INVALID_PAYMENT_ID"),
        ("get payment huge", "payments", "GetPayment", payments_pb2.GetPaymentRequest(payment_id=HUGE), u, IA, "INVALID_PAYMENT_ID"),
        ("list payments page_size", "payments", "ListPayments", payments_pb2.ListPaymentsRequest(page_size=-1), u, IA, "INVALID_PAGE_SIZE"),
        ("list payments token", "payments", "ListPayments", payments_pb2.ListPaymentsRequest(page_token="garbage!"), u, IA, "INVALID_PAGE_TOKEN"),
        ("list payments other user", "payments", "ListPayments", payments_pb2.ListPaymentsRequest(user_id="victim"), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT"),
        ("refill threshold min", "refill", "ConfigureAutoRefill", refill_pb2.ConfigureAutoRefillRequest(enabled=True, threshold_millicredits=I64_MIN, amount_cents=1000, request_id="r"), u, IA, None),
        ("refill amount max", "refill", "ConfigureAutoRefill", refill_pb2.ConfigureAutoRefillRequest(enabled=True, threshold_millicredits=1000, amount_cents=I64_MAX, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("refill no request_id", "refill", "ConfigureAutoRefill", refill_pb2.ConfigureAutoRefillRequest(), u, IA, "MISSING_REQUEST_ID"),
        ("refill get unicode", "refill", "GetAutoRefill", refill_pb2.GetAutoRefillRequest(user_id="ü"), u, IA, "INVALID_USER_ID"),
        ("setup link bad request_id", "refill", "CreateSetupLink", refill_pb2.CreateSetupLinkRequest(request_id="é"), u, IA, "INVALID_REQUEST_ID"),
        # RefundUsage: never a user; a service only for its own charges.
        ("refund by a user", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=1, request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("refund another's charge", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=1, request_id="r"), s, pd, "NOT_CHARGED_BY_CALLER"),
        ("refund no request_id", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=1), a, IA, "MISSING_REQUEST_ID"),
        ("refund bad request_id", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=1, request_id="é"), a, IA, "INVALID_REQUEST_ID"),
        ("refund reason huge", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=1, reason=HUGE, request_id="r"), a, IA, "FIELD_TOO_LONG"),
        ("refund unknown transaction", "usage", "RefundUsage", rf(transaction_id=str(I64_MAX), amount_millicredits=1, request_id="r"), a, grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND"),
        ("refund a grant", "usage", "RefundUsage", rf(transaction_id=grant, amount_millicredits=1, request_id="r"), a, fp, "NOT_REFUNDABLE"),
        ("refund beyond the charge", "usage", "RefundUsage", rf(transaction_id=charge, amount_millicredits=10**15, request_id="r"), a, fp, "REFUND_EXCEEDS_CHARGE"),
        # AdminService: admin tokens only, every field checked before any change.
        ("adjust by a user", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2, request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("adjust by a service", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2, request_id="r"), s, pd, "ROLE_REQUIRED"),
        ("adjust no request_id", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2), a, IA, "MISSING_REQUEST_ID"),
        ("adjust request_id unicode", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2, request_id="réq"), a, IA, "INVALID_REQUEST_ID"),
        ("adjust no reason", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, lot=2, request_id="r"), a, IA, "REASON_REQUIRED"),
        ("adjust blank reason", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="  ", lot=2, request_id="r"), a, IA, "REASON_REQUIRED"),
        ("adjust reason huge", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason=HUGE, lot=2, request_id="r"), a, IA, "FIELD_TOO_LONG"),
        ("adjust no user", "admin", "AdjustBalance", ad(amount_millicredits=1, reason="r", lot=2, request_id="r"), a, IA, "INVALID_USER_ID"),
        ("adjust user unicode", "admin", "AdjustBalance", ad(user_id="mällory", amount_millicredits=1, reason="r", lot=2, request_id="r"), a, IA, "INVALID_USER_ID"),
        ("adjust lot unknown", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=99, request_id="r"), a, IA, "INVALID_ENUM"),
        ("adjust grant without lot", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", request_id="r"), a, IA, "INVALID_LOT"),
        ("adjust grant into allowance", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=1, request_id="r"), a, IA, "INVALID_LOT"),
        ("adjust debit with lot", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=-1, reason="r", lot=2, request_id="r"), a, IA, "INVALID_LOT"),
        ("adjust purchased expiring", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=3, expires_at=ts(4_000_000_000), request_id="r"), a, IA, "INVALID_EXPIRY"),
        ("adjust expiry in the past", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2, expires_at=ts(1), request_id="r"), a, IA, "INVALID_EXPIRY"),
        ("adjust grant allow_negative", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=1, reason="r", lot=2, allow_negative=True, request_id="r"), a, IA, "INVALID_ARGUMENT"),
        ("adjust debit beyond balance", "admin", "AdjustBalance", ad(user_id=USER, amount_millicredits=-(10**15), reason="r", request_id="r"), a, fp, "INSUFFICIENT_CREDITS"),
        ("reverse by a service", "admin", "ReverseTransaction", rt(transaction_id=charge, reason="r", request_id="r"), s, pd, "ROLE_REQUIRED"),
        ("reverse by a user", "admin", "ReverseTransaction", rt(transaction_id=charge, reason="r", request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("reverse no request_id", "admin", "ReverseTransaction", rt(transaction_id=charge, reason="r"), a, IA, "MISSING_REQUEST_ID"),
        ("reverse no reason", "admin", "ReverseTransaction", rt(transaction_id=charge, request_id="r"), a, IA, "REASON_REQUIRED"),
        ("reverse unknown transaction", "admin", "ReverseTransaction", rt(transaction_id=str(I64_MAX), reason="r", request_id="r"), a, grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND"),
        ("reverse a grant", "admin", "ReverseTransaction", rt(transaction_id=grant, reason="r", request_id="r"), a, fp, "NOT_REVERSIBLE"),
        ("set flag by a service", "admin", "SetAccountFlag", sf(user_id=USER, flag=1, reason="r", request_id="r"), s, pd, "ROLE_REQUIRED"),
        ("set flag no request_id", "admin", "SetAccountFlag", sf(user_id=USER, flag=1, reason="r"), a, IA, "MISSING_REQUEST_ID"),
        ("set flag no reason", "admin", "SetAccountFlag", sf(user_id=USER, flag=1, request_id="r"), a, IA, "REASON_REQUIRED"),
        ("set flag user huge", "admin", "SetAccountFlag", sf(user_id=HUGE, flag=1, reason="r", request_id="r"), a, IA, "INVALID_USER_ID"),
        ("clear flag by a user", "admin", "ClearAccountFlag", cf(user_id=USER, flag=1, reason="r", request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("clear flag no request_id", "admin", "ClearAccountFlag", cf(user_id=USER, flag=1, reason="r"), a, IA, "MISSING_REQUEST_ID"),
        ("clear flag not flagged", "admin", "ClearAccountFlag", cf(user_id=USER, flag=1, reason="r", request_id="r"), a, fp, "ACCOUNT_NOT_FLAGGED"),
        ("list actions by a service", "admin", "ListAdminActions", la(), s, pd, "ROLE_REQUIRED"),
        ("list actions page_size", "admin", "ListAdminActions", la(page_size=-1), a, IA, "INVALID_PAGE_SIZE"),
        ("list actions page_token", "admin", "ListAdminActions", la(page_token="%%%garbage"), a, IA, "INVALID_PAGE_TOKEN"),
        ("list actions user unicode", "admin", "ListAdminActions", la(user_id="ü"), a, IA, "INVALID_USER_ID"),
        ("list actions actor huge", "admin", "ListAdminActions", la(actor=HUGE), a, IA, "FIELD_TOO_LONG"),
        ("get account by a user", "admin", "GetAccount", ga(user_id=USER), u, pd, "ROLE_REQUIRED"),
        ("get account by a service", "admin", "GetAccount", ga(user_id=USER), s, pd, "ROLE_REQUIRED"),
        ("get account no user", "admin", "GetAccount", ga(), a, IA, "INVALID_USER_ID"),
        ("get account user unicode", "admin", "GetAccount", ga(user_id="用户"), a, IA, "INVALID_USER_ID"),
        ("get account unknown user", "admin", "GetAccount", ga(user_id="nobody"), a, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    ]
    c += new_service_cases(own_org, their_org, their_key, own_key)
    return c


# Ids in every position: controls, over-long, look-alikes, and an org's id
# where a user's is expected and the other way round.
BAD_USER_IDS = ["a\x00b", "a\nb", "x" * 129, "m\u0430llory", "mallory\u200b", "a\u202eb", " mallory", "team/mallory", ORG_X]
BAD_ORG_IDS = ["mallory", "org_" + "0" * 31, "org_" + "A" * 32, "org_" + "0" * 32 + "\x00", "org_" + "\uff10" * 32, KEY_X, HUGE]
BAD_KEY_IDS = ["", "key_x", "key_" + "0" * 33, "key_" + "\u0660" * 32, ORG_X, "mallory", HUGE]


def forged_token(position: Any, *filters: Any) -> str:
    """A page token as the server writes it, with a chosen position and a
    filters signature computed as the server does: only the position is wrong."""
    from server.grpc import validation

    return validation.encode_page_token(position, validation.filters_signature(*filters))


def validation_token(position: Any, filters: str) -> str:
    """A page token with the server's own encoding and a literal filters string."""
    from server.grpc import validation

    return validation.encode_page_token(position, filters)


def new_service_cases(
    own_org: str, their_org: str, their_key: str, own_key: str
) -> list[tuple[str, str, str, Any, tuple[str, str], grpc.StatusCode, str | None]]:
    u = (USER, "user")
    s = (SVC, "service")
    a = ("ops", "admin")
    pd = grpc.StatusCode.PERMISSION_DENIED
    nf = grpc.StatusCode.NOT_FOUND
    fp = grpc.StatusCode.FAILED_PRECONDITION
    budget = keys_pb2.Budget
    day = keys_pb2.BUDGET_WINDOW_DAY
    uk, lk = keys_pb2.UpdateKeyRequest, keys_pb2.ListKeysRequest

    def ck(**kw: Any) -> keys_pb2.CreateKeyRequest:
        return keys_pb2.CreateKeyRequest(**{"label": "agent", **kw})

    co, am, um, rm = orgs_pb2.CreateOrgRequest, orgs_pb2.AddMemberRequest, orgs_pb2.UpdateMemberRequest, orgs_pb2.RemoveMemberRequest
    lm, lo = orgs_pb2.ListMembersRequest, orgs_pb2.ListOrgsRequest
    le, sa = events_pb2.ListEventsRequest, events_pb2.SetBalanceAlertsRequest
    ld = events_pb2.ListWebhookDeliveriesRequest
    ok_b = [budget(window=day, limit_millicredits=1000)]
    mask = FieldMask
    c: list[tuple[str, str, str, Any, tuple[str, str], grpc.StatusCode, str | None]] = []
    for bad in BAD_USER_IDS:
        c += [
            (f"create key user {bad[:12]!r}", "keys", "CreateKey", ck(user_id=bad, budgets=ok_b, request_id="r"), s, IA, "INVALID_USER_ID"),
            (f"list keys user {bad[:12]!r}", "keys", "ListKeys", lk(user_id=bad), s, IA, "INVALID_USER_ID"),
            (f"create org owner {bad[:12]!r}", "orgs", "CreateOrg", co(name="n", owner_user_id=bad, request_id="r"), a, IA, "INVALID_USER_ID"),
            (f"list orgs user {bad[:12]!r}", "orgs", "ListOrgs", lo(user_id=bad), a, IA, "INVALID_USER_ID"),
            (f"add member {bad[:12]!r}", "orgs", "AddMember", am(org_id=own_org, user_id=bad, role=3, request_id="r"), u, IA, "INVALID_USER_ID"),
            (f"update member {bad[:12]!r}", "orgs", "UpdateMember", um(org_id=own_org, user_id=bad, role=3, update_mask=mask(paths=["role"]), request_id="r"), u, IA, "INVALID_USER_ID"),
            (f"remove member {bad[:12]!r}", "orgs", "RemoveMember", rm(org_id=own_org, user_id=bad, request_id="r"), u, IA, "INVALID_USER_ID"),
            (f"set alerts user {bad[:12]!r}", "events", "SetBalanceAlerts", sa(user_id=bad, request_id="r"), s, IA, "INVALID_USER_ID"),
            (f"get alerts user {bad[:12]!r}", "events", "GetBalanceAlerts", events_pb2.GetBalanceAlertsRequest(user_id=bad), s, IA, "INVALID_USER_ID"),
            (f"portal user {bad[:12]!r}", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(user_id=bad, return_url="https://example.com/", request_id="r"), s, IA, "INVALID_USER_ID"),
        ]
    # An operator names an org's wallet in the events' user_id: an org id is not bad there.
    for bad in [b for b in BAD_USER_IDS if b != ORG_X]:
        c += [
            (f"list events user {bad[:12]!r}", "events", "ListEvents", le(user_id=bad), s, IA, "INVALID_USER_ID"),
            (f"watch events user {bad[:12]!r}", "events", "WatchEvents", events_pb2.WatchEventsRequest(user_id=bad), s, IA, "INVALID_USER_ID"),
        ]
    for bad in BAD_ORG_IDS:
        c += [
            (f"get org {bad[:12]!r}", "orgs", "GetOrg", orgs_pb2.GetOrgRequest(org_id=bad), u, IA, "INVALID_ORG_ID"),
            (f"add member org {bad[:12]!r}", "orgs", "AddMember", am(org_id=bad, user_id="victim", role=3, request_id="r"), u, IA, "INVALID_ORG_ID"),
            (f"list members org {bad[:12]!r}", "orgs", "ListMembers", lm(org_id=bad), u, IA, "INVALID_ORG_ID"),
            (f"create key org {bad[:12]!r}", "keys", "CreateKey", ck(org_id=bad, budgets=ok_b, request_id="r"), u, IA, "INVALID_ORG_ID"),
            (f"list keys org {bad[:12]!r}", "keys", "ListKeys", lk(org_id=bad), u, IA, "INVALID_ORG_ID"),
            (f"list events org {bad[:12]!r}", "events", "ListEvents", le(org_id=bad), u, IA, "INVALID_ORG_ID"),
            (f"top up org {bad[:12]!r}", "payments", "TopUp", payments_pb2.TopUpRequest(org_id=bad, amount_cents=1000, request_id="r"), u, IA, "INVALID_ORG_ID"),
            (f"portal org {bad[:12]!r}", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(org_id=bad, return_url="https://example.com/", request_id="r"), u, IA, "INVALID_ORG_ID"),
        ]
    lt, gr = history_pb2.ListTransactionsRequest, history_pb2.GetSpendingReportRequest
    for bad in BAD_USER_IDS:
        c.append((f"history member {bad[:12]!r}", "history", "ListTransactions", lt(org_id=own_org, member_id=bad), u, IA, "INVALID_USER_ID"))
        c.append((f"report member {bad[:12]!r}", "history", "GetSpendingReport", gr(org_id=own_org, member_id=bad), u, IA, "INVALID_USER_ID"))
    for bad in BAD_ORG_IDS:
        c.append((f"history org {bad[:12]!r}", "history", "ListTransactions", lt(org_id=bad), u, IA, "INVALID_ORG_ID"))
        c.append((f"report org {bad[:12]!r}", "history", "GetSpendingReport", gr(org_id=bad), u, IA, "INVALID_ORG_ID"))
    for bad in BAD_KEY_IDS[1:]:  # empty: no key filter
        c.append((f"history key {bad[:12]!r}", "history", "ListTransactions", lt(key_id=bad), u, IA, "INVALID_KEY_ID"))
        c.append((f"report key {bad[:12]!r}", "history", "GetSpendingReport", gr(key_id=bad), u, IA, "INVALID_KEY_ID"))
    c += [
        ("history of another's org", "history", "ListTransactions", lt(org_id=their_org), u, grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER"),
    ]
    for bad in BAD_KEY_IDS:
        c += [
            (f"get key {bad[:12]!r}", "keys", "GetKey", keys_pb2.GetKeyRequest(key_id=bad), u, IA, "INVALID_KEY_ID"),
            (f"update key {bad[:12]!r}", "keys", "UpdateKey", uk(key_id=bad, update_mask=mask(paths=["label"]), label="l", request_id="r"), u, IA, "INVALID_KEY_ID"),
            (f"revoke key {bad[:12]!r}", "keys", "RevokeKey", keys_pb2.RevokeKeyRequest(key_id=bad, request_id="r"), u, IA, "INVALID_KEY_ID"),
        ]
    # Page tokens of the List RPCs: garbage, base64 junk, and well-formed
    # tokens whose position is out of int64 or of the wrong type.
    lists = [
        ("keys", "ListKeys", lambda t: lk(page_token=t), ("keys", "")),
        ("orgs", "ListOrgs", lambda t: lo(page_token=t), ("orgs", "")),
        ("orgs", "ListMembers", lambda t: lm(org_id=own_org, page_token=t), ("members", own_org)),
    ]
    for stub, method, req, sig in lists:
        for name, tok in [
            ("garbage", "%%%garbage"), ("base64 junk", base64.urlsafe_b64encode(b"\xff\x00junk").decode()),
            ("json list", _b64([1, 2])), ("huge", HUGE),
            ("int64 min", forged_token([I64_MIN, "x"], *sig)), ("int64 max+1", forged_token([I64_MAX + 1, "x"], *sig)),
            ("zero", forged_token([0, "x"], *sig)), ("bool", forged_token([True, "x"], *sig)),
            ("string position", forged_token(["1", "x"], *sig)), ("empty id", forged_token([1, ""], *sig)),
            ("NUL in the id", forged_token([1, "a\x00b"], *sig)), ("control in the id", forged_token([1, "a\x1b"], *sig)),
            ("other filters", forged_token([1, "x"], "other")),
        ]:
            c.append((f"{method} page_token {name}", stub, method, req(tok), u, IA, "INVALID_PAGE_TOKEN"))
        c.append((f"{method} page_size negative", stub, method, req("") if False else type(req(""))(page_size=-1, **({"org_id": own_org} if method == "ListMembers" else {})), u, IA, "INVALID_PAGE_SIZE"))
    dsig = ("we_x", "")
    for name, tok in [
        ("garbage", "%%%garbage"), ("int64 min", forged_token(str(I64_MIN), *dsig)), ("letters", forged_token("abc", *dsig)),
        ("beyond int64", forged_token("9" * 30, *dsig)), ("superscript digit", forged_token("\u00b2", *dsig)),
        ("negative", forged_token("-1", *dsig)), ("int", forged_token(5, *dsig)),
    ]:
        c.append((f"deliveries page_token {name}", "events", "ListWebhookDeliveries", ld(endpoint_id="we_x", page_token=tok), s, IA, "INVALID_PAGE_TOKEN"))
    for name, tok in [("garbage", "garbage"), ("no number", "evt_"), ("negative", "evt_-1"), ("beyond int64", "evt_" + "9" * 19),
                      ("superscript digit", "evt_\u00b2"), ("arabic digits", "evt_\u0661\u0662"), ("space", "evt_ 1"), ("huge", HUGE)]:
        c.append((f"list events page_token {name}", "events", "ListEvents", le(page_token=tok), u, IA, "INVALID_EVENT_ID"))
        c.append((f"watch events cursor {name}", "events", "WatchEvents", events_pb2.WatchEventsRequest(cursor=tok), u, IA, "INVALID_EVENT_ID"))
        c.append((f"redeliver event_id {name}", "events", "RedeliverEvent", events_pb2.RedeliverEventRequest(endpoint_id="we_x", event_id=tok, request_id="r"), s, IA, "INVALID_EVENT_ID"))
    # Budgets: limits at int64's edges, unknown windows, one window twice.
    for limit in (0, -1, I64_MAX, I64_MIN, 10**15 + 1):
        c += [
            (f"create key budget {limit}", "keys", "CreateKey", ck(budgets=[budget(window=day, limit_millicredits=limit)], request_id="r"), u, IA, "INVALID_BUDGET"),
            (f"update key budget {limit}", "keys", "UpdateKey", uk(key_id=own_key, update_mask=mask(paths=["budgets"]), budgets=[budget(window=day, limit_millicredits=limit)], request_id="r"), u, IA, "INVALID_BUDGET"),
            (f"add member budget {limit}", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=3, budgets=[budget(window=day, limit_millicredits=limit)], request_id="r"), u, IA, "INVALID_BUDGET"),
            (f"update member budget {limit}", "orgs", "UpdateMember", um(org_id=own_org, user_id="victim", update_mask=mask(paths=["budgets"]), budgets=[budget(window=day, limit_millicredits=limit)], request_id="r"), u, IA, "INVALID_BUDGET"),
        ]
        if limit:  # 0: no cap per spend
            c.append((f"key max_spend {limit}", "keys", "CreateKey", ck(budgets=ok_b, max_spend_millicredits=limit, request_id="r"), u, IA, "INVALID_AMOUNT"))
    for window in (0, 99, -1, 2**31 - 1):
        c.append((f"create key window {window}", "keys", "CreateKey", ck(budgets=[budget(window=window, limit_millicredits=1)], request_id="r"), u, IA, "INVALID_BUDGET_WINDOW"))
        c.append((f"add member window {window}", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=3, budgets=[budget(window=window, limit_millicredits=1)], request_id="r"), u, IA, "INVALID_BUDGET_WINDOW"))
    for role in (0, 99, -1):
        c.append((f"add member role {role}", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=role, request_id="r"), u, IA, "INVALID_ORG_ROLE"))
        c.append((f"update member role {role}", "orgs", "UpdateMember", um(org_id=own_org, user_id="victim", role=role, update_mask=mask(paths=["role"]), request_id="r"), u, IA, "INVALID_ORG_ROLE"))
    for status in (99, -1):
        c.append((f"deliveries status {status}", "events", "ListWebhookDeliveries", ld(endpoint_id="we_x", status=status), s, IA, "INVALID_ENUM"))
    for paths in ([], ["nope"], ["label", "secret"], ["user_id"], ["budgets.0.limit"]):
        c.append((f"update key mask {paths}", "keys", "UpdateKey", uk(key_id=own_key, update_mask=mask(paths=paths), request_id="r"), u, IA, "INVALID_UPDATE_MASK"))
        c.append((f"update member mask {paths}", "orgs", "UpdateMember", um(org_id=own_org, user_id="victim", role=3, update_mask=mask(paths=paths), request_id="r"), u, IA, "INVALID_UPDATE_MASK"))
    two_days = [budget(window=day, limit_millicredits=1), budget(window=day, limit_millicredits=2)]
    c += [
        ("create key no budget", "keys", "CreateKey", ck(request_id="r"), u, IA, "INVALID_BUDGET"),
        ("create key window twice", "keys", "CreateKey", ck(budgets=two_days, request_id="r"), u, IA, "INVALID_BUDGET"),
        ("add member window twice", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=3, budgets=two_days, request_id="r"), u, IA, "INVALID_BUDGET"),
        ("create key label huge", "keys", "CreateKey", ck(label=HUGE, budgets=ok_b, request_id="r"), u, IA, "INVALID_LABEL"),
        ("create key label control", "keys", "CreateKey", ck(label="a\x1bb", budgets=ok_b, request_id="r"), u, IA, "INVALID_LABEL"),
        ("create key label RTL override", "keys", "CreateKey", ck(label="a\u202eb", budgets=ok_b, request_id="r"), u, IA, "INVALID_LABEL"),
        ("create key category upper", "keys", "CreateKey", ck(budgets=ok_b, categories=["SANDBOX"], request_id="r"), u, IA, "INVALID_CATEGORY"),
        ("create key 33 categories", "keys", "CreateKey", ck(budgets=ok_b, categories=[f"c{i}" for i in range(33)], request_id="r"), u, IA, "INVALID_CATEGORY"),
        ("create key 10,000 categories", "keys", "CreateKey", ck(budgets=ok_b, categories=[f"{i:060d}" for i in range(10_000)], request_id="r"), u, IA, "INVALID_CATEGORY"),
        ("update key 33 categories", "keys", "UpdateKey", uk(key_id=own_key, update_mask=mask(paths=["categories"]), categories=[f"c{i}" for i in range(33)], request_id="r"), u, IA, "INVALID_CATEGORY"),
        ("create key category empty", "keys", "CreateKey", ck(budgets=ok_b, categories=[""], request_id="r"), u, IA, "INVALID_CATEGORY"),
        ("create key expiry int64", "keys", "CreateKey", ck(budgets=ok_b, expires_at=ts(I64_MAX), request_id="r"), u, IA, "INVALID_TIMESTAMP"),
        ("create key expiry negative nanos", "keys", "CreateKey", ck(budgets=ok_b, expires_at=Timestamp(seconds=4_000_000_000, nanos=-1), request_id="r"), u, IA, "INVALID_TIMESTAMP"),
        ("create key expiry year 0", "keys", "CreateKey", ck(budgets=ok_b, expires_at=ts(-62_135_596_801), request_id="r"), u, IA, "INVALID_TIMESTAMP"),
        ("create key expiry past", "keys", "CreateKey", ck(budgets=ok_b, expires_at=ts(1), request_id="r"), u, IA, "INVALID_EXPIRY"),
        ("update key expiry int64 min", "keys", "UpdateKey", uk(key_id=own_key, update_mask=mask(paths=["expires_at"]), expires_at=ts(I64_MIN), request_id="r"), u, IA, "INVALID_TIMESTAMP"),
        ("create key no request_id", "keys", "CreateKey", ck(budgets=ok_b), u, IA, "MISSING_REQUEST_ID"),
        ("create key for another user", "keys", "CreateKey", ck(user_id="victim", budgets=ok_b, request_id="r"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("create key on another's org", "keys", "CreateKey", ck(org_id=their_org, budgets=ok_b, request_id="r"), u, pd, "NOT_ORG_MEMBER"),
        ("get another wallet's key", "keys", "GetKey", keys_pb2.GetKeyRequest(key_id=their_key), u, nf, "KEY_NOT_FOUND"),
        ("update another wallet's key", "keys", "UpdateKey", uk(key_id=their_key, update_mask=mask(paths=["label"]), label="mine", request_id="r"), u, nf, "KEY_NOT_FOUND"),
        ("revoke another wallet's key", "keys", "RevokeKey", keys_pb2.RevokeKeyRequest(key_id=their_key, request_id="r"), u, nf, "KEY_NOT_FOUND"),
        ("list another's keys", "keys", "ListKeys", lk(user_id="victim"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("list keys of another's org", "keys", "ListKeys", lk(org_id=their_org), u, pd, "NOT_ORG_MEMBER"),
        ("create org no name", "orgs", "CreateOrg", co(request_id="r"), u, IA, "INVALID_ORG_NAME"),
        ("create org name control", "orgs", "CreateOrg", co(name="a\x00b", request_id="r"), u, IA, "INVALID_ORG_NAME"),
        ("create org name huge", "orgs", "CreateOrg", co(name=HUGE, request_id="r"), u, IA, "INVALID_ORG_NAME"),
        ("create org name RTL override", "orgs", "CreateOrg", co(name="a\u202eb", request_id="r"), u, IA, "INVALID_ORG_NAME"),
        ("create org name zero-width", "orgs", "CreateOrg", co(name="a\u200bb", request_id="r"), u, IA, "INVALID_ORG_NAME"),
        ("create org no request_id", "orgs", "CreateOrg", co(name="n"), u, IA, "MISSING_REQUEST_ID"),
        ("create org for another", "orgs", "CreateOrg", co(name="n", owner_user_id="victim", request_id="r"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("create org by admin no owner", "orgs", "CreateOrg", co(name="n", request_id="r"), a, IA, "USER_ID_REQUIRED"),
        ("get unknown org", "orgs", "GetOrg", orgs_pb2.GetOrgRequest(org_id=ORG_X), u, nf, "ORG_NOT_FOUND"),
        ("get another's org", "orgs", "GetOrg", orgs_pb2.GetOrgRequest(org_id=their_org), u, pd, "NOT_ORG_MEMBER"),
        ("list another's orgs", "orgs", "ListOrgs", lo(user_id="victim"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("add a member twice", "orgs", "AddMember", am(org_id=own_org, user_id="victim", role=3, request_id="r"), u, grpc.StatusCode.ALREADY_EXISTS, "MEMBER_EXISTS"),
        ("add the owner again", "orgs", "AddMember", am(org_id=own_org, user_id=USER, role=1, request_id="r"), u, grpc.StatusCode.ALREADY_EXISTS, "MEMBER_EXISTS"),
        ("add to another's org", "orgs", "AddMember", am(org_id=their_org, user_id=USER, role=1, request_id="r"), u, pd, "NOT_ORG_MEMBER"),
        ("add to an unknown org", "orgs", "AddMember", am(org_id=ORG_X, user_id="newbie", role=3, request_id="r"), u, nf, "ORG_NOT_FOUND"),
        ("add member no request_id", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=3), u, IA, "MISSING_REQUEST_ID"),
        ("add member by a service", "orgs", "AddMember", am(org_id=own_org, user_id="newbie", role=3, request_id="r"), s, pd, "ROLE_REQUIRED"),
        ("update a non-member", "orgs", "UpdateMember", um(org_id=own_org, user_id="stranger", role=3, update_mask=mask(paths=["role"]), request_id="r"), u, nf, "MEMBER_NOT_FOUND"),
        ("demote the last owner", "orgs", "UpdateMember", um(org_id=own_org, user_id=USER, role=3, update_mask=mask(paths=["role"]), request_id="r"), u, fp, "LAST_OWNER"),
        ("remove the last owner", "orgs", "RemoveMember", rm(org_id=own_org, user_id=USER, request_id="r"), u, fp, "LAST_OWNER"),
        ("remove a non-member", "orgs", "RemoveMember", rm(org_id=own_org, user_id="stranger", request_id="r"), u, nf, "MEMBER_NOT_FOUND"),
        ("remove from another's org", "orgs", "RemoveMember", rm(org_id=their_org, user_id="victim", request_id="r"), u, pd, "NOT_ORG_MEMBER"),
        ("list members of another's org", "orgs", "ListMembers", lm(org_id=their_org), u, pd, "NOT_ORG_MEMBER"),
        ("list events of another", "events", "ListEvents", le(user_id="victim"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("list events unknown type", "events", "ListEvents", le(types=["nope"]), u, IA, "UNKNOWN_EVENT_TYPE"),
        ("list events page_size", "events", "ListEvents", le(page_size=-1), u, IA, "INVALID_PAGE_SIZE"),
        ("list events of another's org", "events", "ListEvents", le(org_id=their_org), u, pd, "NOT_ORG_MEMBER"),
        ("list events of an unknown org", "events", "ListEvents", le(org_id=ORG_X), s, nf, "ORG_NOT_FOUND"),
        ("watch events of another's org", "events", "WatchEvents", events_pb2.WatchEventsRequest(org_id=their_org), u, pd, "NOT_ORG_MEMBER"),
        ("watch events unknown type", "events", "WatchEvents", events_pb2.WatchEventsRequest(types=["x" * 500]), u, IA, "UNKNOWN_EVENT_TYPE"),
        ("create endpoint by a user", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url="https://example.com/h", request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("create endpoint no request_id", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url="https://example.com/h"), s, IA, "MISSING_REQUEST_ID"),
        ("create endpoint description NUL", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url=PUBLIC_URL, description="a\x00", request_id="r"), s, IA, "INVALID_TEXT"),
        ("list endpoints by a user", "events", "ListWebhookEndpoints", events_pb2.ListWebhookEndpointsRequest(), u, pd, "ROLE_REQUIRED"),
        ("list endpoints page_token", "events", "ListWebhookEndpoints", events_pb2.ListWebhookEndpointsRequest(page_token=forged_token(5)), s, IA, "INVALID_PAGE_TOKEN"),
        ("list endpoints page_token NUL", "events", "ListWebhookEndpoints", events_pb2.ListWebhookEndpointsRequest(page_token=validation_token("we\x00x", "endpoints")), s, IA, "INVALID_PAGE_TOKEN"),
        ("update endpoint id unicode", "events", "UpdateWebhookEndpoint", events_pb2.UpdateWebhookEndpointRequest(endpoint_id="wé", request_id="r"), s, IA, "INVALID_ENDPOINT_ID"),
        ("update unknown endpoint", "events", "UpdateWebhookEndpoint", events_pb2.UpdateWebhookEndpointRequest(endpoint_id="we_x", description="d", request_id="r"), s, nf, "WEBHOOK_ENDPOINT_NOT_FOUND"),
        ("delete endpoint id huge", "events", "DeleteWebhookEndpoint", events_pb2.DeleteWebhookEndpointRequest(endpoint_id=HUGE, request_id="r"), s, IA, "INVALID_ENDPOINT_ID"),
        ("delete unknown endpoint", "events", "DeleteWebhookEndpoint", events_pb2.DeleteWebhookEndpointRequest(endpoint_id="we_x", request_id="r"), s, nf, "WEBHOOK_ENDPOINT_NOT_FOUND"),
        ("rotate endpoint id NUL", "events", "RotateWebhookSecret", events_pb2.RotateWebhookSecretRequest(endpoint_id="a\x00", request_id="r"), s, IA, "INVALID_ENDPOINT_ID"),
        ("rotate by a user", "events", "RotateWebhookSecret", events_pb2.RotateWebhookSecretRequest(endpoint_id="we_x", request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("deliveries endpoint id empty", "events", "ListWebhookDeliveries", ld(), s, IA, "INVALID_ENDPOINT_ID"),
        ("redeliver unknown", "events", "RedeliverEvent", events_pb2.RedeliverEventRequest(endpoint_id="we_x", event_id="evt_1", request_id="r"), s, nf, "WEBHOOK_ENDPOINT_NOT_FOUND"),
        ("alerts lead int64 max", "events", "SetBalanceAlerts", sa(expiry_lead_seconds=I64_MAX, request_id="r"), u, IA, "INVALID_ALERTS"),
        ("alerts lead negative", "events", "SetBalanceAlerts", sa(expiry_lead_seconds=-1, request_id="r"), u, IA, "INVALID_ALERTS"),
        ("alerts forecast int32 max", "events", "SetBalanceAlerts", sa(forecast_days=I32_MAX, request_id="r"), u, IA, "INVALID_ALERTS"),
        ("alerts threshold int64 max", "events", "SetBalanceAlerts", sa(thresholds_millicredits=[I64_MAX], request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("alerts threshold twice", "events", "SetBalanceAlerts", sa(thresholds_millicredits=[5, 5], request_id="r"), u, IA, "INVALID_ALERTS"),
        ("alerts of another", "events", "SetBalanceAlerts", sa(user_id="victim", request_id="r"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("alerts no request_id", "events", "SetBalanceAlerts", sa(), u, IA, "MISSING_REQUEST_ID"),
        ("get alerts of another", "events", "GetBalanceAlerts", events_pb2.GetBalanceAlertsRequest(user_id="victim"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("portal return_url javascript", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="javascript:alert(1)", request_id="r"), u, IA, "INVALID_RETURN_URL"),
        ("portal return_url huge", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="https://e.com/" + HUGE, request_id="r"), u, IA, "INVALID_RETURN_URL"),
        ("portal return_url NUL", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="https://example.com/\x00", request_id="r"), u, IA, "INVALID_RETURN_URL"),
        ("portal return_url control", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="https://example.com/\x1b[31m", request_id="r"), u, IA, "INVALID_RETURN_URL"),
        ("create endpoint url NUL", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url="https://example.com/\x00", request_id="r"), s, IA, "WEBHOOK_URL_INVALID"),
        ("create endpoint url huge", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url="https://example.com/" + HUGE, request_id="r"), s, IA, "WEBHOOK_URL_INVALID"),
        ("create endpoint type NUL", "events", "CreateWebhookEndpoint", events_pb2.CreateWebhookEndpointRequest(url=PUBLIC_URL, event_types=["balance.low\x00"], request_id="r"), s, IA, "UNKNOWN_EVENT_TYPE"),
        ("update endpoint url NUL", "events", "UpdateWebhookEndpoint", events_pb2.UpdateWebhookEndpointRequest(endpoint_id="we_x", url="https://example.com/\x00", request_id="r"), s, IA, "WEBHOOK_URL_INVALID"),
        ("portal no request_id", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(return_url="https://example.com/"), u, IA, "MISSING_REQUEST_ID"),
        ("portal for another", "portal", "CreatePortalSession", portal_pb2.CreatePortalSessionRequest(user_id="victim", return_url="https://example.com/", request_id="r"), u, pd, "NOT_YOUR_ACCOUNT"),
        ("rate card as of year 0", "pricing", "GetRateCard", pricing_pb2.GetRateCardRequest(as_of_time=Timestamp(seconds=-62_135_596_801)), u, IA, "INVALID_TIMESTAMP"),
        ("rate card version -1", "pricing", "GetRateCard", pricing_pb2.GetRateCardRequest(version=-1), u, IA, "INVALID_VERSION"),
        ("rate card version int64 max", "pricing", "GetRateCard", pricing_pb2.GetRateCardRequest(version=I64_MAX), u, grpc.StatusCode.NOT_FOUND, "RATE_CARD_VERSION_NOT_FOUND"),
        ("rate card versions page -1", "pricing", "ListRateCardVersions", pricing_pb2.ListRateCardVersionsRequest(page_size=-1), u, IA, "INVALID_PAGE_SIZE"),
        ("rate card versions token", "pricing", "ListRateCardVersions", pricing_pb2.ListRateCardVersionsRequest(page_token=HUGE), u, IA, "INVALID_PAGE_TOKEN"),
        ("publish as a user", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name="api.calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], request_id="r"), u, pd, "ROLE_REQUIRED"),
        ("publish as a service", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(request_id="r"), s, pd, "ROLE_REQUIRED"),
        ("publish no request_id", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(), a, IA, "MISSING_REQUEST_ID"),
        ("publish empty card", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(request_id="r"), a, IA, "INVALID_RATE_CARD"),
        ("publish price int64 max", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name="api.calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=I64_MAX)])], request_id="r"), a, IA, "INVALID_RATE_CARD"),
        ("publish per_units int64 min", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name="api.calls", unit="call", per_units=I64_MIN, prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], request_id="r"), a, IA, "INVALID_RATE_CARD"),
        ("publish meter name NUL", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name="api\x00calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], request_id="r"), a, IA, "INVALID_RATE_CARD"),
        ("publish meter name huge", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name=HUGE, unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], request_id="r"), a, IA, "INVALID_RATE_CARD"),
        ("publish in the past", "pricing", "PublishRateCard", pricing_pb2.PublishRateCardRequest(meters=[pricing_pb2.Meter(name="api.calls", unit="call", prices=[pricing_pb2.MeterPrice(unit_price_millicredits=1)])], effective_time=Timestamp(seconds=1), request_id="r"), a, IA, "EFFECTIVE_TIME_IN_PAST"),
        ("estimate no usage", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(), u, IA, "UNKNOWN_METER"),
        ("estimate meter NUL", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="api.calls\x00", quantity=1)), u, IA, "UNKNOWN_METER"),
        ("estimate meter huge", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter=HUGE, quantity=1)), u, IA, "UNKNOWN_METER"),
        ("estimate quantity int64 max", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="api.calls", quantity=I64_MAX)), u, IA, "INVALID_QUANTITY"),
        ("estimate quantity int64 min", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="api.calls", quantity=I64_MIN)), u, IA, "INVALID_QUANTITY"),
        ("estimate dimension huge", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="sandbox.seconds", quantity=1, dimensions={"size": HUGE})), u, IA, "INVALID_DIMENSION_VALUE"),
        ("estimate many dimensions", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="sandbox.seconds", quantity=1, dimensions={f"d{i}": "v" for i in range(1000)})), u, IA, "UNKNOWN_DIMENSION"),
        ("estimate in year 10000", "pricing", "EstimateCost", pricing_pb2.EstimateCostRequest(usage=common_pb2.Usage(meter="api.calls", quantity=1), usage_time=Timestamp(seconds=253_402_300_800)), u, IA, "INVALID_TIMESTAMP"),
        ("batch empty", "usage", "SpendBatch", usage_pb2.SpendBatchRequest(), s, IA, "BATCH_EMPTY"),
        ("batch request_id twice", "usage", "SpendBatch", usage_pb2.SpendBatchRequest(requests=[usage_pb2.SpendRequest(user_id=USER, amount_millicredits=1, request_id="r")] * 2), s, IA, "DUPLICATE_REQUEST_ID"),
        ("batch too large", "usage", "SpendBatch", usage_pb2.SpendBatchRequest(requests=[usage_pb2.SpendRequest(user_id=USER, amount_millicredits=1, request_id=f"r{i}") for i in range(5000)]), s, IA, "BATCH_TOO_LARGE"),
        ("top up 0", "payments", "TopUp", payments_pb2.TopUpRequest(amount_cents=0, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("top up int64 max", "payments", "TopUp", payments_pb2.TopUpRequest(amount_cents=I64_MAX, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("top up int64 min", "payments", "TopUp", payments_pb2.TopUpRequest(amount_cents=I64_MIN, request_id="r"), u, IA, "INVALID_AMOUNT"),
        ("top up no request_id", "payments", "TopUp", payments_pb2.TopUpRequest(amount_cents=1000), u, IA, "MISSING_REQUEST_ID"),
        ("top up another's org", "payments", "TopUp", payments_pb2.TopUpRequest(org_id=their_org, amount_cents=1000, request_id="r"), u, pd, "NOT_ORG_MEMBER"),
    ]
    return c


async def test_bad_fields_every_rpc(hostile: Running, caplog: pytest.LogCaptureFixture) -> None:
    # victim's charge, made by another service; and an allowance grant (not reversible, not refundable).
    charge = await hostile.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="victim", amount_millicredits=1_000, request_id="c"), metadata=auth("svc-other", "service"))
    assert hostile.app is not None
    async with hostile.read() as conn:
        grant = (await conn.execute(select(transfers.c.id).where(transfers.c.kind == "allowance_grant").limit(1))).scalar_one()
    own_org = await _create_org(hostile, USER)
    their_org = await _create_org(hostile, "victim")
    await invoke(hostile, "orgs", "AddMember", orgs_pb2.AddMemberRequest(
        org_id=own_org, user_id="victim", role=orgs_pb2.ORG_ROLE_MEMBER, request_id="add-victim"), auth(USER))
    their_key = await invoke(hostile, "keys", "CreateKey", keys_pb2.CreateKeyRequest(
        label="theirs", budgets=[keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_DAY, limit_millicredits=1000)],
        request_id="key-victim"), auth("victim"))
    own_key = await invoke(hostile, "keys", "CreateKey", keys_pb2.CreateKeyRequest(
        label="mine", budgets=[keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_DAY, limit_millicredits=1000)],
        request_id="key-mallory"), auth(USER))
    cases = field_cases(charge.transaction.id, str(grant), own_org, their_org, their_key.key.id, own_key.key.id)
    covered = {m for _, _, m, *_ in cases} | {"CheckBalance", "ListTiers", "ListMeters"}  # these take no fields
    assert covered == {m for _, m, _ in EVERY_RPC}, "an RPC has no hostile field cases"
    before = await snapshot(hostile)
    audit_before = await _audit_count(hostile)
    failed = []
    for name, stub, method, req, (who, role), code, reason in cases:
        try:
            info = await expect_error(invoke(hostile, stub, method, req, auth(who, role)), code, reason)
            assert info.reason and info.reason == info.reason.upper(), "no ErrorInfo reason"
        except AssertionError as exc:
            failed.append(f"{name}: {exc}")
    assert not failed, "\n".join(failed)  # every wrong answer at once
    # Another wallet's key as a history filter: an empty page, as an unknown key (nothing about it shows).
    page = await invoke(hostile, "history", "ListTransactions", history_pb2.ListTransactionsRequest(key_id=their_key.key.id), auth(USER))
    assert list(page.transactions) == []
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not logged, f"a client's mistake logged an error or a traceback: {logged[:3]}"
    assert await snapshot(hostile) == before
    assert await _audit_count(hostile) == audit_before  # no admin change was recorded either


async def _create_org(server: Running, owner: str) -> str:
    made = await invoke(server, "orgs", "CreateOrg", orgs_pb2.CreateOrgRequest(name=f"{owner}'s", request_id=f"org-{owner}"), auth(owner))
    return str(made.org.id)


async def _audit_count(server: Running) -> int:
    from server.db.schema import admin_actions

    assert server.app is not None
    async with server.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(admin_actions))).scalar_one())


async def test_metadata_oddities(hostile: Running) -> None:
    """Binary (-bin) metadata with non-UTF-8 bytes and odd request-id headers
    are harmless: the call is served normally, nothing breaks."""
    before = await snapshot(hostile)
    md = (*auth(USER), ("x-junk-bin", b"\xff\xfe\x00\x80"), ("x-request-id", "r" * 5000), ("authorization-extra", "Bearer x"))
    r = await hostile.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=md)
    assert r.credits_millicredits == 100_000
    # A non-ASCII value in a text header is refused by the client library
    # itself (gRPC allows only printable ASCII there): it never reaches us.
    with pytest.raises(Exception):  # noqa: B017 - any local refusal will do
        await hostile.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(*auth(USER), ("x-name", "ünïcode\u2028")))
    assert await snapshot(hostile) == before


async def test_message_above_size_limit(hostile: Running) -> None:
    before = await snapshot(hostile)
    assert hostile.app is not None
    limit = hostile.settings.max_message_bytes
    req = usage_pb2.SpendRequest(amount_millicredits=1, request_id="big", description="d" * (limit + 1024))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hostile.s.usage.Spend(req, metadata=auth(USER))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Traceback" not in (err.value.details() or "")
    assert await snapshot(hostile) == before


async def test_webhook_fuzz(hostile: Running) -> None:
    """Random bodies and headers at POST /webhooks/stripe: never a 5xx, never a
    credit granted, and nothing unsigned is accepted."""
    assert hostile.app is not None
    routes = {getattr(r, "path", "") for r in hostile.app.registry.routes}
    assert "/webhooks/stripe" in routes, "the webhook route is not wired"
    rng = random.Random(99)
    before = await snapshot(hostile)
    now = int(time.time())
    event = {"id": "evt_x", "type": "checkout.session.completed", "data": {"object": {"id": "cs_x", "payment_status": "paid", "metadata": {"user_id": USER, "credits": "999999"}}}}
    bodies: list[bytes] = [
        b"", b"{}", b"null", b"[]", b"\xff\xfe\x00", json.dumps(event).encode(), b"{" * 10_000,
        json.dumps({"id": 1, "type": None}).encode(), "💸".encode() * 1000,
    ]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000))) for _ in range(20)]
    sigs = [
        None, "", "garbage", f"t={now},v1=deadbeef", f"t={now}", "v1=" + "0" * 64, f"t=-1,v1={'a' * 64}",
        f"t={2**70},v1=00", "t=abc,v1=xyz,v0=1", "ü" * 10,
    ]
    url = f"{hostile.http_base}/webhooks/stripe"
    statuses: set[int] = set()
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(60):
            body = bodies[i % len(bodies)]
            sig = rng.choice(sigs)
            headers: dict[str, bytes] = {"Content-Type": rng.choice([b"application/json", b"text/plain", b"\xff\xfe"])}
            if sig is not None:
                headers["Stripe-Signature"] = sig.encode("utf-8")  # raw bytes, non-ASCII included
            r = await http.post(url, content=body, headers=headers)
            statuses.add(r.status_code)
            assert r.status_code < 500, f"{r.status_code} for body {body[:40]!r} sig {sig!r}: {r.text[:200]}"
            assert r.status_code != 200, f"unsigned webhook accepted: {body[:40]!r} {sig!r}"
            assert "Traceback" not in r.text
    assert statuses and all(400 <= s < 500 for s in statuses)
    assert await snapshot(hostile) == before


async def test_spend_batch_items_with_bad_ids(hostile: Running) -> None:
    """SpendBatch answers each item on its own: an item naming a malformed user
    or org id gets its INVALID_ARGUMENT reason, exactly as its unary Spend."""
    before = await snapshot(hostile)
    sp = usage_pb2.SpendRequest
    items = [sp(user_id=bad, amount_millicredits=1, request_id=f"u{i}") for i, bad in enumerate(BAD_USER_IDS)]
    items += [sp(user_id=USER, org_id=bad, amount_millicredits=1, request_id=f"o{i}") for i, bad in enumerate(BAD_ORG_IDS)]
    done = await invoke(hostile, "usage", "SpendBatch", usage_pb2.SpendBatchRequest(requests=items), auth(SVC, "service"))
    reasons = [r.error.reason for r in done.results]
    assert reasons == ["INVALID_USER_ID"] * len(BAD_USER_IDS) + ["INVALID_ORG_ID"] * len(BAD_ORG_IDS), reasons
    assert {r.error.code for r in done.results} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert await snapshot(hostile) == before
