"""Example 2: auto-refill setup. Turn auto-refill on ($50 whenever the balance
falls below 100 credits) unless it already is."""

from __future__ import annotations

import asyncio
import uuid

from _common import client, credits, unavailable
from flownexus.billing.v1 import balance_pb2, refill_pb2
from flownexus_billing_client import BillingError, NotImplementedYet


async def main() -> None:
    async with client() as billing:
        balance = await billing.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        if balance.auto_refill:
            print(f"Auto-refill is already on (threshold {credits(balance.threshold_millicredits)} credits).")
            return
        try:
            r = await billing.refill.ConfigureAutoRefill(
                refill_pb2.ConfigureAutoRefillRequest(
                    enabled=True, threshold_millicredits=100_000, amount_cents=5000, request_id=uuid.uuid4().hex
                )
            )
        except NotImplementedYet as exc:
            unavailable("Auto-refill", exc)
            return
        except BillingError as exc:
            print(f"Auto-refill was not configured: {exc.reason} ({exc.message})")
            return
        a = r.auto_refill
        print("Auto-refill configured:")
        print(f"- Trigger: When balance falls below {credits(a.threshold_millicredits)} credits")
        print(f"- Amount: ${a.amount_cents / 100:.2f} (~{credits(a.credits_amount_millicredits)} credits)")
        print(f"- State: {refill_pb2.AutoRefillState.Name(a.state)} {a.paused_reason}".rstrip())
        # To disable: ConfigureAutoRefillRequest(enabled=False, request_id=...)


if __name__ == "__main__":
    asyncio.run(main())
