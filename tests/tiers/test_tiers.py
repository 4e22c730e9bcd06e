"""Tiers: catalogue, calendar allowances, Enterprise by admins, Pro through Stripe
subscriptions (localstripe + signed webhooks), grace and downgrade."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from flownexus.billing.v1 import balance_pb2, common_pb2, history_pb2, tier_pb2, usage_pb2

from server.ledger.model import wallet_id
from server.ledger.ops import Call
from server.platform.clock import to_us
from tests.calls import balance, deliver
from tests.earnings.test_earnings import buy
from tests.harness import auth, expect_error
from tests.stripe_fake import API_KEY, event

FREE = 100_000
PRO = 1_000_000
DAY = 86_400


async def get_tier(server, user: str) -> tier_pb2.GetTierResponse:  # type: ignore[no-untyped-def]
    return await server.s.tier.GetTier(tier_pb2.GetTierRequest(), metadata=auth(user))


def lots(b: balance_pb2.GetBalanceResponse) -> list[tuple[int, int]]:
    return [(lot.kind, lot.remaining_millicredits) for lot in b.lots]


def invoice(inv_id: str, user: str, sub: str, start_s: int, end_s: int) -> dict[str, Any]:
    """A subscription invoice as API 2025-03-31.basil sends it."""
    return {
        "id": inv_id, "object": "invoice", "customer": f"cus_{user}", "status": "paid", "amount_paid": 2900,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": sub, "metadata": {"user_id": user}}},
        "lines": {"data": [{"period": {"start": start_s, "end": end_s}}]},
    }


async def test_list_tiers(server) -> None:
    r = await server.s.tier.ListTiers(tier_pb2.ListTiersRequest(), metadata=auth("x"))
    by = {t.tier: t for t in r.tiers}
    assert by[common_pb2.TIER_FREE].monthly_credits_millicredits == FREE
    assert by[common_pb2.TIER_FREE].price_cents == 0
    assert by[common_pb2.TIER_PRO].monthly_credits_millicredits == PRO
    assert by[common_pb2.TIER_PRO].price_cents == 2900
    assert by[common_pb2.TIER_ENTERPRISE].unlimited and by[common_pb2.TIER_ENTERPRISE].custom_price


async def test_free_allowance_expires_and_renews_monthly(server) -> None:
    server.clock.set(datetime(2031, 1, 15, 12, tzinfo=UTC))
    t = await get_tier(server, "fred")
    assert t.tier == common_pb2.TIER_FREE and t.allowance_remaining_millicredits == FREE
    assert t.period_end.ToMicroseconds() == to_us(datetime(2031, 2, 1, tzinfo=UTC))
    await buy(server, "fred", 40_000, "test-purchase:fred")
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=30_000, request_id="s"), metadata=auth("fred"))
    await get_tier(server, "gina")  # a user seen once, then only by the scheduler
    server.clock.set(datetime(2031, 2, 2, tzinfo=UTC))
    assert (await server.run_jobs())["roll_over_allowances"] >= 1
    b = await balance(server, "fred")
    assert lots(b) == [(common_pb2.LOT_KIND_ALLOWANCE, FREE), (common_pb2.LOT_KIND_PURCHASED, 40_000)]
    assert b.credits_millicredits == FREE + 40_000
    hist = await server.s.history.ListTransactions(
        history_pb2.ListTransactionsRequest(types=[common_pb2.TRANSACTION_TYPE_ALLOWANCE_EXPIRY]), metadata=auth("fred")
    )
    assert [x.amount_millicredits for x in hist.transactions] == [-70_000]
    # Reads and replays never stack a second allowance in the same month.
    await server.run_jobs()
    assert (await balance(server, "gina")).credits_millicredits == FREE
    assert (await get_tier(server, "fred")).allowance_remaining_millicredits == FREE


async def test_enterprise_is_admin_only_prorated_once_and_unlimited(server) -> None:
    req = tier_pb2.UpgradeTierRequest(user_id="eve", tier=common_pb2.TIER_ENTERPRISE, request_id="e1",
                                      monthly_credits_millicredits=3_000_000)
    await expect_error(server.s.tier.UpgradeTier(req, metadata=auth("eve")), grpc.StatusCode.PERMISSION_DENIED)
    await expect_error(server.s.tier.UpgradeTier(req, metadata=auth("svc", "service")), grpc.StatusCode.PERMISSION_DENIED)
    server.clock.set(datetime(2031, 4, 21, tzinfo=UTC))  # 10 of April's 30 days left
    await get_tier(server, "eve")
    r = await server.s.tier.UpgradeTier(req, metadata=auth("root", "admin"))
    assert r.new_tier == common_pb2.TIER_ENTERPRISE and r.status == tier_pb2.UPGRADE_STATUS_COMPLETED
    assert r.monthly_credits_millicredits == 3_000_000
    assert await server.s.tier.UpgradeTier(req, metadata=auth("root", "admin")) == r
    again = tier_pb2.UpgradeTierRequest(user_id="eve", tier=common_pb2.TIER_ENTERPRISE, request_id="e2",
                                        monthly_credits_millicredits=3_000_000)
    await server.s.tier.UpgradeTier(again, metadata=auth("root", "admin"))
    b = await balance(server, "eve")
    assert b.credits_millicredits == FREE + 1_000_000  # 3,000,000 * 10/30, once
    assert b.tier == common_pb2.TIER_ENTERPRISE
    # Unlimited overdraft: usage is recorded, never refused.
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=5_000_000, request_id="big"), metadata=auth("eve"))
    assert (await balance(server, "eve")).credits_millicredits == FREE + 1_000_000 - 5_000_000
    # Next month: the full custom allowance (debt is repaid first).
    server.clock.set(datetime(2031, 5, 1, 0, 0, 1, tzinfo=UTC))
    t = await get_tier(server, "eve")
    assert t.monthly_credits_millicredits == 3_000_000
    assert (await balance(server, "eve")).credits_millicredits == -3_900_000 + 3_000_000


async def test_downgrade_waits_for_period_end_and_keeps_purchases(server) -> None:
    server.clock.set(datetime(2031, 6, 10, tzinfo=UTC))
    admin = auth("root", "admin")
    await server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(user_id="dan", tier=common_pb2.TIER_ENTERPRISE,
                                                                request_id="u"), metadata=admin)
    await buy(server, "dan", 7_000, "test-purchase:dan")
    await expect_error(
        server.s.tier.DowngradeTier(tier_pb2.DowngradeTierRequest(request_id="d"), metadata=auth("dan")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    r = await server.s.tier.DowngradeTier(
        tier_pb2.DowngradeTierRequest(user_id="dan", tier=common_pb2.TIER_FREE, request_id="d"), metadata=admin
    )
    july = to_us(datetime(2031, 7, 1, tzinfo=UTC))
    assert r.new_tier == common_pb2.TIER_FREE and r.effective_date.ToMicroseconds() == july
    t = await get_tier(server, "dan")
    assert t.tier == common_pb2.TIER_ENTERPRISE and t.pending_tier == common_pb2.TIER_FREE
    assert t.pending_change_at.ToMicroseconds() == july
    server.clock.set(datetime(2031, 7, 1, 1, tzinfo=UTC))
    t = await get_tier(server, "dan")
    assert t.tier == common_pb2.TIER_FREE and t.pending_tier == common_pb2.TIER_UNSPECIFIED
    b = await balance(server, "dan")
    assert lots(b) == [(common_pb2.LOT_KIND_ALLOWANCE, FREE), (common_pb2.LOT_KIND_PURCHASED, 7_000)]
    await expect_error(
        server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=200_000, request_id="no"), metadata=auth("dan")),
        grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
    )


# The free allowance already granted for a calendar month stays until that month's
# end, even after an upgrade to Pro. Whether it is still there when the first Pro
# renewal fails depends on where the month ends: each case states it.
PRO_RUNS = [
    pytest.param(datetime(2031, 11, 20, 12, tzinfo=UTC), datetime(2031, 12, 1, tzinfo=UTC), 0,
                 id="free-month-ends-before-the-renewal-fails"),
    pytest.param(datetime(2027, 1, 1, 0, 30, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC), FREE,
                 id="starts-on-the-1st-of-a-31-day-month"),
]


@pytest.mark.parametrize(("start", "free_month_end", "free_at_failure"), PRO_RUNS)
async def test_pro_invoices_grant_once_then_grace_then_free(
    stripe_server, start: datetime, free_month_end: datetime, free_at_failure: int
) -> None:
    server = stripe_server
    now = int(start.timestamp())
    server.clock.set(start)
    await get_tier(server, "pam")
    paid = invoice("in_1", "pam", "sub_pam", now, now + 30 * DAY)
    assert await deliver(server, event("invoice.paid", paid, event_id="evt_1")) == 200
    t = await get_tier(server, "pam")
    assert t.tier == common_pb2.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert t.allowance_remaining_millicredits == FREE + PRO  # this month's free allowance stays
    # Replays (same event, and the same invoice under its other event type) grant nothing more.
    assert await deliver(server, event("invoice.paid", paid, event_id="evt_1")) == 200
    assert await deliver(server, event("invoice.payment_succeeded", paid, event_id="evt_2")) == 200
    assert (await balance(server, "pam")).credits_millicredits == FREE + PRO

    async def free_month_ends(pro_left: int) -> None:
        """Just before the calendar month's end the free allowance is there; at it, it is gone."""
        server.clock.set(free_month_end - timedelta(microseconds=1))
        assert (await get_tier(server, "pam")).allowance_remaining_millicredits == FREE + pro_left
        server.clock.set(free_month_end)
        assert (await get_tier(server, "pam")).allowance_remaining_millicredits == pro_left

    renewal_fails = start + timedelta(seconds=30 * DAY + 60)
    if free_month_end < renewal_fails:
        await free_month_ends(PRO)
    # The renewal fails: Pro stays through the grace period, without Pro allowance.
    server.clock.set(renewal_fails)
    failed = {**invoice("in_2", "pam", "sub_pam", now + 30 * DAY, now + 60 * DAY), "status": "open"}
    assert await deliver(server, event("invoice.payment_failed", failed)) == 200
    t = await get_tier(server, "pam")
    assert t.tier == common_pb2.TIER_PRO and t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_PAST_DUE
    assert t.allowance_remaining_millicredits == free_at_failure
    grace = server.settings.tier_grace_seconds
    grace_end = to_us(start) + (30 * DAY + grace) * 1_000_000
    assert t.period_end.ToMicroseconds() == grace_end
    if free_month_end >= renewal_fails:
        await free_month_ends(0)
        assert (await get_tier(server, "pam")).tier == common_pb2.TIER_PRO
    server.clock.set(start + timedelta(seconds=30 * DAY + grace))
    await server.run_jobs()
    t = await get_tier(server, "pam")
    assert t.tier == common_pb2.TIER_FREE
    assert t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_CANCELED
    # The free tier's allowance for the month the grace ends in (a new month in both cases).
    assert t.allowance_remaining_millicredits == FREE
    assert t.period_start.ToMicroseconds() == to_us(free_month_end)
    b = await balance(server, "pam")
    assert lots(b)[0] == (common_pb2.LOT_KIND_ALLOWANCE, FREE)


async def _localstripe(stripe_fake, method: str, path: str, form: dict[str, str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s, s.request(
        method, f"{stripe_fake.upstream}{path}", data=form, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as r:
        body = await r.json()
        assert r.status == 200, body
        return dict(body)


async def test_pro_upgrade_through_stripe(stripe_server, stripe_fake) -> None:
    server = stripe_server
    req = tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="up1")
    # No saved card: a Checkout link in subscription mode; the tier does not change yet.
    r = await server.s.tier.UpgradeTier(req, metadata=auth("pia"))
    assert r.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED and r.payment_url
    assert await server.s.tier.UpgradeTier(req, metadata=auth("pia")) == r
    session = next(iter(stripe_fake.sessions.values()))
    assert session["mode"] == "subscription"
    t = await get_tier(server, "pia")
    assert t.tier == common_pb2.TIER_FREE and t.payment_url == r.payment_url
    assert t.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_INCOMPLETE
    # Using Pro before paying: refused, and the error carries the link.
    info = await expect_error(
        server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="up2"),
                                  metadata=auth("pia")),
        grpc.StatusCode.FAILED_PRECONDITION, "TIER_UPGRADE_FAILED",
    )
    assert info.metadata["payment_url"] == r.payment_url

    # A user with a saved card: Stripe charges it now; Pro arrives with invoice.paid.
    cus = await _localstripe(stripe_fake, "POST", "/v1/customers", {"metadata[user_id]": "quinn"})

    async def link(tx):  # type: ignore[no-untyped-def]
        await tx.wallet("quinn")
        tx.set_user("quinn", stripe_customer_id=cus["id"])

    await server.submit(Call(fn=link, accounts={wallet_id("quinn")}))
    await _localstripe(stripe_fake, "POST", "/v1/payment_methods/pm_card_visa/attach", {"customer": cus["id"]})
    r = await server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="q1"),
                                        metadata=auth("quinn"))
    assert r.status == tier_pb2.UPGRADE_STATUS_PENDING and r.new_tier == common_pb2.TIER_PRO
    assert r.monthly_credits_millicredits == PRO
    assert (await get_tier(server, "quinn")).tier == common_pb2.TIER_FREE
    subs = await _localstripe(stripe_fake, "GET", f"/v1/subscriptions?customer={cus['id']}", {})
    sub = subs["data"][0]
    assert sub["status"] == "active"
    inv = await _localstripe(stripe_fake, "GET", f"/v1/invoices/{sub['latest_invoice']}", {})
    assert inv["status"] == "paid" and inv["amount_paid"] == 2900
    assert await deliver(server, event("invoice.payment_succeeded", inv)) == 200
    assert await deliver(server, event("invoice.paid", inv)) == 200
    t = await get_tier(server, "quinn")
    assert t.tier == common_pb2.TIER_PRO and t.allowance_remaining_millicredits == FREE + PRO
    assert (await balance(server, "quinn")).credits_millicredits == FREE + PRO
    # Downgrade: cancel_at_period_end in Stripe; Pro until the period end.
    d = await server.s.tier.DowngradeTier(tier_pb2.DowngradeTierRequest(request_id="d1"), metadata=auth("quinn"))
    assert d.new_tier == common_pb2.TIER_FREE and d.effective_date == t.period_end
    after = await _localstripe(stripe_fake, "GET", f"/v1/subscriptions/{sub['id']}", {})
    assert after["cancel_at_period_end"] is True
    assert (await get_tier(server, "quinn")).pending_tier == common_pb2.TIER_FREE
