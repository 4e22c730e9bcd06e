"""TLS and mTLS on the gRPC listener (BILLING_TLS_CERT, BILLING_TLS_KEY,
BILLING_TLS_CLIENT_CA), with the Python client and with grpcurl."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, balance_pb2_grpc

from server.platform.tls import TlsConfigError
from tests.certs import Pki, make_pki
from tests.harness import Running, auth, serving, token
from tests.runbook_tools import GRPCURL, run_exec

CHECK = "flownexus.billing.v1.BalanceService/CheckBalance"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_server(tmp_path: Path, clock, pki: Pki, request: pytest.FixtureRequest) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    extra = {"tls_client_ca": str(pki.ca)} if request.param == "mtls" else {}
    url = f"sqlite+aiosqlite:///{tmp_path / 'tls.db'}"
    async with serving(url, clock, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), **extra) as running:
        yield running


async def check_balance(port: int, creds: grpc.ChannelCredentials | None) -> balance_pb2.CheckBalanceResponse:
    target = f"localhost:{port}"
    ch = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    try:
        stub = balance_pb2_grpc.BalanceServiceStub(ch)
        return await stub.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("tina"), timeout=5)
    finally:
        await ch.close()


def creds(pki: Pki, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def refused(port: int, c: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check_balance(port, c)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def grpcurl(port: int, *flags: str) -> list[str]:
    return [GRPCURL, *flags, "-max-time", "5", "-H", f"authorization: Bearer {token('tina')}", f"localhost:{port}", CHECK]


@pytest.mark.parametrize("tls_server", ["tls"], indirect=True)
async def test_tls(tls_server: Running, pki: Pki) -> None:
    port = tls_server.grpc_port
    assert (await check_balance(port, creds(pki))).credits_millicredits == 100_000
    await refused(port, None)  # plaintext is not served
    r = await run_exec(grpcurl(port, "-cacert", str(pki.ca)))
    assert r.rc == 0, r.err
    assert r.json() == {"credits_millicredits": "100000", "tier": "TIER_FREE"}
    r = await run_exec(grpcurl(port, "-plaintext"))
    assert r.rc != 0
    r = await run_exec(grpcurl(port))  # the system roots do not know the test CA
    assert r.rc != 0 and "certificate" in r.err, r.err


@pytest.mark.parametrize("tls_server", ["mtls"], indirect=True)
async def test_mtls(tls_server: Running, pki: Pki) -> None:
    port = tls_server.grpc_port
    await refused(port, creds(pki))  # no client certificate
    await refused(port, creds(pki, pki.other_client_cert, pki.other_client_key))  # not signed by the client CA
    ok = await check_balance(port, creds(pki, pki.client_cert, pki.client_key))
    assert ok.credits_millicredits == 100_000

    r = await run_exec(grpcurl(port, "-cacert", str(pki.ca)))
    assert r.rc != 0, r.out
    r = await run_exec(grpcurl(port, "-cacert", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key)))
    assert r.rc == 0, r.err
    assert r.json()["credits_millicredits"] == "100000"


async def test_half_configured_tls_refuses_to_start(tmp_path: Path, clock, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    for extra in ({"tls_cert": str(pki.server_cert)}, {"tls_client_ca": str(pki.ca)},
                  {"tls_cert": str(pki.server_cert), "tls_key": str(tmp_path / "missing.pem")}):
        running = Running(f"sqlite+aiosqlite:///{tmp_path / 'half.db'}", clock, **extra)
        with pytest.raises(TlsConfigError):
            await running.start()
        await running.stop()
