"""GET /metrics over HTTP: every metric the operators rely on exists and moves;
JSON logs carry the RPC's request id; OpenTelemetry spans when enabled."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from flownexus.billing.v1 import balance_pb2, balance_pb2_grpc, earnings_pb2, usage_pb2
from prometheus_client.parser import text_string_to_metric_families

from server.platform import logs
from tests.harness import JWT_SECRET, WAIT, Running, auth, free_port, until
from tests.payments.test_payments import buy, deliver, post
from tests.stripe_fake import StripeFake, event

ROOT = Path(__file__).resolve().parents[2]

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
        r = await http.get(f"{server.http_base}/metrics")
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


async def test_json_log_lines_carry_the_trace_id_of_the_active_span(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
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
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("server.grpc.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    running = Running(f"sqlite+aiosqlite:///{tmp_path / 'otel-logs.db'}", clock, otel_enabled=True)
    await running.start()
    try:
        await running.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("dora"))
    finally:
        await running.stop()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    [span] = [s for s in exporter.get_finished_spans() if s.name.endswith("/CheckBalance")]
    [line] = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert line["method"].endswith("/CheckBalance")
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")
    # No span outside an RPC: no trace_id key.
    record = logging.LogRecord("x", logging.INFO, "", 0, "outside", (), None)
    logs.RequestIdFilter().filter(record)
    assert not hasattr(record, "trace_id")


def _concatenated_json(text: str) -> list[dict[str, object]]:
    """The console exporter's output: pretty-printed JSON objects, one after another."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
    return out


@pytest.mark.parametrize("billing_otel", ["false", "true"])
async def test_readme_opentelemetry_instrument_recipe_prints_spans(tmp_path: Path, billing_otel: str) -> None:
    """The recipe of docs/operations.md, verbatim: `opentelemetry-instrument --traces_exporter
    console --metrics_exporter none --logs_exporter none python -m server serve`
    prints one span per RPC (opentelemetry-distro configures the SDK; the
    grpc.aio server instrumentation wraps our server), and the JSON access line
    carries that span's trace id. BILLING_OTEL_ENABLED on top adds no second span."""
    grpc_port = free_port()
    env = {
        **os.environ,
        "BILLING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'recipe.db'}",
        "BILLING_GRPC_PORT": str(grpc_port),
        "BILLING_HTTP_PORT": str(free_port()),
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_SHUTDOWN_GRACE_SECONDS": "0",  # no balancer here: drain at once
        "BILLING_LOG_JSON": "true",
        "BILLING_LOG_LEVEL": "DEBUG",
        "BILLING_WORKER_INTERVAL_SECONDS": "3600",
        "BILLING_VAR_DIR": str(tmp_path),
        "BILLING_OTEL_ENABLED": billing_otel,
    }
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "migrate", cwd=ROOT, env=env)
    assert await migrate.wait() == 0
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    proc = await asyncio.create_subprocess_exec(
        instrument, "--traces_exporter", "console", "--metrics_exporter", "none", "--logs_exporter", "none",
        sys.executable, "-m", "server", "serve",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = balance_pb2_grpc.BalanceServiceStub(ch)

            async def answered() -> bool:
                assert proc.returncode is None, "server exited"
                try:
                    # Refused at once while nothing listens; once it does, as long as it takes.
                    await stub.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("dora"), timeout=WAIT)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False

            await until(answered, "server did not answer", every=0.1)
    finally:
        proc.terminate()  # a clean exit flushes the batch span processor
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    spans = [s for s in _concatenated_json(out.decode()) if "CheckBalance" in str(s.get("name"))]
    assert len(spans) == 1, (out.decode()[-2000:], err.decode()[-2000:])  # one span, not one per interceptor
    [span] = spans
    assert span["name"] == "/flownexus.billing.v1.BalanceService/CheckBalance"
    assert span["kind"] == "SpanKind.SERVER"
    context = span["context"]
    assert isinstance(context, dict)
    access = [json.loads(x) for x in err.decode().splitlines()
              if x.startswith("{") and '"server.grpc.access"' in x]
    assert [a["trace_id"] for a in access] == [str(context["trace_id"]).removeprefix("0x")], access
    assert access[0]["span_id"] == str(context["span_id"]).removeprefix("0x")


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
