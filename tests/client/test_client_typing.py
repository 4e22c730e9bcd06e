"""The client helper is typed: each service attribute declares its methods
with the generated request/response types, matching the protos, and
`mypy --strict` sees `billing.usage.Spend` as taking a SpendRequest and
returning a SpendResponse (not Any)."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
from flownexus_billing_client import client as client_mod

from tests.runbook_tools import ROOT, VENV_BIN, run_exec

SERVICES = {
    "balance": "BalanceService", "usage": "UsageService", "history": "HistoryService",
    "earnings": "EarningsService", "tier": "TierService", "payments": "PaymentsService",
    "refill": "RefillService",
}
PB2 = {"tier": "tier_pb2"}


def test_every_rpc_is_declared_with_its_types() -> None:
    for attr, cls_name in SERVICES.items():
        pb2 = importlib.import_module(f"flownexus.billing.v1.{PB2.get(attr, attr + '_pb2')}")
        service = pb2.DESCRIPTOR.services_by_name[cls_name]
        cls = getattr(client_mod, cls_name)
        hints = typing.get_type_hints(cls, vars(client_mod))
        assert set(hints) == {m.name for m in service.methods}, cls_name
        for m in service.methods:
            hint = hints[m.name]
            kind = client_mod.Stream if m.server_streaming else client_mod.Unary
            assert typing.get_origin(hint) is kind, (cls_name, m.name, hint)
            req, resp = typing.get_args(hint)
            assert req.DESCRIPTOR.full_name == m.input_type.full_name, (cls_name, m.name)
            assert resp.DESCRIPTOR.full_name == m.output_type.full_name, (cls_name, m.name)


def test_bound_methods_are_the_declared_wrappers() -> None:
    billing = client_mod.BillingClient("127.0.0.1:1", "t")
    assert isinstance(billing.usage.Spend, client_mod.Unary)
    assert isinstance(billing.balance.WatchBalance, client_mod.Stream)
    assert isinstance(billing.with_token("u").refill.GetAutoRefill, client_mod.Unary)


def _mypy_strict(files: list[Path], tmp_path: Path) -> list[str]:
    config = tmp_path / "mypy.ini"
    # The caller's code under --strict; the helper and stubs as an installed
    # package would be (their own errors are not the caller's; grpc has no stubs).
    config.write_text(
        "[mypy]\nignore_missing_imports = true\n"
        "[mypy-flownexus.*]\nignore_errors = true\n[mypy-flownexus_billing_client.*]\nignore_errors = true\n"
    )
    return [
        "-m", "mypy", "--strict", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        *map(str, files),
    ]


@pytest.mark.parametrize("case", ["ok", "wrong_request"])
async def test_mypy_strict_types_a_caller(case: str, tmp_path: Path) -> None:
    example = ROOT / "tests/client/typing/client_example.py"
    files = [example]
    if case == "wrong_request":
        bad = tmp_path / "bad_caller.py"
        bad.write_text(
            "from flownexus.billing.v1 import balance_pb2\n"
            "from flownexus_billing_client import BillingClient\n\n\n"
            "async def f(billing: BillingClient) -> None:\n"
            "    await billing.usage.Spend(balance_pb2.GetBalanceRequest())\n"
        )
        files = [bad]
    env = {"MYPYPATH": f"{ROOT / 'generated'}:{ROOT / 'clients/python/src'}", "PATH": str(VENV_BIN)}
    r = await run_exec([str(VENV_BIN / "python"), *_mypy_strict(files, tmp_path)], env=env, timeout=120)
    if case == "ok":
        assert r.rc == 0, r.out + r.err
    else:
        assert r.rc == 1, r.out + r.err
        assert 'incompatible type "GetBalanceRequest"; expected "SpendRequest"' in r.out, r.out
