"""The process: health, reflection (grpcurl), the CLI, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from flownexus.billing.v1 import balance_pb2, usage_pb2
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from server.app import SERVICE_NAMES, STRIPE_SERVICE_NAMES
from tests.harness import JWT_SECRET, WAIT, Stubs, auth, free_port, run_cmd, serving

ROOT = Path(__file__).resolve().parents[2]
REFLECTION = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


async def test_health_serves_without_token(sqlite_server) -> None:
    stub = health_pb2_grpc.HealthStub(sqlite_server.s.channel)
    for name in ("", "flownexus.billing.v1.UsageService"):
        r = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


async def _health_list(running) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(running.s.channel)
    answer = await stub.List(health_pb2.HealthListRequest())
    return {name: r.status for name, r in answer.statuses.items()}


async def test_health_list_says_the_payment_services_need_stripe(sqlite_server) -> None:
    # No BILLING_STRIPE_API_KEY: PaymentsService refuses every call (tests/hostile/test_health_without_stripe.py).
    statuses = await _health_list(sqlite_server)
    assert set(statuses) == {"", *SERVICE_NAMES}
    assert {n for n, st in statuses.items() if st != health_pb2.HealthCheckResponse.SERVING} == STRIPE_SERVICE_NAMES
    assert all(statuses[n] == health_pb2.HealthCheckResponse.NOT_SERVING for n in STRIPE_SERVICE_NAMES)
    stub = health_pb2_grpc.HealthStub(sqlite_server.s.channel)
    r = await stub.Check(health_pb2.HealthCheckRequest(service="flownexus.billing.v1.PaymentsService"))
    assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_list_with_stripe_configured_serves_everything(db_url, clock) -> None:
    async with serving(db_url, clock, stripe_api_key="sk_test_health") as running:
        statuses = await _health_list(running)
    assert statuses == {name: health_pb2.HealthCheckResponse.SERVING for name in ("", *SERVICE_NAMES)}
    assert {"flownexus.billing.v1.PaymentsService"} == STRIPE_SERVICE_NAMES


async def test_grpcurl_lists_every_service(sqlite_server) -> None:
    rc, out_text, err = await run_cmd(GRPCURL, "-plaintext", sqlite_server.target, "list")
    assert rc == 0, err
    out = out_text.split()
    assert set(out) == {*SERVICE_NAMES, "grpc.health.v1.Health", *REFLECTION}
    assert len(SERVICE_NAMES) == 13


async def test_reflection_v1_lists_and_describes_the_services(sqlite_server) -> None:
    # buf curl and grpc-js reflection clients ask for grpc.reflection.v1; its
    # messages are wire-identical to v1alpha's, so those classes build the call.
    info = sqlite_server.s.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="flownexus.billing.v1.UsageService"),
    ]
    answers = [r async for r in info(iter(requests))]
    assert len(answers) == 3
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == {*SERVICE_NAMES, "grpc.health.v1.Health", *REFLECTION}
    for answer, package in ((answers[1], "grpc.reflection.v1"), (answers[2], "flownexus.billing.v1")):
        assert not answer.HasField("error_response"), answer.error_response
        files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in answer.file_descriptor_response.file_descriptor_proto]
        assert package in {f.package for f in files}


def _env(tmp: Path, grpc_port: int, http_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BILLING_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'billing.db'}",
        BILLING_GRPC_PORT=str(grpc_port),
        BILLING_HTTP_PORT=str(http_port),
        BILLING_JWT_SECRET=JWT_SECRET,
        BILLING_VAR_DIR=str(tmp),
        PYTHONPATH=f"{ROOT}:{ROOT / 'generated'}",
    )
    return env


async def test_cli_token_is_accepted_by_the_server(tmp_path, sqlite_server) -> None:
    env = _env(tmp_path, 0, 0)
    rc, tok, err = await run_cmd(sys.executable, "-m", "server", "token", "--user", "alice", "--role", "user", env=env, cwd=ROOT)
    assert rc == 0, err
    rc, out, err = await run_cmd(
        GRPCURL, "-plaintext", "-H", f"authorization: Bearer {tok.strip()}",
        sqlite_server.target, "flownexus.billing.v1.BalanceService/CheckBalance",
    )
    assert rc == 0, err
    assert json.loads(out)["credits_millicredits"] == "100000"


async def test_sigterm_drains_in_flight_calls_and_keeps_them(tmp_path) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = _env(tmp_path, grpc_port, http_port)
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stubs = Stubs.connect(f"127.0.0.1:{grpc_port}")
    try:
        await asyncio.wait_for(stubs.channel.channel_ready(), WAIT)
        calls = [
            stubs.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id=f"r{i}"), metadata=auth("alice"))
            for i in range(200)
        ]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        ok = [r for r in results if isinstance(r, usage_pb2.SpendResponse)]
        acked = {f"r{i}": r for i, r in enumerate(results) if isinstance(r, usage_pb2.SpendResponse)}
        assert ok, "no call completed"
        assert await asyncio.to_thread(proc.wait, WAIT) == 0
    finally:
        await stubs.channel.close()
        if proc.poll() is None:
            proc.kill()
    # Everything acknowledged before the drain is in the ledger, and the audit passes.
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stubs = Stubs.connect(f"127.0.0.1:{grpc_port}")
    try:
        await asyncio.wait_for(stubs.channel.channel_ready(), WAIT)
        b = await stubs.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("alice"))
        assert b.credits_millicredits <= 100_000 - 10 * len(ok)
        # Replaying an acknowledged one returns its original answer and changes nothing.
        rid, original = next(iter(acked.items()))
        again = await stubs.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id=rid), metadata=auth("alice"))
        assert again == original
        b2 = await stubs.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("alice"))
        assert b2.credits_millicredits == b.credits_millicredits
    finally:
        await stubs.channel.close()
        proc.terminate()
        proc.wait(30)
    rc, out, err = await run_cmd(sys.executable, "-m", "server", "verify", env=env, cwd=ROOT)
    assert rc == 0, out + err
    assert "ledger OK" in out


async def test_unavailable_server_gives_unavailable(tmp_path) -> None:
    stubs = Stubs.connect(f"127.0.0.1:{free_port()}")
    try:
        await stubs.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("a"), timeout=2)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    else:
        raise AssertionError("call to a closed port succeeded")
    finally:
        await stubs.channel.close()
