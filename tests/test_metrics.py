"""GET /metrics over HTTP: every metric the operators rely on exists and moves;
JSON logs carry the RPC's request id; OpenTelemetry spans when enabled."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
import httpx
from flownexus.billing.v1 import balance_pb2, earnings_pb2, usage_pb2
from prometheus_client.parser import text_string_to_metric_families

from server.platform import logs
from tests.harness import Running, auth
from tests.stripe_fake import StripeFake, event
from tests.test_payments import buy, deliver, post

FAMILIES = {
    "grpc_server_started": "counter",
    "grpc_server_handled": "counter",
    "grpc_server_handling_seconds": "histogram",
    "billing_ledger_transfers": "counter",
    "billing_credits_spent_millicredits": "counter",
    "billing_credits_granted_millicredits": "counter",
    "billing_credits_clawed_back_millicredits": "counter",
    "billing_refill_attempts": "counter",
    "billing_webhook_events": "counter",
    "billing_watch_streams": "gauge",
    "billing_group_commit_batch_size": "histogram",
    "billing_group_commit_seconds": "histogram",
}

def rpc(service: str, method: str, grpc_type: str = "unary") -> dict[str, str]:
    """The labels of one method's grpc_server_* series (go-grpc-prometheus)."""
    return {"grpc_type": grpc_type, "grpc_service": f"flownexus.billing.v1.{service}", "grpc_method": method}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Running) -> tuple[dict[str, str], Samples]:
    assert server.app is not None
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{server.app.http_port}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_exist_and_move(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server = stripe_server
    types, before = await scrape(server)
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, f"{name}: {types.get(name)}"

    user = "metrics-bob"
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))  # free allowance
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=1_000, request_id="m1", category="sandbox"), metadata=auth(user)
    )
    try:
        await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10**9, request_id="m2"), metadata=auth(user))
        raise AssertionError("expected INSUFFICIENT_CREDITS")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id=user, amount_millicredits=2_000, reason="challenge", source=1, source_ref="c1", request_id="m3"
        ),
        metadata=auth("engine", "service"),
    )
    # A purchase (webhook -> grant), a refund (webhook -> clawback), a forged webhook.
    _, _, pi = await buy(server, stripe_fake, user, 1_000)
    charge = await stripe_fake.refund(pi, 500)
    assert await deliver(server, event("charge.refunded", charge)) == 200
    assert await post(server, b"{}", {"Stripe-Signature": "t=1,v1=forged"}) == 400

    # A watch stream is counted while it is open.
    watch = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=auth(user))
    await watch.read()
    _, during = await scrape(server)
    assert delta(before, during, "billing_watch_streams") == 1
    watch.cancel()
    for _ in range(100):
        _, after = await scrape(server)
        if delta(before, after, "billing_watch_streams") == 0:
            break
        await asyncio.sleep(0.02)
    assert delta(before, after, "billing_watch_streams") == 0

    d = lambda name, **labels: delta(before, after, name, **labels)  # noqa: E731
    spend = rpc("UsageService", "Spend")
    assert d("grpc_server_started_total", **spend) == 2
    assert d("grpc_server_handled_total", **spend, grpc_code="OK") == 1
    assert d("grpc_server_handled_total", **spend, grpc_code="FailedPrecondition") == 1
    assert d("grpc_server_handled_total", **rpc("EarningsService", "AwardCredits"), grpc_code="OK") == 1
    assert d("grpc_server_handling_seconds_count", **spend) == 2
    assert d("grpc_server_handling_seconds_sum", **spend) > 0
    watch_labels = rpc("BalanceService", "WatchBalance", "server_stream")
    assert d("grpc_server_started_total", **watch_labels) == 1
    assert d("grpc_server_handled_total", **watch_labels, grpc_code="Canceled") == 1
    assert d("billing_ledger_transfers_total", kind="spend") == 1
    assert d("billing_ledger_transfers_total", kind="award") == 1
    assert d("billing_ledger_transfers_total", kind="allowance_grant") == 1
    assert d("billing_ledger_transfers_total", kind="purchase") == 1
    assert d("billing_ledger_transfers_total", kind="refund_clawback") == 1
    assert d("billing_credits_spent_millicredits_total") == 1_000
    assert d("billing_credits_granted_millicredits_total") == 100_000 + 2_000 + 100_000  # allowance, award, $10
    assert d("billing_credits_clawed_back_millicredits_total") == 50_000  # half of the $10 refunded
    assert d("billing_webhook_events_total", type="checkout.session.completed", result="paid") == 1
    refunds = {dict(k[1])["result"]: v for k, v in after.items() if k[0] == "billing_webhook_events_total"
               and dict(k[1])["type"] == "charge.refunded" and v > before.get(k, 0)}
    assert len(refunds) == 1, refunds  # one result label, whatever the payments domain calls it
    assert d("billing_webhook_events_total", type="unverified", result="rejected") == 1
    assert d("billing_group_commit_batch_size_count") >= 4
    assert d("billing_group_commit_seconds_count") == d("billing_group_commit_batch_size_count")


async def test_process_and_python_series_and_ecosystem_names(sqlite_server: Running) -> None:
    types, samples = await scrape(sqlite_server)
    names = {name for name, _ in samples}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info", "python_gc_collections_total"):
        assert name in names, name
    assert types["grpc_server_handling_seconds"] == "histogram"
    # The old house names are gone: one convention, not two.
    assert not [n for n in names if n.startswith("billing_rpc")]
    await sqlite_server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("x"))
    _, after = await scrape(sqlite_server)
    assert after[("grpc_server_handled_total", frozenset({**rpc("BalanceService", "CheckBalance"), "grpc_code": "OK"}.items()))] >= 1


async def test_json_logs_carry_the_request_id(sqlite_server: Running) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("server.grpc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        bad = usage_pb2.SpendRequest(amount_millicredits=10**9, request_id="r1")
        for rid in ("req-abc-123", None):
            md = auth("carol") + ((("x-request-id", rid),) if rid else ())
            try:
                await sqlite_server.s.usage.Spend(bad, metadata=md)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    refused = [r for r in records if r["msg"] == "rpc" and r["code"] != "OK"]
    assert len(refused) == 2, records
    assert refused[0]["request_id"] == "req-abc-123"
    assert refused[0]["reason"] == "INSUFFICIENT_CREDITS"
    generated = refused[1]["request_id"]
    assert generated.startswith(logs.new_request_id().split("-")[0] + "-") and generated != "req-abc-123"
    assert logs.request_id_var.get() is None  # reset after the call


async def test_otel_spans_when_enabled(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running = Running(f"sqlite+aiosqlite:///{tmp_path / 'otel.db'}", clock, otel_enabled=True)
    await running.start()
    try:
        await running.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("dora"))
        await running.verify()
    finally:
        await running.stop()
    names = [s.name for s in exporter.get_finished_spans()]
    assert "/flownexus.billing.v1.BalanceService/CheckBalance" in names, names


async def test_one_access_line_per_call_and_the_request_id_comes_back(sqlite_server: Running) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("server.grpc.access")
    logger.addHandler(handler)
    old_level = logger.level
    s = sqlite_server.s
    try:
        # At INFO (the default) an OK call writes nothing; an error writes its line.
        logger.setLevel(logging.INFO)
        ok = s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(*auth("dana"), ("x-request-id", "ok-1")))
        await ok
        assert ("x-request-id", "ok-1") in tuple(await ok.trailing_metadata())
        bad = s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10**9, request_id="big"),
                            metadata=(*auth("dana"), ("x-request-id", "err-1")))
        try:
            await bad
            raise AssertionError("expected INSUFFICIENT_CREDITS")
        except grpc.aio.AioRpcError as exc:
            assert ("x-request-id", "err-1") in tuple(exc.trailing_metadata())
        # At DEBUG the OK calls are logged too; without x-request-id the generated one comes back.
        logger.setLevel(logging.DEBUG)
        gen = s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("dana"))
        await gen
        generated = dict(await gen.trailing_metadata())["x-request-id"]
        assert generated.startswith(logs.new_request_id().split("-")[0] + "-")
        try:
            await s.balance.CheckBalance(balance_pb2.CheckBalanceRequest())  # no token
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        # A refused call's line is written as the server finishes it, which may
        # be just after the client has its status.
        for _ in range(200):
            if len(buf.getvalue().splitlines()) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(r["msg"], r["level"], r["code"], r["request_id"]) for r in lines[:2]] == [
        ("rpc", "INFO", "FAILED_PRECONDITION", "err-1"),
        ("rpc", "DEBUG", "OK", generated),
    ]
    err, ok_line, unauth = lines
    assert err["method"] == "/flownexus.billing.v1.UsageService/Spend"
    assert err["reason"] == "INSUFFICIENT_CREDITS" and err["caller"] == "user:dana"
    assert isinstance(err["duration_ms"], float) and err["duration_ms"] >= 0
    assert ok_line["method"] == "/flownexus.billing.v1.BalanceService/CheckBalance" and ok_line["caller"] == "user:dana"
    assert unauth["code"] == "UNAUTHENTICATED" and unauth["caller"] == "" and unauth["reason"] == "MISSING_TOKEN"
