"""Runs each examples/ script (the seed's five usage examples) against a live
server, with only the client distribution on the path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from flownexus.billing.v1 import usage_pb2

from tests.client_fixtures import client_site, client_wheel  # noqa: F401
from tests.harness import Running, auth, token
from tests.runbook_tools import ROOT, Result, run_exec

USER = "eve"


@pytest.fixture
async def run_example(sqlite_stripe_server: Running, client_site: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    server = sqlite_stripe_server
    for rid, amount, cat in (("e1", 30_000, "sandbox"), ("e2", 15_000, "training"), ("e3", 5_000, "training")):
        await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=amount, request_id=rid, category=cat), metadata=auth(USER)
        )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(client_site),  # the client package alone: no server/, no generated/
        "BILLING_GRPC_TARGET": server.target,
        "BILLING_TOKEN": token(USER),
    }

    async def run(name: str) -> Result:
        r = await run_exec([sys.executable, str(ROOT / "examples" / name)], env=env)
        assert r.rc == 0, f"{name}: rc={r.rc}\n{r.out}\n{r.err}"
        assert "Traceback" not in r.err
        return r

    return run


async def test_examples(run_example, sqlite_stripe_server: Running) -> None:  # type: ignore[no-untyped-def]

    out = (await run_example("01_balance_management.py")).out
    assert "Current Balance: 50 credits" in out
    assert "Tier: TIER_FREE" in out and "Auto-refill: Disabled" in out
    assert "Warning: Low balance!" in out
    assert "Purchase credits: http://127.0.0.1:" in out
    assert "This will add 500 credits" in out

    out = (await run_example("02_auto_refill_setup.py")).out
    # No card is saved yet: the service says how to add one.
    assert "Auto-refill was not configured:" in out and "PAYMENT_METHOD_REQUIRED" in out, out

    out = (await run_example("03_usage_and_spending.py")).out
    assert "Credits Earned: 0\nCredits Spent: 50\nNet Balance Change: -50" in out
    lines = out.split("Recent Transactions:\n")[1].split("\n\n")[0].splitlines()
    tail = [line.split(": ", 1)[1] for line in lines]
    assert tail[:3] == ["-5 - spend Usage: training", "-15 - spend Usage: training", "-30 - spend Usage: sandbox"]
    assert len(tail) == 4 and tail[3].startswith("+100 - allowance_grant"), tail  # its text belongs to the tiers domain
    assert "Recent Payments:" in out and "$50.00 - pending" in out

    out = (await run_example("04_tier_upgrade.py")).out
    assert "Current tier: TIER_FREE" in out
    assert "- Free: 100/month credits, $0/month" in out
    assert "- Pro: 1,000/month credits, $29/month" in out
    assert "- Enterprise: Unlimited credits, Custom" in out
    assert "Upgrade to TIER_PRO:" in out, out

    out = (await run_example("05_cost_analysis.py")).out
    assert "- sandbox: 30 credits in 1 operations (60%)" in out
    assert "- training: 20 credits in 2 operations (40%)" in out
    assert "Total: 50 credits" in out
    assert "Burn rate: 1.666 credits/day" in out  # 50 credits over the 30-day window
    assert "Days of credit left: 30.0" in out
    assert "5. Clean up unused sandboxes promptly" in out
