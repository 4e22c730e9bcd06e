"""Reversing a promotional grant after part of it expired takes back only
what is left of it: the expired part went back to the system when the lot
ended, and is never taken again out of the user's other lots."""

from __future__ import annotations

import grpc
import pytest
from flownexus.billing.v1 import admin_pb2, common_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from tests.calls import DAY_S, FREE, credits, spend
from tests.harness import Running, auth, expect_error

ADMIN = auth("ops", "admin")


async def _grant(server: Running, user: str, amount: int, rid: str, *, lot: int, expires_us: int = 0) -> str:
    req = admin_pb2.AdjustBalanceRequest(user_id=user, amount_millicredits=amount, reason="promo", lot=lot, request_id=rid)
    if expires_us:
        req.expires_at.CopyFrom(Timestamp(seconds=expires_us // 1_000_000))
    return (await server.s.admin.AdjustBalance(req, metadata=ADMIN)).transaction.id


async def _reverse(server: Running, tid: str, rid: str) -> admin_pb2.ReverseTransactionResponse:
    return await server.s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=tid, reason="granted in error", request_id=rid), metadata=ADMIN)


@pytest.mark.parametrize("expired_before", [False, True], ids=["expires-with-the-reversal", "expired-earlier"])
async def test_reversal_takes_back_only_what_is_left_of_the_grant(server: Running, expired_before: bool) -> None:
    user = "promo"
    ends = server.clock.now_us() + DAY_S * 1_000_000
    promo = await _grant(server, user, 50_000, "g1", lot=common_pb2.LOT_KIND_EARNED, expires_us=ends)
    await _grant(server, user, 30_000, "g2", lot=common_pb2.LOT_KIND_PURCHASED)
    # The allowance first, then 20,000 of the promotional lot: 30,000 of it are left to expire.
    await spend(server, user, FREE + 20_000, "s1")
    assert await credits(server, user) == 60_000
    server.clock.advance(2 * DAY_S)
    if expired_before:
        await spend(server, user, 1, "s2")  # the lot expires with this write
        assert await credits(server, user) == 30_000 - 1
    r = await _reverse(server, promo, "rev")
    # What is left of the grant (the 20,000 spent) comes back out; the purchased lot pays it.
    assert [t.amount_millicredits for t in r.transactions] == [-20_000]  # as the wallet sees it
    assert await credits(server, user) == 30_000 - 20_000 - (1 if expired_before else 0)
    # Once reversed, never again.
    await expect_error(_reverse(server, promo, "rev2"), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REVERSED")


async def test_two_grants_in_one_lot_excuse_no_more_than_it_expired(server: Running) -> None:
    user = "twice"
    ends = server.clock.now_us() + DAY_S * 1_000_000
    a = await _grant(server, user, 10_000, "a", lot=common_pb2.LOT_KIND_EARNED, expires_us=ends)
    b = await _grant(server, user, 10_000, "b", lot=common_pb2.LOT_KIND_EARNED, expires_us=ends)
    await _grant(server, user, 50_000, "p", lot=common_pb2.LOT_KIND_PURCHASED)
    await spend(server, user, FREE + 5_000, "s")  # 15,000 of the shared lot expire
    server.clock.advance(2 * DAY_S)
    # Credits are spent oldest grant first: the 5,000 spent were the first
    # grant's, and the 15,000 expired the rest of it and all of the second.
    # In either order, the two reversals take back the 5,000 spent, once.
    await expect_error(_reverse(server, b, "rb"), grpc.StatusCode.FAILED_PRECONDITION, "GRANT_EXPIRED")
    first = await _reverse(server, a, "ra")
    assert first.transactions[0].amount_millicredits == -5_000
    assert await credits(server, user) == 50_000 - 5_000


async def test_a_wholly_expired_grant_has_nothing_to_reverse(server: Running) -> None:
    user = "gone"
    ends = server.clock.now_us() + DAY_S * 1_000_000
    promo = await _grant(server, user, 7_000, "g", lot=common_pb2.LOT_KIND_EARNED, expires_us=ends)
    server.clock.advance(2 * DAY_S)
    await expect_error(_reverse(server, promo, "rev"), grpc.StatusCode.FAILED_PRECONDITION, "GRANT_EXPIRED")
    assert await credits(server, user) == FREE
