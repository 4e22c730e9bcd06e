"""Confirmation before a recurring or large charge, through the official Python
SDK client against the real billing server: a host whose human accepts, one
whose human declines, and one that cannot ask (no elicitation). Over stdio in
both protocol eras (2026-07-28: an input-required result answered on retry;
handshake era: an elicitation/create request) and over stateless HTTP."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from flownexus.billing.v1 import common_pb2, payments_pb2, refill_pb2, tier_pb2

from server.__main__ import main as server_main
from tests.harness import Running, auth
from tests.mcp.servers import call, http_mcp, pay, refused, stdio_mcp
from tests.stripe_fake import StripeFake

ERAS = pytest.mark.parametrize("mode", ["auto", "legacy"])  # auto: 2026-07-28; legacy: the initialize handshake


class Human:
    """The host's confirmation dialog: records each question, gives one answer."""

    def __init__(self, action: str, confirm: bool = True) -> None:
        self.action, self.confirm = action, confirm
        self.asked: list[str] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert params.requested_schema["properties"]["confirm"]["type"] == "boolean"
        self.asked.append(params.message)
        if self.action == "accept":
            return types.ElicitResult(action="accept", content={"confirm": self.confirm})
        return types.ElicitResult(action=self.action)  # type: ignore[arg-type]


async def nothing_applied(billing: Running, user: str) -> None:
    """No payment, no refill settings, no tier change: straight from the API."""
    md = auth(user)
    assert not (await billing.s.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10), metadata=md)).payments
    assert not (await billing.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=md)).auto_refill.enabled
    tier = await billing.s.tier.GetTier(tier_pb2.GetTierRequest(), metadata=md)
    assert (tier.tier, tier.pending_tier) == (common_pb2.Tier.TIER_FREE, common_pb2.Tier.TIER_UNSPECIFIED)


@ERAS
async def test_a_human_who_accepts_sees_the_exact_amounts(stripe_server: Running, stripe_fake: StripeFake, mode: str) -> None:
    billing, user, human = stripe_server, f"accepts-{mode}", Human("accept")
    async with stdio_mcp(billing, user, elicitation_callback=human, mode=mode) as c:
        small = await call(c, "create_payment_link", {"amount": 100})  # at the default limit: not asked
        assert human.asked == []
        big = await call(c, "create_payment_link", {"amount": 150.25})
        assert big["amount"] == 150.25 and big["credits_amount"] == 1502.5
        assert "$150.25" in human.asked[0] and "$100.00" in human.asked[0], human.asked

        up = await call(c, "user_upgrade", {"user_id": user, "tier": "pro"})
        assert (up["new_tier"], up["status"]) == ("pro", "payment_required")
        assert "$29.00" in human.asked[1] and "per month" in human.asked[1] and "1,000 credits" in human.asked[1]

        await pay(billing, stripe_fake, small)  # saves the card auto-refill charges
        refill = await call(c, "configure_auto_refill", {"enabled": True, "threshold": 250, "amount": 40})
        assert (refill["enabled"], refill["threshold"], refill["amount"]) == (True, 250, 40)
        assert "$40.00" in human.asked[2] and "250 credits" in human.asked[2]
        off = await call(c, "configure_auto_refill", {"enabled": False})
        assert off["enabled"] is False and len(human.asked) == 3  # disabling charges nothing: not asked


@pytest.mark.parametrize(("mode", "human"), [
    ("auto", Human("decline")), ("legacy", Human("cancel")), ("legacy", Human("accept", confirm=False)),
], ids=["decline", "cancel", "accept-unchecked"])
async def test_a_human_who_declines_applies_nothing(sqlite_stripe_server: Running, mode: str, human: Human) -> None:
    billing, user = sqlite_stripe_server, f"declines-{human.action}"
    async with stdio_mcp(billing, user, elicitation_callback=human, mode=mode) as c:
        # The agent's own confirm: true does not stand in for the human the host can ask.
        body = await refused(c, "create_payment_link", {"amount": 500, "confirm": True}, "confirmation_declined")
        assert body["metadata"]["amount"] == 500 and "$500.00" in body["message"]
        await refused(c, "user_upgrade", {"user_id": user, "tier": "pro"}, "confirmation_declined")
        await refused(c, "configure_auto_refill", {"enabled": True, "threshold": 100, "amount": 50}, "confirmation_declined")
    assert len(human.asked) == 3
    await nothing_applied(billing, user)


async def test_a_host_without_elicitation_must_pass_confirm(sqlite_stripe_server: Running) -> None:
    """Stateless HTTP: no elicitation capability, or one with no channel back for the
    request (the handshake era's elicitation/create): the explicit path, never a silent charge."""
    billing, user = sqlite_stripe_server, "no-dialog"
    async with http_mcp(billing, confirm_above_cents=20_00) as http:
        unasked = Human("accept")
        async with http.client(user) as plain, http.client(user, mode="legacy", elicitation_callback=unasked) as legacy:
            for c in (plain, legacy):
                body = await refused(c, "create_payment_link", {"amount": 20.01, "request_id": "big"}, "confirmation_required")
                assert body["metadata"] == {"amount": 20.01, "confirm_above": 20, "field": "confirm"}
                assert "$20.01" in body["message"] and "confirm: true" in body["message"]
                up = await refused(c, "user_upgrade", {"user_id": user, "tier": "pro", "request_id": "up"}, "confirmation_required")
                assert (up["metadata"]["price"], up["metadata"]["recurring"]) == (29, "monthly")
                await refused(c, "configure_auto_refill", {"enabled": True, "threshold": 1, "amount": 10, "request_id": "r"},
                              "confirmation_required")
            assert unasked.asked == []
            await nothing_applied(billing, user)
            link = await call(plain, "create_payment_link", {"amount": 20.01, "request_id": "big", "confirm": True})
            assert link["amount"] == 20.01
            assert (await call(plain, "create_payment_link", {"amount": 20, "request_id": "small"}))["amount"] == 20


async def test_over_http_the_2026_protocol_asks_the_human(sqlite_stripe_server: Running) -> None:
    """Stateless HTTP can still ask: the input-required result needs no channel back."""
    billing, user = sqlite_stripe_server, "http-dialog"
    async with http_mcp(billing) as http:
        human = Human("accept")
        async with http.client(user, elicitation_callback=human) as c:
            up = await call(c, "user_upgrade", {"user_id": user, "tier": "pro", "request_id": "up"})
            assert up["status"] == "payment_required" and "$29.00" in human.asked[0]
        no = Human("decline")
        async with http.client("http-declines", elicitation_callback=no) as c:
            await refused(c, "user_upgrade", {"user_id": "http-declines", "tier": "pro", "request_id": "up"}, "confirmation_declined")
        await nothing_applied(billing, "http-declines")


def test_the_confirmation_amount_must_be_exact_usd(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BILLING_TOKEN", "x")
    monkeypatch.setenv("BILLING_MCP_CONFIRM_ABOVE_USD", "10.001")
    assert server_main(["mcp"]) == 2
    assert "BILLING_MCP_CONFIRM_ABOVE_USD" in capsys.readouterr().err
