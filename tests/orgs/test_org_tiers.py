"""An org's tier: its owners and admins read, upgrade (through the org's own
Stripe subscription Checkout) and downgrade it with `org_id`; a member gets
ORG_ROLE_REQUIRED and a stranger NOT_ORG_MEMBER. The org's wallet gets the
Pro allowance; the buyer's own tier does not change."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import balance_pb2, common_pb2, tier_pb2

from tests.harness import Running, auth, expect_error
from tests.orgs.helpers import ADMIN_ROLE, add_member, create_org
from tests.stripe_fake import StripeFake
from tests.tiers.test_pro_checkout import pro_server  # noqa: F401 (the fixture)

PD = grpc.StatusCode.PERMISSION_DENIED
PRO = 1_000_000


def up(org: str, rid: str) -> tier_pb2.UpgradeTierRequest:
    return tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id=rid, org_id=org)


async def test_owners_and_admins_change_an_orgs_tier(pro_server: Running, stripe_fake: StripeFake) -> None:  # noqa: F811
    server = pro_server
    org = await create_org(server, "olga")
    await add_member(server, org, "mia", by="olga")
    await add_member(server, org, "adam", ADMIN_ROLE, by="olga")
    tiers = server.s.tier
    # The role matrix: a member neither reads nor changes the tier; a stranger is not a member.
    await expect_error(tiers.UpgradeTier(up(org, "m1"), metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(tiers.DowngradeTier(tier_pb2.DowngradeTierRequest(request_id="m2", org_id=org),
                                           metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(tiers.GetTier(tier_pb2.GetTierRequest(org_id=org), metadata=auth("mia")), PD, "ORG_ROLE_REQUIRED")
    await expect_error(tiers.UpgradeTier(up(org, "e1"), metadata=auth("eve")), PD, "NOT_ORG_MEMBER")
    await expect_error(tiers.GetTier(tier_pb2.GetTierRequest(org_id="org_" + "0" * 32), metadata=auth("olga")),
                       grpc.StatusCode.NOT_FOUND, "ORG_NOT_FOUND")

    # An admin upgrades the org: a subscription Checkout for the org, the org's tier waits for payment.
    r = await tiers.UpgradeTier(up(org, "a1"), metadata=auth("adam"))
    assert r.status == tier_pb2.UPGRADE_STATUS_PAYMENT_REQUIRED
    got = await tiers.GetTier(tier_pb2.GetTierRequest(org_id=org), metadata=auth("olga"))
    assert got.tier == common_pb2.TIER_FREE and got.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_INCOMPLETE
    own = await tiers.GetTier(tier_pb2.GetTierRequest(), metadata=auth("adam"))
    assert own.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_NONE

    done = await stripe_fake.complete(r.payment_url.rsplit("/", 1)[-1])
    assert done["subscription"]["metadata"]["user_id"] == org
    got = await tiers.GetTier(tier_pb2.GetTierRequest(org_id=org), metadata=auth("olga"))
    assert got.tier == common_pb2.TIER_PRO and got.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert got.allowance_remaining_millicredits == PRO
    # Members read the wallet's tier through the balance, as for any read.
    seen = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org), metadata=auth("mia"))
    assert seen.tier == common_pb2.TIER_PRO
    for user in ("olga", "adam"):
        mine = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(user))
        assert mine.tier == common_pb2.TIER_FREE

    # The owner downgrades the org: Free at the period's end.
    d = await tiers.DowngradeTier(tier_pb2.DowngradeTierRequest(request_id="o1", org_id=org), metadata=auth("olga"))
    assert d.new_tier == common_pb2.TIER_FREE and d.effective_date.ToSeconds() == got.period_end.ToSeconds()
    got = await tiers.GetTier(tier_pb2.GetTierRequest(org_id=org), metadata=auth("adam"))
    assert got.tier == common_pb2.TIER_PRO and got.pending_tier == common_pb2.TIER_FREE
