"""AdminService and UsageService/RefundUsage: the role matrix, reversals
(at most once, with the revenue share, into the lots they came from),
refunds (partial, then the rest, never beyond the charge), adjustments below
zero, account flags and refill, and the audit trail written atomically."""

from __future__ import annotations

import json

import grpc
from flownexus.billing.v1 import admin_pb2, common_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

from server.db.schema import admin_actions, transfers
from server.ledger.ops import Call
from server.platform.clock import ManualClock
from server.refill import repository as refill_repo
from server.refill.models import ConfigState, PausedReason
from tests.calls import credits
from tests.harness import Running, auth, expect_error

FREE = 100_000
ADMIN = auth("ops", "admin")
SVC = auth("sandbox-runner", "service")
FP = grpc.StatusCode.FAILED_PRECONDITION


async def spend(server: Running, user: str, amount: int, rid: str, md=SVC, **kw) -> usage_pb2.SpendResponse:  # type: ignore[no-untyped-def]
    return await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id=user, amount_millicredits=amount, request_id=rid, **kw), metadata=md
    )


def refund_req(tid: str, amount: int, rid: str) -> usage_pb2.RefundUsageRequest:
    return usage_pb2.RefundUsageRequest(transaction_id=tid, amount_millicredits=amount, reason="bad run", request_id=rid)


async def audit_rows(server: Running) -> list[dict]:  # type: ignore[type-arg]
    assert server.app is not None
    async with server.read() as conn:
        return [dict(r) for r in (await conn.execute(select(admin_actions))).mappings().all()]


async def test_role_matrix(server: Running) -> None:
    s = server.s
    charge = await spend(server, "ann", 5_000, "c1")
    tid = charge.transaction.id
    adjust = admin_pb2.AdjustBalanceRequest(
        user_id="ann", amount_millicredits=1_000, reason="goodwill", lot=common_pb2.LOT_KIND_EARNED, request_id="a1"
    )
    for md in (auth("ann"), SVC):
        await expect_error(s.admin.AdjustBalance(adjust, metadata=md), grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
        await expect_error(
            s.admin.ReverseTransaction(admin_pb2.ReverseTransactionRequest(transaction_id=tid, reason="x", request_id="r"), metadata=md),
            grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED",
        )
        await expect_error(
            s.admin.SetAccountFlag(admin_pb2.SetAccountFlagRequest(user_id="ann", flag=1, reason="x", request_id="f"), metadata=md),
            grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED",
        )
        await expect_error(s.admin.ListAdminActions(admin_pb2.ListAdminActionsRequest(), metadata=md),
                           grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    # RefundUsage: never a user; a service only for its own charges; an admin for any.
    await expect_error(s.usage.RefundUsage(refund_req(tid, 1_000, "u"), metadata=auth("ann")),
                       grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    await expect_error(s.usage.RefundUsage(refund_req(tid, 1_000, "o"), metadata=auth("model-trainer", "service")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_CHARGED_BY_CALLER")
    own = await s.usage.RefundUsage(refund_req(tid, 1_000, "s"), metadata=SVC)
    assert own.refunded_millicredits == 1_000 and own.transaction.type == common_pb2.TRANSACTION_TYPE_USAGE_REFUND
    by_admin = await s.usage.RefundUsage(refund_req(tid, 1_000, "a"), metadata=ADMIN)
    assert by_admin.refunded_millicredits == 2_000
    ok = await s.admin.AdjustBalance(adjust, metadata=ADMIN)
    assert ok.transaction.type == common_pb2.TRANSACTION_TYPE_ADJUSTMENT and "goodwill" in ok.transaction.description
    assert await credits(server, "ann") == FREE - 5_000 + 2_000 + 1_000


async def test_reverse_twice_applies_once_and_a_reversal_is_not_reversible(server: Running) -> None:
    s = server.s
    charge = await spend(server, "bea", 30_000, "c1")
    req = admin_pb2.ReverseTransactionRequest(transaction_id=charge.transaction.id, reason="double charge", request_id="r1")
    first = await s.admin.ReverseTransaction(req, metadata=ADMIN)
    assert [t.amount_millicredits for t in first.transactions] == [30_000]
    assert first.transactions[0].type == common_pb2.TRANSACTION_TYPE_REVERSAL
    assert (await s.admin.ReverseTransaction(req, metadata=ADMIN)) == first  # the same request replays
    other = admin_pb2.ReverseTransactionRequest(transaction_id=charge.transaction.id, reason="again", request_id="r2")
    await expect_error(s.admin.ReverseTransaction(other, metadata=ADMIN), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REVERSED")
    assert await credits(server, "bea") == FREE
    back = admin_pb2.ReverseTransactionRequest(transaction_id=first.transactions[0].id, reason="undo", request_id="r3")
    await expect_error(s.admin.ReverseTransaction(back, metadata=ADMIN), FP, "NOT_REVERSIBLE")
    # Refunding a reversed charge is refused too.
    await expect_error(s.usage.RefundUsage(refund_req(charge.transaction.id, 1, "x"), metadata=SVC), FP, "TRANSACTION_REVERSED")
    assert len(await audit_rows(server)) == 1


async def test_reverse_a_spend_with_revenue_share(server: Running) -> None:
    s = server.s
    await s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
        user_id="cat", amount_millicredits=50_000, reason="promo", lot=common_pb2.LOT_KIND_PURCHASED, request_id="p"),
        metadata=ADMIN)
    charge = await spend(server, "cat", 120_000, "c1", app_id="app-1", publisher_user_id="pub")
    assert await credits(server, "pub") == FREE + 84_000
    # Reversing the share reverses the spend that paid it, and both come back once.
    assert server.app is not None
    async with server.read() as conn:
        share_id = (await conn.execute(select(transfers.c.id).where(transfers.c.kind == "revenue_share"))).scalar_one()
    r = await s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=str(share_id), reason="fraud", request_id="r1"), metadata=ADMIN)
    assert sorted(t.amount_millicredits for t in r.transactions) == [-84_000, 120_000]
    assert await credits(server, "cat") == FREE + 50_000
    assert await credits(server, "pub") == FREE
    await expect_error(s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=charge.transaction.id, reason="again", request_id="r2"),
        metadata=ADMIN), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REVERSED")
    # The credits went back to the lots they came from: allowance and purchased.
    lots = {(lot.kind, lot.remaining_millicredits) for lot in (await s.balance.GetBalance(
        __import__("flownexus.billing.v1.balance_pb2", fromlist=["x"]).GetBalanceRequest(user_id="cat"), metadata=ADMIN)).lots}
    assert (common_pb2.LOT_KIND_ALLOWANCE, FREE) in lots and (common_pb2.LOT_KIND_PURCHASED, 50_000) in lots
    (row,) = [a for a in await audit_rows(server) if a["action"] == "ReverseTransaction"]
    assert sorted(json.loads(row["transfer_ids"])) == sorted(int(t.id) for t in r.transactions)


async def test_purchases_and_allowances_are_not_reversible(server: Running) -> None:
    await spend(server, "dan", 1, "c1")
    assert server.app is not None
    async with server.read() as conn:
        grant = (await conn.execute(select(transfers.c.id).where(transfers.c.kind == "allowance_grant"))).scalar_one()
    await expect_error(server.s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=str(grant), reason="x", request_id="r"), metadata=ADMIN),
        FP, "NOT_REVERSIBLE")


async def test_partial_refund_then_full_never_beyond_the_charge(server: Running) -> None:
    s = server.s
    charge = await spend(server, "eve", 40_000, "c1")
    tid = charge.transaction.id
    part = await s.usage.RefundUsage(refund_req(tid, 15_000, "r1"), metadata=SVC)
    assert part.refunded_millicredits == 15_000 and part.credits_millicredits == FREE - 25_000
    assert (await s.usage.RefundUsage(refund_req(tid, 15_000, "r1"), metadata=SVC)) == part  # once per request_id
    info = await expect_error(s.usage.RefundUsage(refund_req(tid, 25_001, "r2"), metadata=SVC), FP, "REFUND_EXCEEDS_CHARGE")
    assert info.metadata["refundable_millicredits"] == "25000"
    rest = await s.usage.RefundUsage(refund_req(tid, 25_000, "r3"), metadata=SVC)
    assert rest.refunded_millicredits == 40_000 and rest.credits_millicredits == FREE
    await expect_error(s.usage.RefundUsage(refund_req(tid, 1, "r4"), metadata=SVC), FP, "REFUND_EXCEEDS_CHARGE")
    # A partly refunded charge is not reversed on top of its refunds.
    await expect_error(s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=tid, reason="x", request_id="r"), metadata=ADMIN),
        FP, "ALREADY_REFUNDED")


async def test_refund_takes_back_the_revenue_share_and_lowers_the_totals(server: Running) -> None:
    s = server.s
    charge = await spend(server, "fay", 10_001, "c1", app_id="app-1", publisher_user_id="pub2")
    tid = charge.transaction.id
    assert await credits(server, "pub2") == FREE + 7_000  # floor(10_001 * 70%)
    await s.usage.RefundUsage(refund_req(tid, 5_000, "r1"), metadata=SVC)
    assert await credits(server, "pub2") == FREE + 7_000 - 5_000 * 7_000 // 10_001
    await s.usage.RefundUsage(refund_req(tid, 5_001, "r2"), metadata=SVC)
    assert await credits(server, "pub2") == FREE  # the whole charge refunded: the whole share back
    admin = admin_pb2.GetAccountRequest(user_id="fay")
    fay = await s.admin.GetAccount(admin, metadata=ADMIN)
    pub = await s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id="pub2"), metadata=ADMIN)
    assert fay.spent_total_millicredits == 0 and pub.earned_total_millicredits == 0
    # A reversal lowers them too; and `verify` recomputes the same totals.
    other = await spend(server, "fay", 2_000, "c2", app_id="app-1", publisher_user_id="pub2")
    await s.admin.ReverseTransaction(
        admin_pb2.ReverseTransactionRequest(transaction_id=other.transaction.id, reason="x", request_id="rv"), metadata=ADMIN)
    fay = await s.admin.GetAccount(admin, metadata=ADMIN)
    assert fay.spent_total_millicredits == 0
    assert server.app is not None
    assert (await server.audit()).problems == []


async def test_refund_window(server: Running, clock: ManualClock) -> None:
    charge = await spend(server, "fay", 1_000, "c1")
    clock.advance(31 * 86_400)
    await expect_error(server.s.usage.RefundUsage(refund_req(charge.transaction.id, 1_000, "r"), metadata=SVC),
                       FP, "REFUND_WINDOW_CLOSED")


async def test_adjustment_below_zero_only_when_asked(server: Running) -> None:
    s = server.s
    req = admin_pb2.AdjustBalanceRequest(user_id="gus", amount_millicredits=-(FREE + 5_000), reason="chargeback", request_id="d1")
    await expect_error(s.admin.AdjustBalance(req, metadata=ADMIN), FP, "INSUFFICIENT_CREDITS")
    assert await audit_rows(server) == []  # refused: no audit row either
    req.allow_negative, req.request_id = True, "d2"
    r = await s.admin.AdjustBalance(req, metadata=ADMIN)
    assert r.credits_millicredits == -5_000 and r.transaction.amount_millicredits == -(FREE + 5_000)
    (row,) = await audit_rows(server)
    assert row["actor"] == "ops" and row["reason"] == "chargeback" and json.loads(row["transfer_ids"]) == [int(r.transaction.id)]
    listed = await s.admin.ListAdminActions(admin_pb2.ListAdminActionsRequest(user_id="gus"), metadata=ADMIN)
    assert [a.transaction_ids for a in listed.actions] == [[r.transaction.id]]


async def test_clearing_the_flag_resumes_a_refill_paused_for_it(server: Running) -> None:
    s, user = server.s, "hal"
    assert server.app is not None
    await spend(server, user, 1, "c1")
    await server.submit(Call(fn=lambda tx: _config(tx, user), accounts=set()))
    flag = await s.admin.SetAccountFlag(
        admin_pb2.SetAccountFlagRequest(user_id=user, flag=1, reason="suspected fraud", request_id="f1"), metadata=ADMIN)
    assert "suspected fraud" in flag.flagged_reason
    assert (await _state(server, user)) == (ConfigState.PAUSED, PausedReason.ACCOUNT_FLAGGED)
    await s.admin.ClearAccountFlag(
        admin_pb2.ClearAccountFlagRequest(user_id=user, flag=1, reason="cleared", request_id="f2"), metadata=ADMIN)
    assert (await _state(server, user)) == (ConfigState.ACTIVE, "")
    await expect_error(s.admin.ClearAccountFlag(
        admin_pb2.ClearAccountFlagRequest(user_id=user, flag=1, reason="again", request_id="f3"), metadata=ADMIN),
        FP, "ACCOUNT_NOT_FLAGGED")
    assert sorted(a["action"] for a in await audit_rows(server)) == ["ClearAccountFlag", "SetAccountFlag"]


async def _config(tx, user: str) -> None:  # type: ignore[no-untyped-def]
    cfg = await refill_repo.config(tx, user)
    refill_repo.save_config(tx, cfg, user, enabled=True, threshold=10_000, amount_cents=1000, state=ConfigState.ACTIVE)


async def _state(server: Running, user: str) -> tuple[str, str]:
    from server.db.schema import refill_configs

    assert server.app is not None
    async with server.read() as conn:
        row = (await conn.execute(select(refill_configs.c.state, refill_configs.c.paused_reason)
                                  .where(refill_configs.c.user_id == user))).one()
    return row[0], row[1]


async def test_audit_row_and_change_commit_together(server: Running, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The audit row is written in the change's own database transaction. When
    the audit row cannot be written (here: its id already taken, a unique
    violation at commit), the adjustment it records is not committed either;
    written normally, both are there."""
    assert server.app is not None
    import server.admin.service as admin_service

    taken = "0" * 32
    async with server.app.db.writer.begin() as conn:
        await conn.execute(admin_actions.insert().values(
            id=f"adm_{taken}", actor="x", action="SetAccountFlag", user_id="other", reason="r", request_id="r",
            details="{}", transfer_ids="[]", created_at_us=0))
    monkeypatch.setattr(admin_service.uuid, "uuid4", lambda: type("U", (), {"hex": taken})())
    req = admin_pb2.AdjustBalanceRequest(
        user_id="ivy", amount_millicredits=1_000, reason="goodwill", request_id="a1",
        lot=common_pb2.LOT_KIND_EARNED)
    try:
        await server.s.admin.AdjustBalance(req, metadata=ADMIN)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE  # retryable: nothing was applied
    else:
        raise AssertionError("the adjustment committed without its audit row")
    assert [a["user_id"] for a in await audit_rows(server)] == ["other"]
    async with server.read() as conn:
        assert (await conn.execute(select(transfers.c.id).where(transfers.c.kind == "adjustment"))).first() is None
    assert await credits(server, "ivy") == FREE

    monkeypatch.undo()
    await server.s.admin.AdjustBalance(req, metadata=ADMIN)
    assert sorted(a["user_id"] for a in await audit_rows(server)) == ["ivy", "other"]
    assert await credits(server, "ivy") == FREE + 1_000


async def _seed_refill_and_payments(tx, user: str) -> None:  # type: ignore[no-untyped-def]
    from server.payments import repository as pay_repo
    from server.payments.webhooks import mark_paid

    now = tx.now_us
    await _config(tx, user)
    paid = await pay_repo.insert_payment(tx, pay_repo.new_payment(
        f"pay_{user}_0", user, "checkout", 1000, 1_000_000, now, checkout_session_id="cs_0", payment_intent_id="pi_0",
        charge_id="ch_0"))
    await mark_paid(tx, paid)  # granted, as a completed checkout is
    await pay_repo.insert_payment(tx, pay_repo.new_payment(
        f"pay_{user}_1", user, "auto_refill", 1000, 1_000_000, now + 1, status="failed", payment_intent_id="pi_1",
        charge_id="ch_1", failure_reason="card_declined"))
    refill_repo.add_job_unless_in_flight(tx, {
        "id": f"rj_{user}", "user_id": user, "status": "retry_scheduled", "amount_cents": 1000, "credits": 1_000_000,
        "attempts": 1, "payment_id": f"pay_{user}_1", "next_run_at_us": now + 3_600_000_000, "lease_until_us": 0,
        "last_error": "card_declined", "created_at_us": now, "updated_at_us": now,
    })


async def test_get_account_shows_one_screen_to_admins_only(server: Running) -> None:
    from flownexus.billing.v1 import payments_pb2, refill_pb2, tier_pb2
    from google.protobuf.duration_pb2 import Duration

    s, user = server.s, "joy"
    assert server.app is not None
    # Unknown users are NOT_FOUND, and asking does not create a wallet.
    await expect_error(s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=user), metadata=ADMIN),
                       grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    await spend(server, user, 10_000, "c1")
    await s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
        user_id=user, amount_millicredits=7_000, reason="promo", lot=common_pb2.LOT_KIND_EARNED, request_id="a1"),
        metadata=ADMIN)
    hold = (await s.usage.Reserve(usage_pb2.ReserveRequest(
        user_id=user, amount_millicredits=3_000, request_id="h1", category="sandbox", ttl=Duration(seconds=600)),
        metadata=SVC)).hold
    await server.submit(Call(fn=lambda tx: _seed_refill_and_payments(tx, user), accounts=set()))
    await s.admin.SetAccountFlag(
        admin_pb2.SetAccountFlagRequest(user_id=user, flag=1, reason="chargeback", request_id="f1"), metadata=ADMIN)

    for md in (auth(user), SVC):
        await expect_error(s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=user), metadata=md),
                           grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    a = await s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=user), metadata=ADMIN)
    assert a.user_id == user
    assert a.credits_millicredits == FREE - 10_000 + 7_000 - 3_000 + 1_000_000 and a.pending_millicredits == 3_000
    assert a.spent_total_millicredits == 10_000 and not a.unlimited_overdraft
    assert [(lot.kind, lot.remaining_millicredits) for lot in a.lots] == [
        (common_pb2.LOT_KIND_ALLOWANCE, FREE - 13_000), (common_pb2.LOT_KIND_EARNED, 7_000),
        (common_pb2.LOT_KIND_PURCHASED, 1_000_000)]
    assert [(h.id, h.amount_millicredits, h.status) for h in a.active_holds] == [
        (hold.id, 3_000, usage_pb2.HOLD_STATUS_ACTIVE)]
    assert "chargeback" in a.flagged_reason
    assert a.tier == common_pb2.TIER_FREE and a.subscription_status == tier_pb2.SUBSCRIPTION_STATUS_NONE
    assert a.period_end.ToMicroseconds() > a.period_start.ToMicroseconds()
    assert a.auto_refill.enabled and a.auto_refill.threshold_millicredits == 10_000
    assert a.auto_refill.state == refill_pb2.AUTO_REFILL_STATE_PAUSED and a.auto_refill.paused_reason == "ACCOUNT_FLAGGED"
    assert [(r.id, r.status, r.attempts, r.payment_id, r.last_error) for r in a.refill_attempts] == [
        (f"rj_{user}", "retry_scheduled", 1, f"pay_{user}_1", "card_declined")]
    assert [(p.payment.id, p.payment.kind, p.payment.status) for p in a.payments] == [
        (f"pay_{user}_1", payments_pb2.PAYMENT_KIND_AUTO_REFILL, payments_pb2.PAYMENT_STATUS_FAILED),
        (f"pay_{user}_0", payments_pb2.PAYMENT_KIND_CHECKOUT, payments_pb2.PAYMENT_STATUS_PAID)]
    newest, oldest = a.payments
    assert (newest.checkout_session_id, newest.payment_intent_id, newest.charge_id) == ("", "pi_1", "ch_1")
    assert not newest.HasField("paid_time") and newest.payment.failure_reason == "card_declined"
    assert (oldest.checkout_session_id, oldest.payment_intent_id, oldest.charge_id) == ("cs_0", "pi_0", "ch_0")
    assert oldest.HasField("paid_time")
    # Bad input is refused before any read.
    await expect_error(s.admin.GetAccount(admin_pb2.GetAccountRequest(), metadata=ADMIN),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")


async def test_promotional_credits_expire_at_their_instant_on_reads_and_by_the_job(
    server: Running, clock: ManualClock
) -> None:
    """Credits granted with an expiry are gone at that instant: a balance read
    rolls them over, and so does the job for a wallet nobody reads or writes."""
    ends = clock.now_us() + 86_400_000_000
    for user in ("pia", "quin"):
        await server.s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
            user_id=user, amount_millicredits=7_000, reason="launch promo", lot=common_pb2.LOT_KIND_EARNED,
            expires_at=Timestamp(seconds=ends // 1_000_000), request_id=f"promo-{user}"), metadata=ADMIN)
    clock.set_us(ends - 1)
    assert await credits(server, "pia") == FREE + 7_000
    clock.set_us(ends)
    assert await credits(server, "pia") == FREE  # a read, no write in between

    assert server.app is not None
    await server.run_jobs()
    async with server.read() as conn:
        kinds = (await conn.execute(
            select(transfers.c.kind, transfers.c.amount).where(transfers.c.debit_account == "wallet:quin")
        )).all()
    assert ("allowance_expiry", 7_000) in [tuple(k) for k in kinds]
    assert await credits(server, "quin") == FREE
