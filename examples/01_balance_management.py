"""Example 1: balance management. Check the balance; when it is low, create a
payment link for $50 of credits."""

from __future__ import annotations

import asyncio
import uuid

from _common import client, credits, unavailable
from flownexus.billing.v1 import balance_pb2, common_pb2, payments_pb2
from flownexus_billing_client import BillingError, NotImplementedYet

LOW_BALANCE = 100_000  # 100 credits


async def main() -> None:
    async with client() as billing:
        balance = await billing.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        print(f"Current Balance: {credits(balance.credits_millicredits)} credits")
        print(f"Tier: {common_pb2.Tier.Name(balance.tier)}")
        print(f"Auto-refill: {'Enabled' if balance.auto_refill else 'Disabled'}")
        if balance.credits_millicredits >= LOW_BALANCE:
            print("Balance is healthy.")
            return
        print("Warning: Low balance! Consider adding credits.")
        try:
            link = await billing.payments.CreatePaymentLink(
                payments_pb2.CreatePaymentLinkRequest(amount_cents=5000, request_id=uuid.uuid4().hex)
            )
        except NotImplementedYet as exc:
            unavailable("Buying credits", exc)
            return
        except BillingError as exc:
            print(f"Cannot create a payment link: {exc.reason} ({exc.message})")
            return
        print(f"Purchase credits: {link.payment_url}")
        print(f"This will add {credits(link.credits_amount_millicredits)} credits")


if __name__ == "__main__":
    asyncio.run(main())
