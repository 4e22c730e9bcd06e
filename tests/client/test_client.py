"""The client distribution (flownexus-billing-client): built from generated/,
installable alone, and its helper's three behaviours (token, UNAVAILABLE
retries with the same request_id, typed errors)."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import grpc
import pytest
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    earnings_pb2,
    history_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
    usage_pb2_grpc,
)
from flownexus_billing_client import (
    BillingClient,
    BillingError,
    InsufficientCredits,
    InvalidAmount,
    PermissionDenied,
    RequestIdReused,
    Unauthenticated,
    Unavailable,
    channel_options,
    service_config,
)

from tests.client_fixtures import VERSION, client_site, client_wheel  # noqa: F401
from tests.harness import Running, free_port, token
from tests.runbook_tools import run_exec

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_the_stubs_and_the_helper_only(client_wheel: Path) -> None:  # noqa: F811
    assert client_wheel.name == f"flownexus_billing_client-{VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(client_wheel).namelist()
    for mod in ("balance", "usage", "history", "earnings", "tier", "payments", "refill", "common"):
        assert f"flownexus/billing/v1/{mod}_pb2.py" in names
        assert f"flownexus/billing/v1/{mod}_pb2.pyi" in names
    assert "flownexus/billing/v1/balance_pb2_grpc.py" in names
    assert "flownexus_billing_client/client.py" in names
    assert "flownexus_billing_client/service_config.json" in names
    assert not [n for n in names if n.startswith(("server/", "tests/"))]
    meta = zipfile.ZipFile(client_wheel).read(f"flownexus_billing_client-{VERSION}.dist-info/METADATA").decode()
    assert "Requires-Dist: grpcio" in meta and "sqlalchemy" not in meta.lower()


async def test_installed_alone_it_imports_from_its_own_directory(client_site: Path) -> None:  # noqa: F811
    code = (
        "import flownexus_billing_client as c, flownexus.billing.v1.usage_pb2_grpc as g;"
        "print(c.__version__); print(c.__file__); print(g.__file__)"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(client_site)}
    r = await run_exec([sys.executable, "-c", code], env=env)
    assert r.rc == 0, r.err
    version, helper, stubs = r.out.split()
    assert version == VERSION
    assert helper.startswith(str(client_site)) and stubs.startswith(str(client_site))


async def test_token_and_typed_errors(server: Running) -> None:
    target = server.target
    async with BillingClient(target, token("kim")) as kim:
        bal = await kim.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        assert bal.credits_millicredits == 100_000
        spent = await kim.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1_000, category="api"))
        assert spent.credits_millicredits == 99_000  # a request_id was filled in
        with pytest.raises(InsufficientCredits) as e:
            await kim.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10**9, request_id="big"))
        assert (e.value.balance_millicredits, e.value.shortfall_millicredits) == (99_000, 10**9 - 99_000)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and e.value.reason == "INSUFFICIENT_CREDITS"
        await kim.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id="once"))
        with pytest.raises(RequestIdReused):
            await kim.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=11, request_id="once"))
        with pytest.raises(InvalidAmount):
            await kim.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=-5, request_id="neg"))
        with pytest.raises(PermissionDenied) as denied:
            await kim.earnings.AwardCredits(
                earnings_pb2.AwardCreditsRequest(user_id="kim", amount_millicredits=1, reason="x", source=1, source_ref="r")
            )
        assert denied.value.reason == "ROLE_REQUIRED"
        # The stream gets the token and typed errors too.
        events = kim.balance.WatchBalance(balance_pb2.WatchBalanceRequest())
        first = await anext(events)
        assert first.credits_millicredits == 99_000 - 10
        await events.aclose()
        with pytest.raises(PermissionDenied):
            async for _ in kim.balance.WatchBalance(balance_pb2.WatchBalanceRequest(user_id="someone-else")):
                pass
    async with BillingClient(target, "not-a-jwt") as bad:
        with pytest.raises(Unauthenticated) as un:
            await bad.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        assert isinstance(un.value, BillingError) and un.value.reason == "INVALID_TOKEN"


class FlakyUsage(usage_pb2_grpc.UsageServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls and records what it saw."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[str, str]] = []
        self.attempts: list[str] = []  # grpc-previous-rpc-attempts: set by the channel's own retries

    async def Spend(self, request, context):  # type: ignore[no-untyped-def]
        md = dict(context.invocation_metadata())
        self.seen.append((request.request_id, md.get("authorization", "")))
        self.attempts.append(md.get("grpc-previous-rpc-attempts", "0"))
        if len(self.seen) <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return usage_pb2.SpendResponse(credits_millicredits=42)


async def flaky_server(failures: int) -> tuple[grpc.aio.Server, FlakyUsage, str]:
    server, svc = grpc.aio.server(), FlakyUsage(failures)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(svc, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    return server, svc, f"127.0.0.1:{port}"


async def test_unavailable_is_retried_with_the_same_request_id() -> None:
    server, svc, target = await flaky_server(failures=2)
    try:
        async with BillingClient(target, "tok", backoff_seconds=0.01) as c:
            r = await c.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=5))
        assert r.credits_millicredits == 42
        assert len(svc.seen) == 3
        assert len({rid for rid, _ in svc.seen}) == 1 and svc.seen[0][0]  # one generated id, resent
        assert {auth for _, auth in svc.seen} == {"Bearer tok"}
        # Retried by the channel through the service config, not by a loop of new calls.
        assert svc.attempts == ["0", "1", "2"]
    finally:
        await server.stop(0)

    server, svc, target = await flaky_server(failures=10)
    try:
        async with BillingClient(target, "tok", max_attempts=3, backoff_seconds=0.01) as c:
            with pytest.raises(Unavailable):
                await c.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=5, request_id="mine"))
        assert [rid for rid, _ in svc.seen] == ["mine"] * 3  # capped, and the caller's id kept
    finally:
        await server.stop(0)


async def test_the_published_service_config_retries_unavailable_on_a_plain_channel() -> None:
    # What a client in any language gets from service_config.json alone.
    server, svc, target = await flaky_server(failures=1)
    try:
        async with grpc.aio.insecure_channel(target, options=channel_options(initial_backoff_seconds=0.01)) as ch:
            r = await usage_pb2_grpc.UsageServiceStub(ch).Spend(usage_pb2.SpendRequest(amount_millicredits=5, request_id="x"))
        assert r.credits_millicredits == 42
        assert svc.attempts == ["0", "1"]
    finally:
        await server.stop(0)


def test_service_config_covers_every_method_and_retries_only_safe_ones() -> None:
    config = json.loads(
        (ROOT / "clients/python/src/flownexus_billing_client/service_config.json").read_text()
    )
    assert config == service_config()
    methods = {
        f"{s.full_name}/{m.name}": m
        for mod in (admin_pb2, balance_pb2, earnings_pb2, history_pb2, payments_pb2, refill_pb2, tier_pb2, usage_pb2)
        for s in mod.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    listed: list[str] = []
    for mc in config["methodConfig"]:
        assert mc["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= mc["retryPolicy"]["maxAttempts"] <= 5
        listed += [f"{n['service']}/{n['method']}" for n in mc["name"]]
    assert sorted(listed) == sorted(methods)  # each method once, none unknown
    for name, m in methods.items():
        read = m.name.startswith(("Get", "List", "Check", "Watch"))
        # A mutation is retried only because it carries a request_id (a batch:
        # each of its requests does, and the server applies each once).
        fields = m.input_type.fields_by_name
        items = fields["requests"].message_type if "requests" in fields else None
        assert read or "request_id" in fields or (items is not None and "request_id" in items.fields_by_name), name
    assert "retryPolicy" not in service_config(max_attempts=1)["methodConfig"][0]
