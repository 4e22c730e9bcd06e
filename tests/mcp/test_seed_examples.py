"""The seed's Quick Start and Examples 1 to 5, as JavaScript (tests/mcp/js/seed/),
run by an agent host on the official TypeScript client over stdio against the
real billing server: each example's account is set up so that its branches
run (a low balance, no auto-refill yet, the free tier, some spending), and
what it prints and what it changed are checked."""

from __future__ import annotations

import re

import pytest
from flownexus.billing.v1 import (
    common_pb2,
    earnings_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)

from server.platform.auth import Role
from tests.harness import Running, auth
from tests.mcp.node import run_node, stdio_target
from tests.mcp.servers import pay
from tests.stripe_fake import StripeFake


async def buy(billing: Running, fake: StripeFake, user: str, cents: int) -> None:
    """A paid purchase: credits, and the card saved for auto-refill."""
    link = await billing.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=f"buy-{cents}"), metadata=auth(user))
    await pay(billing, fake, {"payment_url": link.payment_url})


async def spend(billing: Running, user: str, millicredits: int, category: str, n: int) -> None:
    await billing.s.usage.Spend(usage_pb2.SpendRequest(
        amount_millicredits=millicredits, request_id=f"spend-{n}", category=category), metadata=auth(user))


async def run_example(billing: Running, name: str, user: str) -> str:
    out = await run_node("seed.mjs", {"user": stdio_target(billing, user)}, f"seed/{name}.js", env={"MCP_USER": user})
    assert out.rstrip().endswith("ok") and "[call]" in out and " error" not in out, out
    return out


async def auto_refill(billing: Running, user: str) -> refill_pb2.AutoRefill:
    return (await billing.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=auth(user))).auto_refill


async def payments(billing: Running, user: str) -> list[payments_pb2.Payment]:
    r = await billing.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10), metadata=auth(user))
    return list(r.payments)


@pytest.fixture
def db_kind() -> str:
    return "sqlite"  # the examples exercise the MCP host, not the ledger: one database is enough


async def test_quick_start(stripe_server: Running, stripe_fake: StripeFake) -> None:
    billing, user = stripe_server, "seed-quick"
    await buy(billing, stripe_fake, user, 10_00)  # a card on file, as auto-refill needs
    out = await run_example(billing, "quick-start", user)
    assert "Credits: 200, Auto-refill: false" in out
    assert re.search(r"\[confirm\] Enable auto-refill\? .*\$50\.00 \(USD\).* below 100 credits", out), out
    calls = re.findall(r"\[call\] (\w+) ok", out)
    assert calls == ["check_balance", "create_payment_link", "configure_auto_refill", "ruv_history"]
    refill = await auto_refill(billing, user)
    assert (refill.enabled, refill.threshold_millicredits, refill.amount_cents) == (True, 100_000, 50_00)
    assert sorted(p.amount_cents for p in await payments(billing, user)) == [10_00, 50_00]


async def test_example_1_balance_management(stripe_server: Running) -> None:
    billing, user = stripe_server, "seed-ex1"
    await spend(billing, user, 30_000, "sandbox", 1)  # 70 credits: below the example's 100
    out = await run_example(billing, "example-1", user)
    assert "Current Balance: 70 credits" in out and "Tier: free" in out and "Auto-refill: Disabled" in out
    assert "Warning: Low balance! Consider adding credits." in out
    assert "This will add 500 credits" in out
    url = re.search(r"Purchase credits: (\S+)", out)
    assert url and url.group(1) == (await payments(billing, user))[0].payment_url


async def test_example_2_setting_up_auto_refill(stripe_server: Running, stripe_fake: StripeFake) -> None:
    billing, user = stripe_server, "seed-ex2"
    await buy(billing, stripe_fake, user, 20_00)
    out = await run_example(billing, "example-2", user)
    assert "Auto-refill configured:" in out and "[confirm] Enable auto-refill?" in out
    refill = await auto_refill(billing, user)
    assert (refill.enabled, refill.threshold_millicredits, refill.amount_cents) == (True, 100_000, 50_00)
    # Run again: auto-refill is on now, so the example configures nothing and asks nothing.
    again = await run_example(billing, "example-2", user)
    assert "Auto-refill configured:" not in again and "[confirm]" not in again


async def test_example_3_tracking_usage_and_spending(stripe_server: Running, stripe_fake: StripeFake) -> None:
    billing, user = stripe_server, "seed-ex3"
    await billing.s.earnings.AwardCredits(earnings_pb2.AwardCreditsRequest(
        user_id=user, amount_millicredits=25_000, reason="Challenge completion: Advanced Algorithm",
        source=common_pb2.EarningSource.EARNING_SOURCE_CHALLENGE, request_id="award-1"), metadata=auth("svc", Role.SERVICE))
    await spend(billing, user, 12_500, "training", 1)
    await buy(billing, stripe_fake, user, 15_00)
    out = await run_example(billing, "example-3", user)
    assert "Credits Earned: 25" in out and "Credits Spent: 12.5" in out and "Net Balance Change: 12.5" in out
    assert ": +150 - " in out and ": -12.5 - " in out and ": +25 - Challenge completion: Advanced Algorithm" in out
    assert re.search(r": \$15 - paid", out), out


async def test_example_4_tier_upgrade(stripe_server: Running) -> None:
    billing, user = stripe_server, "seed-ex4"
    out = await run_example(billing, "example-4", user)
    assert "Current tier: free" in out and "Upgrade Benefits:" in out
    assert re.search(r"\[confirm\] Upgrade seed-ex4 to Pro for \$29\.00 \(USD\) per month", out), out
    assert "Upgraded to pro!" in out and "Monthly credits: 1000" in out
    assert re.search(r"\[call\] user_upgrade ok", out), out
    tier = await billing.s.tier.GetTier(tier_pb2.GetTierRequest(), metadata=auth(user))
    assert tier.tier == common_pb2.Tier.TIER_FREE  # Pro takes effect once its first invoice is paid


async def test_example_5_cost_optimization_analysis(stripe_server: Running) -> None:
    billing, user = stripe_server, "seed-ex5"
    for n, (amount, category) in enumerate([(10_000, "sandbox"), (5_500, "training"), (4_500, "sandbox")]):
        await spend(billing, user, amount, category, n)
    out = await run_example(billing, "example-5", user)
    assert "Spending by Category:" in out and "- spend: 20 credits" in out
    assert "Optimization Tips:" in out
