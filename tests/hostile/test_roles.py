"""Roles do not share one namespace of subjects: a principal is its role
and its subject. A service or admin token whose subject equals a user's id
has no wallet of its own, so it never acts on that user's wallet "as its
own": a call about the caller's own account is refused, and a call that
takes a user_id needs it named."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import (
    balance_pb2,
    common_pb2,
    history_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)

from tests.calls import FREE, credits
from tests.harness import Running, auth, expect_error
from tests.payments.test_topup import buy, created_intents
from tests.stripe_fake import StripeFake

PD, IA = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT


async def test_a_privileged_token_named_like_a_user_has_no_wallet_of_its_own(server: Running) -> None:
    user = "alice"
    assert await credits(server, user) == FREE
    for n, role in enumerate(("service", "admin")):
        twin = auth(user, role)
        await expect_error(server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=twin),
                           PD, "USER_TOKEN_REQUIRED")
        for call in (
            server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=twin),
            server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=5, request_id=f"own-{role}"), metadata=twin),
            server.s.usage.Reserve(usage_pb2.ReserveRequest(amount_millicredits=5, request_id=f"hold-{role}"), metadata=twin),
            server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=twin),
        ):
            info = await expect_error(call, IA, "USER_ID_REQUIRED")
            assert info.metadata["field"] == "user_id"
        assert await credits(server, user) == FREE - 5 * n  # untouched
        # Named, the user is the one it acts for, as for any other user.
        r = await server.s.usage.Spend(
            usage_pb2.SpendRequest(user_id=user, amount_millicredits=5, request_id=f"named-{role}"), metadata=twin)
        assert r.credits_millicredits == await credits(server, user)
    assert await credits(server, user) == FREE - 10
    # The user's own token still reaches its own wallet without naming it.
    await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(user))


async def test_a_service_named_like_a_user_never_charges_that_users_card(
    stripe_server: Running, stripe_fake: StripeFake
) -> None:
    server, user = stripe_server, "carol"
    await buy(server, stripe_fake, user, 1_000)  # carol's card is saved
    charged, sessions = len(created_intents(stripe_fake)), len(stripe_fake.sessions)
    before = await credits(server, user)
    for role in ("service", "admin"):
        twin = auth(user, role)
        for call in (
            server.s.payments.TopUp(payments_pb2.TopUpRequest(amount_cents=1_000, request_id=f"t-{role}"), metadata=twin),
            server.s.payments.CreatePaymentLink(
                payments_pb2.CreatePaymentLinkRequest(amount_cents=1_000, request_id=f"l-{role}"), metadata=twin),
            server.s.refill.CreateSetupLink(refill_pb2.CreateSetupLinkRequest(request_id=f"s-{role}"), metadata=twin),
            server.s.refill.ConfigureAutoRefill(refill_pb2.ConfigureAutoRefillRequest(
                enabled=True, threshold_millicredits=10_000, amount_cents=1_000, request_id=f"c-{role}"), metadata=twin),
        ):
            await expect_error(call, PD, "USER_TOKEN_REQUIRED")
    await expect_error(server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(
        tier=common_pb2.TIER_PRO, request_id="u"), metadata=auth(user, "service")), PD, "ROLE_REQUIRED")
    await expect_error(server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(
        tier=common_pb2.TIER_ENTERPRISE, request_id="e"), metadata=auth(user, "admin")), IA, "USER_ID_REQUIRED")
    assert (len(created_intents(stripe_fake)), len(stripe_fake.sessions)) == (charged, sessions)
    assert await credits(server, user) == before
    r = await server.s.refill.GetAutoRefill(refill_pb2.GetAutoRefillRequest(), metadata=auth(user))
    assert not r.auto_refill.enabled
