"""Example 4: tier upgrade. Compare the tiers and upgrade a free account to Pro."""

from __future__ import annotations

import asyncio
import uuid

from _common import client, credits, unavailable
from flownexus.billing.v1 import balance_pb2, common_pb2, tier_pb2
from flownexus_billing_client import BillingError, NotImplementedYet


async def main() -> None:
    async with client() as billing:
        balance = await billing.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        print(f"Current tier: {common_pb2.Tier.Name(balance.tier)}")
        tiers = await billing.tier.ListTiers(tier_pb2.ListTiersRequest())
        print("\nTiers:")
        for t in tiers.tiers:
            amount = "Unlimited" if t.unlimited else f"{credits(t.monthly_credits_millicredits)}/month"
            price = "Custom" if t.custom_price else f"${t.price_cents / 100:.0f}/month"
            print(f"- {t.display_name}: {amount} credits, {price}")
        if balance.tier != common_pb2.TIER_FREE:
            return
        print("\nUpgrade Benefits:")
        print("- Pro: 10x more credits (1000/month) for $29/month")
        try:
            up = await billing.tier.UpgradeTier(
                tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id=uuid.uuid4().hex)
            )
        except NotImplementedYet as exc:
            unavailable("Tier upgrades", exc)
            return
        except BillingError as exc:
            print(f"Upgrade refused: {exc.reason} ({exc.message})")
            return
        status = tier_pb2.UpgradeStatus.Name(up.status)
        print(f"\nUpgrade to {common_pb2.Tier.Name(up.new_tier)}: {status}")
        print(f"Monthly credits: {credits(up.monthly_credits_millicredits)}")
        if up.payment_url:
            print(f"Complete the subscription payment: {up.payment_url}")


if __name__ == "__main__":
    asyncio.run(main())
