"""`make demo`: the whole story on loopback, with printed output.

It starts localstripe plus the Checkout Sessions fake (tests/stripe_fake.py),
then the billing service against them (temporary SQLite, free ports, a short
worker interval), and walks a new user through: free credits, spending,
buying credits through a link the emulator pays, auto-refill firing on the
card that purchase saved, the Pro upgrade, a challenge award, and a history
and stats report. The emulator plays Stripe's side: it pays Checkout pages
and sends the signed webhooks Stripe would send to the service.

Every step checks its outcome; a step that did not happen prints FAILED and
the script exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "clients/python/src", ROOT / "generated", ROOT):
    sys.path.insert(0, str(p))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from flownexus.billing.v1 import (  # noqa: E402
    balance_pb2,
    common_pb2,
    earnings_pb2,
    history_pb2,
    keys_pb2,
    orgs_pb2,
    payments_pb2,
    portal_pb2,
    portal_pb2_grpc,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)
from flownexus_billing_client import BillingClient, BillingError, NotImplementedYet  # noqa: E402

from server.app import App  # noqa: E402
from server.platform.auth import Role, mint_token  # noqa: E402
from server.platform.config import Settings  # noqa: E402
from tests.stripe_fake import (  # noqa: E402
    API_KEY,
    WEBHOOK_SECRET,
    StripeFake,
    launch_localstripe,
    wait_http,
)

USER = "dana"
TEAMMATE = "sam"
WORKER_INTERVAL_SECONDS = 0.3  # BILLING_WORKER_INTERVAL_SECONDS: the refill worker runs this often


class StepFailed(Exception):
    """The step ran but its outcome is not what the story says."""


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
        self.teammate = BillingClient(target, mint_token(secret, TEAMMATE, Role.USER))
        self.service_token = mint_token(secret, "challenge-engine", Role.SERVICE)
        self.step_no = 0
        self.failed: list[str] = []

    async def close(self) -> None:
        await self.user.close()
        await self.service.close()
        await self.teammate.close()

    async def step(self, title: str, fn: Callable[[], Awaitable[None]]) -> None:
        self.step_no += 1
        print(f"\n== {self.step_no}. {title} ==")
        try:
            await fn()
            return
        except StepFailed as exc:
            print(f"   FAILED: {exc}")
        except NotImplementedYet as exc:
            print(f"   FAILED: not available (UNIMPLEMENTED): {exc.message}")
        except BillingError as exc:
            print(f"   FAILED: refused: {exc.reason or exc.code.name}: {exc.message}")
        self.failed.append(title)

    def print_events(self, mark: int) -> None:
        """The webhooks the emulator delivered since `mark`, as Stripe would have sent them."""
        for etype, status in self.fake.delivered[mark:]:
            print(f"   Stripe -> webhook {etype}: HTTP {status}")

    async def balance(self) -> int:
        b = await self.user.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        return int(b.credits_millicredits)

    # ---- the story ---------------------------------------------------------------------

    async def free_credits(self) -> None:
        b = await self.user.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        print(f"   {USER} signs up: {cr(b.credits_millicredits)} credits, tier {common_pb2.Tier.Name(b.tier)}")

    async def spend(self) -> None:
        # The platform's services report what was used; the rate card prices it.
        for used, category, what in (
            (common_pb2.Usage(meter="sandbox.seconds", quantity=15_000, dimensions={"size": "large"}), "sandbox",
             "sandbox run"),
            (common_pb2.Usage(meter="training.steps", quantity=1_600, dimensions={"model": "base"}), "training",
             "model training"),
        ):
            r = await self.service.usage.Spend(
                usage_pb2.SpendRequest(user_id=USER, usage=used, category=category,
                                       description=what, request_id=f"demo-{category}")
            )
            u = r.transaction.usage
            print(f"   {what}: {cr(r.transaction.amount_millicredits)} credits -> balance {cr(r.credits_millicredits)}"
                  f" ({u.quantity:,} {u.meter} {dict(u.dimensions)}, rate card version {u.rate_card_version}:"
                  f" {u.unit_price_millicredits} millicredits per {u.per_units})")
        try:
            await self.service.usage.Spend(
                usage_pb2.SpendRequest(user_id=USER, category="sandbox", request_id="demo-more",
                                       usage=common_pb2.Usage(meter="sandbox.seconds", quantity=5_000,
                                                              dimensions={"size": "small"}))
            )
        except BillingError as exc:
            print(f"   one more sandbox run is refused: {exc.reason} (shortfall {cr(int(exc.metadata.get('shortfall_millicredits', 0)))} credits)")

    async def buy(self) -> None:
        link = await self.user.payments.CreatePaymentLink(
            payments_pb2.CreatePaymentLinkRequest(amount_cents=2000, request_id="demo-buy")
        )
        print(f"   payment link for $20.00 ({cr(link.credits_amount_millicredits)} credits): {link.payment_url}")
        mark = len(self.fake.delivered)
        done = await self.fake.complete(link.payment_url.rsplit("/", 1)[-1])
        pi = done["payment_intent"]
        print(f"   the emulator pays it with a test card: PaymentIntent {pi['id']} {pi['status']}, "
              f"card {pi['payment_method']} saved for later (setup_future_usage=off_session)")
        self.print_events(mark)
        p = await self.user.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=link.payment_id))
        print(f"   payment {p.payment.id}: {payments_pb2.PaymentStatus.Name(p.payment.status)}; balance {cr(await self.balance())} credits")
        if p.payment.status != payments_pb2.PAYMENT_STATUS_PAID:
            raise StepFailed("the payment was not credited")

    async def auto_refill(self) -> None:
        r = await self.user.refill.ConfigureAutoRefill(
            refill_pb2.ConfigureAutoRefillRequest(enabled=True, threshold_millicredits=150_000, amount_cents=1000,
                                                  request_id="demo-refill")
        )
        a = r.auto_refill
        print(f"   auto-refill on, with the card the purchase saved ({a.payment_method.brand} ending "
              f"{a.payment_method.last4}): {a.next_charge}")
        watch = self.user.balance.WatchBalance(balance_pb2.WatchBalanceRequest())
        await anext(watch)  # the snapshot: subscribed from here on
        spent = await self.service.usage.Spend(
            usage_pb2.SpendRequest(user_id=USER, amount_millicredits=80_000, category="sandbox", request_id="demo-cross")
        )
        print(f"   a big sandbox run: -80 credits -> balance {cr(spent.credits_millicredits)}, below the threshold; "
              "Spend returns at once, the refill worker charges the card in the background")
        fired = None
        try:
            async with asyncio.timeout(15):
                async for ev in watch:
                    if ev.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER:
                        if ev.transaction.type == common_pb2.TRANSACTION_TYPE_AUTO_REFILL:
                            print(f"   watch: +{cr(ev.transaction.amount_millicredits)} credits "
                                  f"({ev.transaction.description}) -> balance {cr(ev.credits_millicredits)}")
                        continue
                    print(f"   watch: {balance_pb2.BalanceEventType.Name(ev.type)}: {ev.message}")
                    if ev.type == balance_pb2.BALANCE_EVENT_TYPE_BALANCE_LOW:
                        continue  # the low-balance alert comes first; the refill's outcome follows
                    fired = ev
                    break
        except TimeoutError:
            pass
        finally:
            await watch.aclose()
        if fired is None or fired.type != balance_pb2.BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED:
            raise StepFailed("no auto-refill within 15 s")
        g = (await self.user.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest())).auto_refill
        print(f"   auto-refill {refill_pb2.AutoRefillState.Name(g.state)}; this month ${g.monthly_used_cents / 100:.2f} "
              f"of the ${g.monthly_cap_cents / 100:,.2f} cap; balance {cr(await self.balance())} credits")

    async def upgrade(self) -> None:
        mark = len(self.fake.delivered)
        up = await self.user.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="demo-pro"))
        print(f"   upgrade to {common_pb2.Tier.Name(up.new_tier)}: {tier_pb2.UpgradeStatus.Name(up.status)}, "
              f"{cr(up.monthly_credits_millicredits)} credits/month")
        if up.payment_url:
            await self.pay_subscription_checkout(up.payment_url)
        else:
            print(f"   {USER} has a saved card: the subscription charges it now, the first invoice is paid")
            await self.fake.settled()
            self.print_events(mark)
        t = await self.user.tier.GetTier(tier_pb2.GetTierRequest())
        print(f"   tier now {common_pb2.Tier.Name(t.tier)}, subscription {tier_pb2.SubscriptionStatus.Name(t.subscription_status)}, "
              f"allowance left {cr(t.allowance_remaining_millicredits)} credits; balance {cr(await self.balance())} credits")
        if t.tier != common_pb2.TIER_PRO:
            raise StepFailed(f"{USER} is not on Pro")

        # Without a saved card the upgrade goes through a subscription-mode Checkout.
        up = await self.teammate.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(tier=common_pb2.TIER_PRO, request_id="demo-pro"))
        print(f"   {TEAMMATE}, a teammate without a saved card, upgrades too: {tier_pb2.UpgradeStatus.Name(up.status)}")
        if not up.payment_url:
            raise StepFailed("no Checkout link for a user without a card")
        await self.pay_subscription_checkout(up.payment_url)
        t = await self.teammate.tier.GetTier(tier_pb2.GetTierRequest())
        b = await self.teammate.balance.CheckBalance(balance_pb2.CheckBalanceRequest())
        print(f"   {TEAMMATE}: tier {common_pb2.Tier.Name(t.tier)}, subscription "
              f"{tier_pb2.SubscriptionStatus.Name(t.subscription_status)}, balance {cr(b.credits_millicredits)} credits")
        if t.tier != common_pb2.TIER_PRO:
            raise StepFailed(f"{TEAMMATE} is not on Pro")

    async def pay_subscription_checkout(self, url: str) -> None:
        print(f"   subscription checkout: {url}")
        mark = len(self.fake.delivered)
        done = await self.fake.complete(url.rsplit("/", 1)[-1])
        print(f"   the emulator pays it: subscription {done['subscription']['id']} {done['subscription']['status']}, "
              f"invoice {done['invoice']['id']} {done['invoice']['status']} (${done['invoice']['amount_paid'] / 100:.2f})")
        self.print_events(mark)

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
        for m in r.meters:
            per = m.average_millicredits_per_unit
            print(f"     {m.meter:<16} {m.quantity:>8,} units {cr(m.spent_millicredits):>8} credits in {m.operations}"
                  f" operations ({per.numerator}/{per.denominator} millicredits per unit)")
        left = "n/a" if r.days_left < 0 else f"{r.days_left:.1f}"
        print(f"   burn rate {cr(r.burn_rate_millicredits_per_day)} credits/day; days of credit left: {left}")
        try:
            pays = await self.user.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10))
            for p in pays.payments:
                print(f"   payment {p.id}: ${p.amount_cents / 100:.2f} {payments_pb2.PaymentStatus.Name(p.status)} "
                      f"({payments_pb2.PaymentKind.Name(p.kind)})")
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


    async def team(self) -> None:
        org = (await self.user.orgs.CreateOrg(orgs_pb2.CreateOrgRequest(name="Dana's team", request_id="demo-org"))).org
        print(f"   {USER} creates the org {org.name!r} ({org.id}), its owner")
        daily = keys_pb2.Budget(window=keys_pb2.BUDGET_WINDOW_DAY, limit_millicredits=50_000)
        await self.user.orgs.AddMember(orgs_pb2.AddMemberRequest(
            org_id=org.id, user_id=TEAMMATE, role=orgs_pb2.ORG_ROLE_MEMBER, budgets=[daily], request_id="demo-member"))
        print(f"   {TEAMMATE} joins as a member with a budget of {cr(daily.limit_millicredits)} credits a day")
        link = await self.user.payments.CreatePaymentLink(
            payments_pb2.CreatePaymentLinkRequest(amount_cents=1000, request_id="demo-org-buy", org_id=org.id))
        mark = len(self.fake.delivered)
        await self.fake.complete(link.payment_url.rsplit("/", 1)[-1])
        self.print_events(mark)
        left = await self.user.balance.CheckBalance(balance_pb2.CheckBalanceRequest(org_id=org.id))
        print(f"   {USER} buys $10.00 for the team: the team wallet holds {cr(left.credits_millicredits)} credits")
        for amount, rid in ((30_000, "demo-team-1"), (30_000, "demo-team-2")):
            try:
                r = await self.teammate.usage.Spend(usage_pb2.SpendRequest(
                    amount_millicredits=amount, request_id=rid, category="sandbox", org_id=org.id))
                print(f"   {TEAMMATE} spends {cr(amount)} from the team wallet -> {cr(r.credits_millicredits)} left")
            except BillingError as exc:
                print(f"   {TEAMMATE} spends {cr(amount)} more: refused {exc.reason} "
                      f"({exc.metadata.get('window')} budget, {cr(int(exc.metadata.get('remaining_millicredits', 0)))} left)")
        report = await self.user.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(org_id=org.id))
        for m in report.members:
            print(f"   by member: {m.member_id} spent {cr(m.spent_millicredits)} credits in {m.operations} operations")
        await self.user.orgs.RemoveMember(orgs_pb2.RemoveMemberRequest(
            org_id=org.id, user_id=TEAMMATE, request_id="demo-remove"))
        try:
            await self.teammate.usage.Spend(usage_pb2.SpendRequest(
                amount_millicredits=1_000, request_id="demo-team-3", category="sandbox", org_id=org.id))
            raise StepFailed("a removed member could still spend")
        except BillingError as exc:
            print(f"   {USER} removes {TEAMMATE}; their next spend is refused: {exc.reason}")

    async def portal_link(self) -> str:
        """A billing portal link for the demo user, as a platform service asks for one."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.app.grpc_port}") as ch:
            r = await portal_pb2_grpc.PortalServiceStub(ch).CreatePortalSession(
                portal_pb2.CreatePortalSessionRequest(user_id=USER, request_id="demo-portal"),
                metadata=(("authorization", f"Bearer {self.service_token}"),),
            )
        return f"http://127.0.0.1:{self.app.http_port}{urlsplit(r.url).path}"


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
                worker_interval_seconds=WORKER_INTERVAL_SECONDS, log_level="WARNING",
            )
            app = App(settings)
            await app.start()
            fake.webhook_url = f"http://127.0.0.1:{app.http_port}/webhooks/stripe"  # Stripe's webhook sender
            print(f"Billing service: gRPC 127.0.0.1:{app.grpc_port}, HTTP 127.0.0.1:{app.http_port}")
            demo = Demo(app, fake, secret)
            await demo.step("A new user gets free credits", demo.free_credits)
            await demo.step("They spend them", demo.spend)
            await demo.step("They buy credits through a payment link", demo.buy)
            await demo.step("Auto-refill fires", demo.auto_refill)
            await demo.step("They upgrade to Pro", demo.upgrade)
            await demo.step("They earn credits from a challenge", demo.earn)
            await demo.step("History and stats", demo.report)
            await demo.step("A team shares a wallet", demo.team)
            if demo.failed:
                print(f"\nFailed steps: {', '.join(demo.failed)}")
                return 1
            print("\nDone.")
            link = await demo.portal_link()
            print(f"Billing portal for {USER} (opens once, within 5 minutes): {link}")
            if sys.stdin.isatty():
                print("The service keeps running for the portal; press Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
                    await asyncio.Event().wait()
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
