"""`make demo` (scripts/demo.py) runs end to end on loopback and every step of
the story really happens: the output of each step is checked, not only the exit code."""

from __future__ import annotations

import re
import sys

from tests.runbook_tools import ROOT, base_env, run_exec

TITLES = ("A new user gets free credits", "They spend them", "They buy credits through a payment link",
          "Auto-refill fires", "They upgrade to Pro", "They earn credits from a challenge", "History and stats",
          "A team shares a wallet")


def steps(out: str) -> dict[int, str]:
    """The printed output of each numbered step."""
    parts = re.split(r"^== (\d+)\. (.+) ==$", out, flags=re.M)
    found = {int(parts[i]): (parts[i + 1], parts[i + 2]) for i in range(1, len(parts), 3)}
    assert [found[n][0] for n in sorted(found)] == list(TITLES), out
    return {n: body for n, (_title, body) in found.items()}


def has(body: str, *lines: str) -> None:
    for line in lines:
        assert line in body, f"missing {line!r} in:\n{body}"


async def test_demo_tells_the_whole_story() -> None:
    r = await run_exec([sys.executable, str(ROOT / "scripts" / "demo.py")], env=base_env(), timeout=120)
    assert r.rc == 0, r.out + r.err
    assert "Traceback" not in r.out + r.err and "FAILED" not in r.out
    # It ends with a billing portal link for the demo user (a single-use link on the demo's HTTP port).
    done, portal = r.out.rstrip().splitlines()[-2:]
    assert done == "Done."
    assert re.fullmatch(r"Billing portal for dana \(opens once, within 5 minutes\): "
                        r"http://127\.0\.0\.1:\d+/portal/open/[A-Za-z0-9_-]{43}", portal), portal
    s = steps(r.out)

    has(s[1], "dana signs up: 100 credits, tier TIER_FREE")
    has(s[2], "sandbox run: -60 credits -> balance 40 (15,000 sandbox.seconds {'size': 'large'}, rate card version 1:"
              " 4 millicredits per 1)",
        "model training: -40 credits -> balance 0 (1,600 training.steps {'model': 'base'}, rate card version 1",
        "one more sandbox run is refused: INSUFFICIENT_CREDITS (shortfall 5 credits)")
    # The emulator paid the link and sent Stripe's signed events; the service credited once.
    has(s[3], "payment link for $20.00 (200 credits)", "PaymentIntent pi_", "succeeded, card pm_",
        "Stripe -> webhook payment_intent.succeeded: HTTP 200", "Stripe -> webhook checkout.session.completed: HTTP 200",
        "PAYMENT_STATUS_PAID; balance 200 credits")
    # Auto-refill on the purchase's card; the worker charged it and WatchBalance said so.
    has(s[4], "auto-refill on, with the card the purchase saved (visa ending 4242)",
        "-80 credits -> balance 120, below the threshold",
        "watch: +100 credits (Auto-refill 100 credits ($10.00)) -> balance 220",
        "watch: BALANCE_EVENT_TYPE_AUTO_REFILL_SUCCEEDED: Auto-refill charged $10.00 for 100 credits",
        "auto-refill AUTO_REFILL_STATE_IDLE; this month $10.00 of the $1,000.00 cap; balance 220 credits")
    # Pro: dana's saved card is charged, the paid invoice grants 1,000 credits; sam pays a subscription Checkout.
    has(s[5], "upgrade to TIER_PRO: UPGRADE_STATUS_PENDING, 1,000 credits/month",
        "Stripe -> webhook invoice.paid: HTTP 200",
        "tier now TIER_PRO, subscription SUBSCRIPTION_STATUS_ACTIVE, allowance left 1,000 credits; balance 1,220 credits",
        "sam, a teammate without a saved card, upgrades too: UPGRADE_STATUS_PAYMENT_REQUIRED",
        "Stripe -> webhook checkout.session.completed: HTTP 200",
        "sam: tier TIER_PRO, subscription SUBSCRIPTION_STATUS_ACTIVE, balance 1,100 credits")
    assert re.search(r"the emulator pays it: subscription sub_\w+ active, invoice in_\w+ paid \(\$29\.00\)", s[5]), s[5]
    has(s[6], "+25 credits for a challenge -> balance 1,245")
    has(s[7], "earned 25, spent 180, challenges completed 1",
        "sandbox.seconds    15,000 units       60 credits in 1 operations (4/1 millicredits per unit)",
        "training.steps      1,600 units       40 credits in 1 operations (25/1 millicredits per unit)",
        "allowance_grant  Monthly allowance (pro)  (balance 1,220)",
        "auto_refill      Auto-refill 100 credits ($10.00)  (balance 220)",
        "purchase         Purchased 200 credits ($20.00)  (balance 200)",
        "$20.00 PAYMENT_STATUS_PAID", 'billing_refill_attempts_total{outcome="succeeded"} 1.0')
    assert re.search(r"payment rfa_\w+: \$10\.00 PAYMENT_STATUS_PAID", s[7]), s[7]
    # The Pro invoice is in the payment history too, once.
    assert len(re.findall(r"payment pro_in_\w+: \$29\.00 PAYMENT_STATUS_PAID \(PAYMENT_KIND_SUBSCRIPTION\)", s[7])) == 1, s[7]
    # A team: dana buys for the org, sam spends under a member budget, the report by member, removal.
    has(s[8], 'dana creates the org "Dana\'s team" (org_', "sam joins as a member with a budget of 50 credits a day",
        "the team wallet holds 100 credits", "sam spends 30 from the team wallet -> 70 left",
        "sam spends 30 more: refused BUDGET_EXCEEDED (day budget, 20 left)",
        "by member: sam spent 30 credits in 1 operations", "their next spend is refused: NOT_ORG_MEMBER")
