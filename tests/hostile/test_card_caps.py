"""Card charges made by users (TopUp and payment links) have a per-account
daily and monthly cap, as auto-refill has one, and are refused on a flagged
account: no Stripe call is made for a refused charge. A retry of an
accepted request is still answered. SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import admin_pb2, payments_pb2

from server.platform.clock import ManualClock
from tests.calls import DAY_S
from tests.harness import Running, auth, expect_error, serving
from tests.payments.test_topup import buy, created_intents, top_up
from tests.stripe_fake import StripeFake
from tests.stripe_fixtures import stripe_settings

RE, FP = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION


async def _link(server: Running, user: str, cents: int, rid: str) -> payments_pb2.CreatePaymentLinkResponse:
    return await server.s.payments.CreatePaymentLink(
        payments_pb2.CreatePaymentLinkRequest(amount_cents=cents, request_id=rid), metadata=auth(user))


async def test_user_card_charges_stop_at_the_daily_and_monthly_caps(
    db_url: str, clock: ManualClock, stripe_fake: StripeFake
) -> None:
    async with serving(db_url, clock, **stripe_settings(stripe_fake), user_card_daily_cap_cents=5_000,
                       user_card_monthly_cap_cents=8_000) as server:
        user = "spender"
        await buy(server, stripe_fake, user, 1_000)  # a paid link counts: 1,000 today
        first = await top_up(server, user, 2_000, "t1")  # 3,000
        charged = len(created_intents(stripe_fake))
        info = await expect_error(top_up(server, user, 3_000, "t2"), RE, "CARD_CHARGE_CAP_REACHED")
        assert info.metadata["period"] == "day" and info.metadata["cap_cents"] == "5000"
        assert info.metadata["used_cents"] == "3000"
        await expect_error(_link(server, user, 3_000, "l1"), RE, "CARD_CHARGE_CAP_REACHED")
        assert len(created_intents(stripe_fake)) == charged  # Stripe was not called
        assert await top_up(server, user, 2_000, "t1") == first  # a retry is still answered
        await top_up(server, user, 2_000, "t3")  # exactly at the cap: 5,000
        # Another account has caps of its own.
        await buy(server, stripe_fake, "neighbour", 1_000)
        # The next day, the month's cap: 5,000 so far of 8,000.
        server.clock.advance(DAY_S)
        await top_up(server, user, 3_000, "t4")
        info = await expect_error(top_up(server, user, 1_000, "t5"), RE, "CARD_CHARGE_CAP_REACHED")
        assert info.metadata["period"] == "month" and info.metadata["used_cents"] == "8000"


async def test_a_flagged_account_is_not_charged(stripe_server: Running, stripe_fake: StripeFake) -> None:
    server, user = stripe_server, "disputed"
    await buy(server, stripe_fake, user, 1_000)
    await server.s.admin.SetAccountFlag(admin_pb2.SetAccountFlagRequest(
        user_id=user, flag=admin_pb2.ACCOUNT_FLAG_DISPUTED, reason="chargeback", request_id="f"),
        metadata=auth("ops", "admin"))
    charged = len(created_intents(stripe_fake))
    sessions = len(stripe_fake.sessions)
    await expect_error(top_up(server, user, 1_000, "t"), FP, "ACCOUNT_FLAGGED")
    await expect_error(_link(server, user, 1_000, "l"), FP, "ACCOUNT_FLAGGED")
    assert (len(created_intents(stripe_fake)), len(stripe_fake.sessions)) == (charged, sessions)
    await server.s.admin.ClearAccountFlag(admin_pb2.ClearAccountFlagRequest(
        user_id=user, flag=admin_pb2.ACCOUNT_FLAG_DISPUTED, reason="won", request_id="c"), metadata=auth("ops", "admin"))
    await top_up(server, user, 1_000, "t")
