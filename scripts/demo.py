"""`make demo`: the whole story on loopback, with printed output.

It starts localstripe plus the Checkout Sessions fake (tests/stripe_fake.py),
then the billing service against them (temporary SQLite, free ports), and
walks a new user through: free credits, spending, buying credits through a
link the emulator pays, auto-refill, the Pro upgrade, a challenge award, and
a history and stats report. A step whose RPC this build does not serve yet
prints "not available yet (UNIMPLEMENTED)".
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "clients/python/src", ROOT / "generated", ROOT):
    sys.path.insert(0, str(p))

import aiohttp  # noqa: E402
from flownexus.billing.v1 import (  # noqa: E402
    balance_pb2,
    common_pb2,
    earnings_pb2,
    history_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)
from flownexus_billing_client import BillingClient, BillingError, NotImplementedYet  # noqa: E402

from server.app import App  # noqa: E402
from server.auth import Role, mint_token  # noqa: E402
from server.config import Settings  # noqa: E402
from server.wiring import build  # noqa: E402
from tests.stripe_fake import (  # noqa: E402
    API_KEY,
    WEBHOOK_SECRET,
    StripeFake,
    encode,
    event,
    launch_localstripe,
    sign,
    wait_http,
)

USER = "dana"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cr(millicredits: int) -> str:
    return f"{millicredits / 1000:,.3f}".rstrip("0").rstrip(".")


class Demo:
    def __init__(self, app: App, fake: StripeFake, secret: str) -> None:
        self.app = app
        self.fake = fake
        target = f"127.0.0.1:{app.grpc_port}"
        self.user = BillingClient(target, mint_token(secret, USER, Role.USER))
        self.service = BillingClient(target, mint_token(secret, "challenge-engine", Role.SERVICE))
        self.step_no = 0

    async def close(self) -> None:
        await self.user.close()
        await self.service.close()

    async def step(self, title: str, fn: Callable[[], Awaitable[None]]) -> None:
        self.step_no += 1
        print(f"\n== {self.step_no}. {title} ==")
        try:
            await fn()
        except NotImplementedYet as exc:
            print(f"   not available yet (UNIMPLEMENTED): {exc.message}")
        except BillingError as exc:
            print(f"   refused: {exc.reason or exc.code.name}: {exc.message}")

    async def balance(self) -> int:
        b = await self.user.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        return int(b.credits_millicredits)

    async def webhook(self, ev: dict[str, Any]) -> int:
        body = encode(ev)
        url = f"http://127.0.0.1:{self.app.http_port}/webhooks/stripe"
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, WEBHOOK_SECRET)}
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
            return r.status

    # ---- the story ---------------------------------------------------------------------

    async def free_credits(self) -> None:
        b = await self.user.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        print(f"   {USER} signs up: {cr(b.credits_millicredits)} credits, tier {common_pb2.Tier.Name(b.tier)}")

    async def spend(self) -> None:
        for amount, category, what in ((60_000, "sandbox", "sandbox run"), (40_000, "training", "model training")):
            r = await self.service.usage.Spend(
                usage_pb2.SpendRequest(user_id=USER, amount_millicredits=amount, category=category,
                                       description=what, request_id=f"demo-{category}")
            )
            print(f"   {what}: -{cr(amount)} credits -> balance {cr(r.credits_millicredits)}")
        try:
            await self.service.usage.Spend(
                usage_pb2.SpendRequest(user_id=USER, amount_millicredits=5_000, category="sandbox", request_id="demo-more")
            )
        except BillingError as exc:
            print(f"   one more sandbox run is refused: {exc.reason} (shortfall {cr(int(exc.metadata.get('shortfall_millicredits', 0)))} credits)")

    async def buy(self) -> None:
        link = await self.user.payments.CreatePaymentLink(
            payments_pb2.CreatePaymentLinkRequest(amount_cents=2000, request_id="demo-buy")
        )
        print(f"   payment link for $20.00 ({cr(link.credits_amount_millicredits)} credits): {link.payment_url}")
        session = self.fake.sessions[link.payment_url.rsplit("/", 1)[-1]]
        pi = await self.fake.pay(session["id"])
        print(f"   the emulator pays it with a test card: PaymentIntent {pi['id']} {pi['status']}")
        status = await self.webhook(event("checkout.session.completed", copy.deepcopy(session)))
        print(f"   Stripe's checkout.session.completed webhook -> HTTP {status}")
        p = await self.user.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=link.payment_id))
        print(f"   payment {p.payment.id}: {payments_pb2.PaymentStatus.Name(p.payment.status)}; balance {cr(await self.balance())} credits")

    async def auto_refill(self) -> None:
        r = await self.user.refill.ConfigureAutoRefill(
            refill_pb2.ConfigureAutoRefillRequest(enabled=True, threshold_millicredits=150_000, amount_cents=1000,
                                                  request_id="demo-refill")
        )
        a = r.auto_refill
        print(f"   auto-refill: $10.00 when below {cr(a.threshold_millicredits)} credits; state {refill_pb2.AutoRefillState.Name(a.state)} {a.paused_reason}")
        watch = self.user.balance.WatchBalance(balance_pb2.WatchBalanceRequest())
        await anext(watch)  # the snapshot
        spent = await self.service.usage.Spend(
            usage_pb2.SpendRequest(user_id=USER, amount_millicredits=80_000, category="sandbox", request_id="demo-cross")
        )
        print(f"   a big sandbox run: balance {cr(spent.credits_millicredits)} credits, below the threshold")
        try:
            async with asyncio.timeout(10):
                async for ev in watch:
                    kind = balance_pb2.BalanceEventType.Name(ev.type)
                    if ev.type != balance_pb2.BALANCE_EVENT_TYPE_TRANSFER or ev.transaction.type == common_pb2.TRANSACTION_TYPE_AUTO_REFILL:
                        print(f"   watch: {kind} {ev.message} balance {cr(ev.credits_millicredits)}".rstrip())
                        if ev.type != balance_pb2.BALANCE_EVENT_TYPE_TRANSFER:
                            break
        except TimeoutError:
            print("   no auto-refill event within 10 s")
        finally:
            await watch.aclose()

    async def upgrade(self) -> None:
        up = await self.user.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="demo-pro"))
        print(f"   upgrade to {common_pb2.Tier.Name(up.new_tier)}: {tier_pb2.UpgradeStatus.Name(up.status)}, "
              f"{cr(up.monthly_credits_millicredits)} credits/month")
        if up.payment_url:
            print(f"   subscription payment: {up.payment_url}")
            session = self.fake.sessions.get(up.payment_url.rsplit("/", 1)[-1])
            if session is not None:
                pi = await self.fake.pay(session["id"])
                status = await self.webhook(event("checkout.session.completed", copy.deepcopy(session)))
                print(f"   the emulator pays it: PaymentIntent {pi['status']}; webhook -> HTTP {status}")
        t = await self.user.tier.GetTier(tier_pb2.GetTierRequest())
        print(f"   tier now {common_pb2.Tier.Name(t.tier)}, subscription {tier_pb2.SubscriptionStatus.Name(t.subscription_status)}")

    async def earn(self) -> None:
        r = await self.service.earnings.AwardCredits(
            earnings_pb2.AwardCreditsRequest(user_id=USER, amount_millicredits=25_000,
                                             reason="Challenge completion: Advanced Algorithm",
                                             source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref="challenge-7",
                                             request_id="demo-award")
        )
        print(f"   +{cr(r.transaction.amount_millicredits)} credits for a challenge -> balance {cr(r.credits_millicredits)}")

    async def report(self) -> None:
        stats = await self.user.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest())
        print(f"   earned {cr(stats.credits_earned_millicredits)}, spent {cr(stats.credits_spent_millicredits)}, "
              f"challenges completed {stats.challenges_completed}")
        h = await self.user.history.ListTransactions(history_pb2.ListTransactionsRequest(page_size=20))
        print("   history (newest first):")
        for tx in h.transactions:
            kind = common_pb2.TransactionType.Name(tx.type).removeprefix("TRANSACTION_TYPE_").lower()
            print(f"     {'+' if tx.amount_millicredits > 0 else ''}{cr(tx.amount_millicredits):>9}  {kind:<16} "
                  f"{tx.description}  (balance {cr(tx.balance_after_millicredits)})")
        r = await self.user.history.GetSpendingReport(history_pb2.GetSpendingReportRequest())
        print("   spending by category (30 days):")
        for c in r.categories:
            print(f"     {c.category:<10} {cr(c.spent_millicredits):>8} credits in {c.operations} operations")
        left = "n/a" if r.days_left < 0 else f"{r.days_left:.1f}"
        print(f"   burn rate {cr(r.burn_rate_millicredits_per_day)} credits/day; days of credit left: {left}")
        try:
            pays = await self.user.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10))
            for p in pays.payments:
                print(f"   payment {p.id}: ${p.amount_cents / 100:.2f} {payments_pb2.PaymentStatus.Name(p.status)}")
        except BillingError as exc:
            print(f"   payments: {exc.reason}")
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.app.http_port}/metrics") as m:
            text = await m.text()
        wanted = ("billing_credits_spent_millicredits_total", "billing_credits_granted_millicredits_total",
                  "billing_webhook_events_total{", "billing_refill_attempts_total{")
        print("   metrics:")
        for line in text.splitlines():
            if line.startswith(wanted):
                print(f"     {line}")


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="billing-demo-") as tmp:
        ls_port, fake_port = free_port(), free_port()
        proc = launch_localstripe(ls_port, Path(tmp) / "localstripe.pickle")
        fake: StripeFake | None = None
        app: App | None = None
        demo: Demo | None = None
        try:
            await wait_http(f"http://127.0.0.1:{ls_port}/v1/customers")
            fake = await StripeFake(f"http://127.0.0.1:{ls_port}").start(fake_port)
            print(f"Stripe emulator: localstripe on 127.0.0.1:{ls_port}, Checkout Sessions fake on {fake.url}")
            secret = secrets.token_urlsafe(32)
            settings = Settings(
                database_url=f"sqlite+aiosqlite:///{tmp}/demo.db", grpc_port=0, http_port=0, jwt_secret=secret,
                stripe_api_key=API_KEY, stripe_api_base=fake.url, stripe_webhook_secret=WEBHOOK_SECRET,
                worker_interval_seconds=1.0, log_level="WARNING",
            )
            app = build(App(settings))
            await app.start()
            print(f"Billing service: gRPC 127.0.0.1:{app.grpc_port}, HTTP 127.0.0.1:{app.http_port}")
            demo = Demo(app, fake, secret)
            await demo.step("A new user gets free credits", demo.free_credits)
            await demo.step("They spend them", demo.spend)
            await demo.step("They buy credits through a payment link", demo.buy)
            await demo.step("Auto-refill fires", demo.auto_refill)
            await demo.step("They upgrade to Pro", demo.upgrade)
            await demo.step("They earn credits from a challenge", demo.earn)
            await demo.step("History and stats", demo.report)
            print("\nDone.")
            return 0
        finally:
            if demo:
                await demo.close()
            if app:
                await app.stop(grace=1)
            if fake:
                await fake.stop()
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main()))
