"""Example 3: usage and spending. Stats, the last 20 transactions and the last
10 payments."""

from __future__ import annotations

import asyncio

from _common import client, credits, unavailable
from flownexus.billing.v1 import common_pb2, earnings_pb2, history_pb2, payments_pb2
from flownexus_billing_client import BillingError, NotImplementedYet


async def main() -> None:
    async with client() as billing:
        stats = await billing.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest())
        print("=== Usage Summary ===")
        print(f"Credits Earned: {credits(stats.credits_earned_millicredits)}")
        print(f"Credits Spent: {credits(stats.credits_spent_millicredits)}")
        print(f"Net Balance Change: {credits(stats.credits_earned_millicredits - stats.credits_spent_millicredits)}")

        history = await billing.history.ListTransactions(history_pb2.ListTransactionsRequest(page_size=20))
        print("\nRecent Transactions:")
        for tx in history.transactions:
            sign = "+" if tx.amount_millicredits > 0 else ""
            when = tx.date.ToDatetime().strftime("%Y-%m-%d %H:%M")
            kind = common_pb2.TransactionType.Name(tx.type).removeprefix("TRANSACTION_TYPE_").lower()
            print(f"{when}: {sign}{credits(tx.amount_millicredits)} - {kind} {tx.description}".rstrip())

        print("\nRecent Payments:")
        try:
            payments = await billing.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10))
        except NotImplementedYet as exc:
            unavailable("Payment history", exc)
            return
        except BillingError as exc:
            print(f"Payment history unavailable: {exc.reason} ({exc.message})")
            return
        if not payments.payments:
            print("(none)")
        for p in payments.payments:
            status = payments_pb2.PaymentStatus.Name(p.status).removeprefix("PAYMENT_STATUS_").lower()
            print(f"{p.date.ToDatetime():%Y-%m-%d}: ${p.amount_cents / 100:.2f} - {status}")


if __name__ == "__main__":
    asyncio.run(main())
