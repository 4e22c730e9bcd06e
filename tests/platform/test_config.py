"""Configuration as an operator meets it: a bad value is one line naming the
variable and the rule (exit 2, no traceback), an unread BILLING_* variable is
warned about, and secrets stay out of repr(settings)."""

from __future__ import annotations

import sys
from pathlib import Path

from server.platform.config import Settings, unknown_variables
from tests.runbook_tools import base_env, run_exec


async def test_a_bad_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = base_env(BILLING_GRPC_PORT="abc", BILLING_VAR_DIR=str(tmp_path))
    r = await run_exec([sys.executable, "-m", "server", "serve"], env=env)
    assert r.rc == 2, r
    lines = r.err.strip().splitlines()
    assert lines == [
        "python -m server: BILLING_GRPC_PORT: must be a valid integer, unable to parse string as an integer (got 'abc')"
    ], r.err
    assert "Traceback" not in r.err and "grpc_port" not in r.err


async def test_each_bad_value_gets_its_line_with_the_rule(tmp_path: Path) -> None:
    env = base_env(BILLING_REVENUE_SHARE_PERCENT="200", BILLING_BATCH_MAX_OPS="0", BILLING_VAR_DIR=str(tmp_path))
    r = await run_exec([sys.executable, "-m", "server", "token", "--user", "alice"], env=env)
    assert r.rc == 2, r
    assert sorted(r.err.strip().splitlines()) == [
        "python -m server: BILLING_BATCH_MAX_OPS: must be greater than 0 (got '0')",
        "python -m server: BILLING_REVENUE_SHARE_PERCENT: must be less than or equal to 100 (got '200')",
    ], r.err
    assert r.out == ""


async def test_an_unread_variable_is_warned_about(tmp_path: Path) -> None:
    env = base_env(BILLING_GRCP_PORT="50052", BILLING_TOKEN="x", BILLING_VAR_DIR=str(tmp_path))
    r = await run_exec([sys.executable, "-m", "server", "token", "--user", "alice"], env=env)
    assert r.rc == 0, r
    assert r.out.count(".") == 2  # the token still comes out, on stdout alone
    assert r.err.strip().splitlines() == [
        "python -m server: warning: BILLING_GRCP_PORT is set but no setting reads it (a typo?)"
    ], r.err


def test_unknown_variables() -> None:
    env = {"BILLING_GRPC_PORT": "1", "BILLING_VAR_DIR": "v", "BILLING_LEDGER_CORE": "compiled", "BILLING_JWT_SECERT": "s", "HOME": "/"}
    assert unknown_variables(env) == ["BILLING_JWT_SECERT"]


def test_secrets_are_hidden_from_repr() -> None:
    s = Settings(jwt_secret="jwt-0123456789", stripe_api_key="sk_live_0123456789", stripe_webhook_secret="whsec_0123456789")  # type: ignore[arg-type]
    for text in (repr(s), str(s), repr(s.model_dump())):
        assert "0123456789" not in text, text
    assert s.effective_jwt_secret == "jwt-0123456789"
    assert s.stripe_api_key.get_secret_value() == "sk_live_0123456789"
