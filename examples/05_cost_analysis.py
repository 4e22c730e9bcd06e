"""Example 5: cost analysis by category, done server-side by
HistoryService.GetSpendingReport (the last 30 days by default)."""

from __future__ import annotations

import asyncio

from _common import client, credits
from flownexus.billing.v1 import history_pb2

TIPS = [
    "Use appropriate sandbox sizes (don't over-provision)",
    "Batch operations to reduce overhead",
    "Leverage templates instead of rebuilding",
    "Schedule non-urgent tasks for off-peak times",
    "Clean up unused sandboxes promptly",
]


async def main() -> None:
    async with client() as billing:
        r = await billing.history.GetSpendingReport(history_pb2.GetSpendingReportRequest())
        print(f"Spending by Category ({r.start_time.ToDatetime():%Y-%m-%d} to {r.end_time.ToDatetime():%Y-%m-%d}):")
        if not r.categories:
            print("(nothing spent)")
        for c in r.categories:
            share = 100 * c.spent_millicredits / r.total_spent_millicredits
            print(f"- {c.category}: {credits(c.spent_millicredits)} credits in {c.operations} operations ({share:.0f}%)")
        print(f"Total: {credits(r.total_spent_millicredits)} credits")
        print(f"Burn rate: {credits(r.burn_rate_millicredits_per_day)} credits/day")
        if r.days_left < 0:
            print("Days of credit left: n/a (nothing spent)")
        else:
            print(f"Days of credit left: {r.days_left:.1f}")
        print("\nOptimization Tips:")
        for i, tip in enumerate(TIPS, 1):
            print(f"{i}. {tip}")


if __name__ == "__main__":
    asyncio.run(main())
