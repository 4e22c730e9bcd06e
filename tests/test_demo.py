"""`make demo` (scripts/demo.py) runs end to end on loopback and tells the story."""

from __future__ import annotations

import sys

from tests.runbook_tools import ROOT, base_env, run_exec


async def test_demo_runs() -> None:
    r = await run_exec([sys.executable, str(ROOT / "scripts" / "demo.py")], env=base_env(), timeout=120)
    assert r.rc == 0, r.out + r.err
    out = r.out
    for n, title in enumerate(("A new user gets free credits", "They spend them", "They buy credits through a payment link",
                               "Auto-refill fires", "They upgrade to Pro", "They earn credits from a challenge",
                               "History and stats"), 1):
        assert f"== {n}. {title} ==" in out
    assert "dana signs up: 100 credits, tier TIER_FREE" in out
    assert "model training: -40 credits -> balance 0" in out
    assert "one more sandbox run is refused: INSUFFICIENT_CREDITS (shortfall 5 credits)" in out
    assert "Stripe's checkout.session.completed webhook -> HTTP 200" in out
    assert "PAYMENT_STATUS_PAID; balance 200 credits" in out
    assert "+25 credits for a challenge" in out
    assert "challenges completed 1" in out
    assert "Traceback" not in out + r.err
    assert out.rstrip().endswith("Done.")
