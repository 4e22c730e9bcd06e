"""Every mutation made with an admin token is an audited admin action, in
the same ledger transaction, whatever service it goes through: a repeat
(replayed) or a refused request adds none, a user's or a service's own
requests none, and ListAdminActions lists them all."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    common_pb2,
    earnings_pb2,
    tier_pb2,
    usage_pb2,
)

from tests.calls import FREE
from tests.harness import Running, auth, expect_error

ADMIN = auth("ops", "admin")


async def _actions(server: Running) -> list[admin_pb2.AdminAction]:
    r = await server.s.admin.ListAdminActions(admin_pb2.ListAdminActionsRequest(page_size=100), metadata=ADMIN)
    # The service's clock stands still here: one instant for all, so by request_id.
    return sorted(r.actions, key=lambda a: a.request_id)


async def test_admin_changes_through_every_service_are_audited(server: Running) -> None:
    user = "audited"
    # The wallet exists first: an audit row lists every transfer its change
    # made, the allowance of a wallet opened by it included.
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth(user))
    spend = usage_pb2.SpendRequest(user_id=user, amount_millicredits=1_000, request_id="s1")
    spent = await server.s.usage.Spend(spend, metadata=ADMIN)
    assert await server.s.usage.Spend(spend, metadata=ADMIN) == spent  # replayed: one row
    refund = await server.s.usage.RefundUsage(usage_pb2.RefundUsageRequest(
        transaction_id=spent.transaction.id, amount_millicredits=400, reason="sorry", request_id="r1"), metadata=ADMIN)
    award = await server.s.earnings.AwardCredits(earnings_pb2.AwardCreditsRequest(
        user_id=user, amount_millicredits=900_000, reason="prize", source=common_pb2.EARNING_SOURCE_CHALLENGE,
        source_ref="c1", request_id="a1"), metadata=ADMIN)
    upgrade = await server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(
        user_id=user, tier=common_pb2.TIER_ENTERPRISE, request_id="e1"), metadata=ADMIN)
    assert upgrade.new_tier == common_pb2.TIER_ENTERPRISE
    # Refused: no change, no row.
    await expect_error(server.s.usage.Spend(usage_pb2.SpendRequest(
        user_id="poor", amount_millicredits=FREE + 1, request_id="s2"), metadata=ADMIN),
        grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    # Not made with an admin token: not admin actions.
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="own"), metadata=auth(user))
    await server.s.usage.Spend(usage_pb2.SpendRequest(user_id=user, amount_millicredits=1, request_id="svc"),
                               metadata=auth("svc", "service"))
    # AdminService's own changes keep their one row each.
    adj = await server.s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
        user_id=user, amount_millicredits=5, reason="goodwill", lot=common_pb2.LOT_KIND_PURCHASED, request_id="j1"),
        metadata=ADMIN)

    acts = await _actions(server)
    assert [(a.action, a.actor, a.user_id, a.request_id) for a in acts] == [
        ("AwardCredits", "ops", user, "a1"),
        ("UpgradeTier", "ops", user, "e1"),
        ("AdjustBalance", "ops", user, "j1"),
        ("RefundUsage", "ops", user, "r1"),
        ("Spend", "ops", user, "s1"),
    ]
    assert list(acts[0].transaction_ids) == [award.transaction.id]
    assert acts[1].transaction_ids  # the prorated Enterprise allowance
    assert list(acts[2].transaction_ids) == [adj.transaction.id]
    assert list(acts[3].transaction_ids) == [refund.transaction.id]
    assert list(acts[4].transaction_ids) == [spent.transaction.id]
    only_spends = await server.s.admin.ListAdminActions(
        admin_pb2.ListAdminActionsRequest(action="Spend", user_id=user), metadata=ADMIN)
    assert [a.request_id for a in only_spends.actions] == ["s1"]
