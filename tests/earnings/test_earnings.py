"""Earnings: awards (roles, dedupe, daily caps), revenue share, user stats, lot order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
from flownexus.billing.v1 import common_pb2, earnings_pb2, usage_pb2

from server.ledger.model import SYSTEM_STRIPE, Kind, LotKind, wallet_id
from server.ledger.ops import Call
from tests.calls import balance
from tests.harness import auth, expect_error

FREE = 100_000
CHALLENGE = common_pb2.EARNING_SOURCE_CHALLENGE


def award(user: str, amount: int, ref: str, rid: str, source: int = CHALLENGE) -> earnings_pb2.AwardCreditsRequest:
    return earnings_pb2.AwardCreditsRequest(
        user_id=user, amount_millicredits=amount, source=source, source_ref=ref, request_id=rid, reason="test"
    )


async def buy(server, user: str, amount: int, key: str) -> None:  # type: ignore[no-untyped-def]
    """A purchased lot, made by a direct ledger operation (as the payments webhook would)."""

    async def fn(tx):  # type: ignore[no-untyped-def]
        await tx.wallet(user)
        await tx.transfer(SYSTEM_STRIPE, wallet_id(user), amount, kind=Kind.PURCHASE, key=key,
                          lot_kind=LotKind.PURCHASED)

    await server.submit(Call(fn=fn, accounts={wallet_id(user), SYSTEM_STRIPE}))


async def test_award_roles_dedupe_and_self_award(server) -> None:
    svc = auth("challenge-engine", "service")
    r = await server.s.earnings.AwardCredits(award("ann", 5_000, "ch-1", "a1"), metadata=svc)
    assert r.credits_millicredits == FREE + 5_000
    # The same challenge ref again (another request_id): credited once.
    await expect_error(
        server.s.earnings.AwardCredits(award("ann", 5_000, "ch-1", "a2"), metadata=svc),
        grpc.StatusCode.ALREADY_EXISTS, "ALREADY_AWARDED",
    )
    # The same request_id replays the first answer.
    assert await server.s.earnings.AwardCredits(award("ann", 5_000, "ch-1", "a1"), metadata=svc) == r
    await expect_error(
        server.s.earnings.AwardCredits(award("ann", 5_000, "ch-2", "a3"), metadata=auth("ann")),
        grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED",
    )
    await expect_error(
        server.s.earnings.AwardCredits(award("bob", 5_000, "ch-3", "a4"), metadata=auth("bob")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Whatever the role, nobody awards themselves.
    await expect_error(
        server.s.earnings.AwardCredits(award("boss", 5_000, "ch-4", "a5"), metadata=auth("boss", "admin")),
        grpc.StatusCode.PERMISSION_DENIED, "SELF_AWARD",
    )
    b = await balance(server, "ann")
    assert b.credits_millicredits == FREE + 5_000
    assert [(lot.kind, lot.remaining_millicredits) for lot in b.lots] == [
        (common_pb2.LOT_KIND_ALLOWANCE, FREE), (common_pb2.LOT_KIND_EARNED, 5_000)
    ]


async def test_daily_cap_per_source_is_race_free(server) -> None:
    server.clock.set(datetime(2031, 3, 10, 9, 0, tzinfo=UTC))
    svc = auth("svc", "service")
    cap = server.settings.award_daily_limit_challenge * 1000
    # 20 concurrent awards of a tenth of the cap each: exactly 10 fit.
    results = await asyncio.gather(
        *(server.s.earnings.AwardCredits(award("cat", cap // 10, f"c{i}", f"r{i}"), metadata=svc) for i in range(20)),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 10 and len(refused) == 10
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    info = await expect_error(
        server.s.earnings.AwardCredits(award("cat", 1, "c-more", "r-more"), metadata=svc),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_AWARD_LIMIT",
    )
    assert info.metadata["limit_millicredits"] == str(cap)
    assert info.metadata["remaining_millicredits"] == "0"
    # Other sources have their own cap.
    await server.s.earnings.AwardCredits(
        award("cat", 1_000, "ref-1", "ref-1", common_pb2.EARNING_SOURCE_REFERRAL), metadata=svc
    )
    # A new UTC day opens the cap again.
    server.clock.set(datetime(2031, 3, 11, 0, 0, 1, tzinfo=UTC))
    await server.s.earnings.AwardCredits(award("cat", cap, "c-next", "r-next"), metadata=svc)
    stats = await server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(), metadata=auth("cat"))
    assert stats.credits_earned_millicredits == cap + 1_000 + cap
    assert stats.challenges_completed == 11


async def test_revenue_share_split_is_exact(server) -> None:
    svc = auth("app-store", "service")
    # 70% of 1,001 is 700.7: the publisher gets 700 (rounded down), the platform keeps 301.
    r = await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="buyer", amount_millicredits=1_001, request_id="s1", app_id="app-1",
                               publisher_user_id="pub", category="app"),
        metadata=svc,
    )
    assert r.credits_millicredits == FREE - 1_001
    # A replay pays nothing twice.
    again = await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="buyer", amount_millicredits=1_001, request_id="s1", app_id="app-1",
                               publisher_user_id="pub", category="app"),
        metadata=svc,
    )
    assert again == r
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="buyer", amount_millicredits=3, request_id="s2", app_id="app-2",
                               publisher_user_id="pub"),
        metadata=svc,
    )
    pub = await balance(server, "pub")
    assert pub.credits_millicredits == FREE + 700 + 2  # 70% of 3 = 2.1 -> 2
    assert [lot.kind for lot in pub.lots] == [common_pb2.LOT_KIND_ALLOWANCE, common_pb2.LOT_KIND_EARNED]
    stats = await server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(user_id="pub"), metadata=svc)
    assert stats.apps_published == 2
    assert stats.app_revenue_millicredits == 702
    assert stats.credits_earned_millicredits == 702
    buyer = await server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(), metadata=auth("buyer"))
    assert buyer.credits_spent_millicredits == 1_004
    # A publisher never earns from their own spend.
    await expect_error(
        server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=10, request_id="self", app_id="app-1", publisher_user_id="pub"),
            metadata=auth("pub"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "SELF_REVENUE_SHARE",
    )


async def test_capture_pays_the_publisher_once(server) -> None:
    svc = auth("runner", "service")
    hold = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(user_id="u", amount_millicredits=10_000, request_id="h1"), metadata=svc
    )
    req = usage_pb2.CaptureRequest(hold_id=hold.hold.id, amount_millicredits=9_999, request_id="c1",
                                   app_id="tmpl-1", publisher_user_id="author")
    await server.s.usage.Capture(req, metadata=svc)
    await server.s.usage.Capture(req, metadata=svc)
    assert (await balance(server, "author")).credits_millicredits == FREE + 9_999 * 70 // 100


async def test_user_token_cannot_pay_a_revenue_share(server) -> None:
    """Throwaway accounts must not turn their expiring free credits into a
    collector's lasting earned credits: only a service or admin vouches for an app."""
    spender = auth("throwaway")
    for rpc, req in (
        (server.s.usage.Spend, usage_pb2.SpendRequest(amount_millicredits=50_000, request_id="farm",
                                                      app_id="app-x", publisher_user_id="collector")),
        (server.s.usage.Spend, usage_pb2.SpendRequest(user_id="throwaway", amount_millicredits=50_000,
                                                      request_id="farm2", app_id="app-x",
                                                      publisher_user_id="collector")),
    ):
        info = await expect_error(rpc(req, metadata=spender), grpc.StatusCode.PERMISSION_DENIED, "REVENUE_SHARE_NOT_ALLOWED")
        assert info.metadata["role"] == "user"
    hold = await server.s.usage.Reserve(
        usage_pb2.ReserveRequest(amount_millicredits=10_000, request_id="h1"), metadata=spender
    )
    await expect_error(
        server.s.usage.Capture(
            usage_pb2.CaptureRequest(hold_id=hold.hold.id, amount_millicredits=10_000, request_id="c1",
                                     app_id="app-x", publisher_user_id="collector"),
            metadata=spender,
        ),
        grpc.StatusCode.PERMISSION_DENIED, "REVENUE_SHARE_NOT_ALLOWED",
    )
    # Nothing moved: the spender keeps its credits (bar the hold), the collector earned nothing.
    assert (await balance(server, "throwaway")).credits_millicredits == FREE - 10_000
    collector = await balance(server, "collector")
    assert collector.credits_millicredits == FREE
    assert [lot.kind for lot in collector.lots] == [common_pb2.LOT_KIND_ALLOWANCE]
    # The same spend without a publisher is the user's own business.
    ok = await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="plain"), metadata=spender)
    assert ok.credits_millicredits == FREE - 10_001
    # An admin may vouch for the app.
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="throwaway", amount_millicredits=1_000, request_id="adm", app_id="app-x",
                               publisher_user_id="collector"),
        metadata=auth("ops", "admin"),
    )
    assert (await balance(server, "collector")).credits_millicredits == FREE + 700


async def test_spending_order_allowance_then_earned_then_purchased(server) -> None:
    svc = auth("svc", "service")
    await server.s.earnings.AwardCredits(award("dora", 20_000, "ch-x", "w1"), metadata=svc)
    await buy(server, "dora", 50_000, "test-purchase:dora")
    kinds = [common_pb2.LOT_KIND_ALLOWANCE, common_pb2.LOT_KIND_EARNED, common_pb2.LOT_KIND_PURCHASED]
    b = await balance(server, "dora")
    assert [(lot.kind, lot.remaining_millicredits) for lot in b.lots] == list(zip(kinds, [FREE, 20_000, 50_000], strict=True))
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=90_000, request_id="x1"), metadata=auth("dora"))
    b = await balance(server, "dora")
    assert [(lot.kind, lot.remaining_millicredits) for lot in b.lots] == [(kinds[0], 10_000), (kinds[1], 20_000), (kinds[2], 50_000)]
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=25_000, request_id="x2"), metadata=auth("dora"))
    b = await balance(server, "dora")
    assert [(lot.kind, lot.remaining_millicredits) for lot in b.lots] == [(kinds[1], 5_000), (kinds[2], 50_000)]


async def test_apps_published_counts_each_app_once_however_it_earned(server) -> None:
    """Published = distinct app ids with a revenue share or an APP_USAGE award."""
    svc = auth("app-store", "service")

    async def share(app: str, rid: str) -> None:
        await server.s.usage.Spend(
            usage_pb2.SpendRequest(user_id="fan", amount_millicredits=100, request_id=rid, app_id=app,
                                   publisher_user_id="maker"),
            metadata=svc,
        )

    async def app_usage(app: str, rid: str) -> None:
        await server.s.earnings.AwardCredits(
            earnings_pb2.AwardCreditsRequest(user_id="maker", amount_millicredits=1_000, reason="usage",
                                             source=common_pb2.EARNING_SOURCE_APP_USAGE, source_ref=app,
                                             request_id=rid),
            metadata=svc,
        )

    async def published() -> int:
        r = await server.s.earnings.GetUserStats(earnings_pb2.GetUserStatsRequest(user_id="maker"), metadata=svc)
        return int(r.apps_published)

    assert await published() == 0
    await app_usage("app-usage-only", "u1")  # earned only through APP_USAGE awards
    assert await published() == 1
    await share("app-share-only", "s1")
    await share("app-share-only", "s2")
    assert await published() == 2
    await share("app-both", "s3")
    await app_usage("app-both", "u2")
    assert await published() == 3
    # A challenge award or a referral is no app.
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(user_id="maker", amount_millicredits=1_000, reason="won",
                                         source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref="ch-1",
                                         request_id="c1"),
        metadata=svc,
    )
    assert await published() == 3
