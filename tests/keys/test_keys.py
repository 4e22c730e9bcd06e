"""Scoped keys: who may make them, what a key's secret may do, revocation on
the very next call, bad input, attribution in history, events and the audit."""

from __future__ import annotations

import asyncio

import grpc
from flownexus.billing.v1 import (
    admin_pb2,
    balance_pb2,
    history_pb2,
    keys_pb2,
    payments_pb2,
    refill_pb2,
    tier_pb2,
    usage_pb2,
)
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import update

from server.db.schema import key_usage
from server.platform.metrics import METRICS
from tests.harness import Running, auth, error_info, expect_error
from tests.keys.helpers import (
    ADMIN,
    CREDIT,
    DAY,
    HOUR,
    LIFETIME,
    MONTH,
    SERVICE,
    bearer,
    create_key,
    fund,
    keys_stub,
    spend_req,
)


def _key_req(budgets: list[tuple[int, int]], *, label: str = "agent", request_id: str = "k", **fields: object
             ) -> keys_pb2.CreateKeyRequest:
    return keys_pb2.CreateKeyRequest(
        label=label, budgets=[keys_pb2.Budget(window=w, limit_millicredits=v) for w, v in budgets],
        request_id=request_id, **fields,  # type: ignore[arg-type]
    )


async def test_a_revoked_key_is_refused_on_its_very_next_call(server: Running) -> None:
    await fund(server, "amy", 1_000 * CREDIT)
    made = await create_key(server, "amy", [(DAY, 500 * CREDIT)])
    md = bearer(made.secret)
    await server.s.usage.Spend(spend_req(1 * CREDIT, "a1"), metadata=md)
    revoked = await keys_stub(server).RevokeKey(
        keys_pb2.RevokeKeyRequest(key_id=made.key.id, request_id="rv"), metadata=auth("amy"))
    assert revoked.key.HasField("revoke_time")
    await expect_error(server.s.usage.Spend(spend_req(1 * CREDIT, "a2"), metadata=md),
                       grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    await expect_error(server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=md),
                       grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    # A service naming the revoked key is refused in the ledger, under the key's lock.
    await expect_error(
        server.s.usage.Spend(spend_req(1 * CREDIT, "a3", user_id="amy", key_id=made.key.id), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED",
    )
    await expect_error(server.s.usage.Spend(spend_req(1 * CREDIT, "a4"), metadata=bearer(made.secret + "x")),
                       grpc.StatusCode.UNAUTHENTICATED, "INVALID_KEY")


async def test_once_revoked_no_concurrent_spend_through_the_key_passes(server: Running) -> None:
    """Spends racing a revocation may land before it; every one sent after it
    answered is refused, by the secret's lookup and by the ledger alike."""
    await fund(server, "ari", 10_000 * CREDIT)
    made = await create_key(server, "ari", [(DAY, 5_000 * CREDIT)])
    kid = made.key.id
    racing = [server.s.usage.Spend(spend_req(1 * CREDIT, f"s{i}", user_id="ari", key_id=kid), metadata=SERVICE)
              for i in range(30)]
    revoke = keys_stub(server).RevokeKey(keys_pb2.RevokeKeyRequest(key_id=kid, request_id="rv"), metadata=auth("ari"))
    await asyncio.gather(*racing[:15], revoke, *racing[15:], return_exceptions=True)
    after = await asyncio.gather(*(
        server.s.usage.Spend(spend_req(1 * CREDIT, f"t{i}", user_id="ari", key_id=kid), metadata=SERVICE)
        for i in range(20)
    ), *(server.s.usage.Spend(spend_req(1 * CREDIT, f"k{i}"), metadata=bearer(made.secret)) for i in range(20)),
        return_exceptions=True)
    reasons = [error_info(r).reason for r in after if isinstance(r, grpc.aio.AioRpcError)]
    assert reasons == ["KEY_REVOKED"] * 40


async def test_key_hygiene(server: Running) -> None:
    await fund(server, "ben", 1_000 * CREDIT)
    made = await create_key(server, "ben", [(DAY, 500 * CREDIT)])
    md = bearer(made.secret)
    keys = keys_stub(server)
    # A key cannot create keys, buy credits, change auto-refill or tiers, or act as an admin.
    for call in (
        keys.CreateKey(_key_req([(DAY, 1)]), metadata=md),
        keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=made.key.id, request_id="x"), metadata=md),
        keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=md),
        server.s.payments.CreatePaymentLink(payments_pb2.CreatePaymentLinkRequest(amount_cents=1000, request_id="p"),
                                            metadata=md),
        server.s.payments.TopUp(payments_pb2.TopUpRequest(amount_cents=1000, request_id="t"), metadata=md),
        server.s.refill.ConfigureAutoRefill(refill_pb2.ConfigureAutoRefillRequest(request_id="r"), metadata=md),
        server.s.tier.UpgradeTier(tier_pb2.UpgradeTierRequest(request_id="u"), metadata=md),
        server.s.usage.RefundUsage(usage_pb2.RefundUsageRequest(transaction_id="1", amount_millicredits=1,
                                                                request_id="f"), metadata=md),
        server.s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id="ben"), metadata=md),
    ):
        info = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "KEY_NOT_ALLOWED")
        assert info.metadata["key_id"] == made.key.id
    # ... nor reach another wallet, nor spend as another key.
    await fund(server, "cat", 1_000 * CREDIT)
    await expect_error(server.s.usage.Spend(spend_req(1, "o1", user_id="cat"), metadata=md),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    await expect_error(server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id="cat"), metadata=md),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    other = await create_key(server, "ben", [(DAY, 500 * CREDIT)])
    await expect_error(server.s.usage.Spend(spend_req(1, "o2", key_id=other.key.id), metadata=md),
                       grpc.StatusCode.PERMISSION_DENIED, "KEY_MISMATCH")
    await expect_error(keys.GetKey(keys_pb2.GetKeyRequest(key_id=other.key.id), metadata=md),
                       grpc.StatusCode.PERMISSION_DENIED, "KEY_NOT_ALLOWED")
    # It may spend, and read its own key and its wallet's balance and history.
    await server.s.usage.Spend(spend_req(2 * CREDIT, "ok"), metadata=md)
    assert (await keys.GetKey(keys_pb2.GetKeyRequest(key_id=made.key.id), metadata=md)).key.budgets[0].used_millicredits \
        == 2 * CREDIT
    bal = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=md)
    assert bal.user_id == "ben"
    txs = (await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=md)).transactions
    assert txs[0].key_id == made.key.id
    # A user cannot create, change or revoke keys on another user's wallet; a service cannot create keys.
    await expect_error(keys.CreateKey(_key_req([(DAY, 1)], user_id="ben"), metadata=auth("cat")),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ACCOUNT")
    await expect_error(keys.CreateKey(_key_req([(DAY, 1)], user_id="ben"), metadata=SERVICE),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_KEY")
    await expect_error(keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=made.key.id, request_id="x"), metadata=auth("cat")),
                       grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")
    # An admin may create a key on any wallet.
    by_admin = await keys.CreateKey(_key_req([(DAY, 1)], user_id="cat", request_id="a"), metadata=ADMIN)
    assert by_admin.key.user_id == "cat" and by_admin.secret.startswith("fnk_")


async def test_bad_input_is_refused_with_a_reason(server: Running) -> None:
    keys = keys_stub(server)
    md = auth("dan")
    bad = [
        (_key_req([(DAY, 0)]), "INVALID_BUDGET"),
        (_key_req([(DAY, -5)]), "INVALID_BUDGET"),
        (_key_req([(DAY, 10**16)]), "INVALID_BUDGET"),
        (_key_req([]), "INVALID_BUDGET"),
        (_key_req([(DAY, 1), (DAY, 2)]), "INVALID_BUDGET"),
        (_key_req([(0, 1)]), "INVALID_BUDGET_WINDOW"),
        (_key_req([(42, 1)]), "INVALID_BUDGET_WINDOW"),
        (_key_req([(DAY, 1)], label=""), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="agent\nrm -rf"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="a\x00b"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="bell\x07"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="agent\u202egnp.exe"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="age\u200bnt"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="age\u200dnt"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="agent \U0001f4bb\u200d"), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], label="x" * 101), "INVALID_LABEL"),
        (_key_req([(DAY, 1)], categories=["Not Valid"]), "INVALID_CATEGORY"),
        (_key_req([(DAY, 1)], max_spend_millicredits=-1), "INVALID_AMOUNT"),
    ]
    for req, reason in bad:
        await expect_error(keys.CreateKey(req, metadata=md), grpc.StatusCode.INVALID_ARGUMENT, reason)
    await expect_error(keys.GetKey(keys_pb2.GetKeyRequest(key_id="nope"), metadata=md),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY_ID")
    await expect_error(
        keys.UpdateKey(keys_pb2.UpdateKeyRequest(key_id="key_" + "0" * 32, request_id="u",
                                                 update_mask=FieldMask(paths=["secret"])), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK",
    )
    await expect_error(server.s.usage.Spend(spend_req(1, "s", key_id="key_bad"), metadata=md),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY_ID")
    # Nothing was made by any of it.
    assert not (await keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=md)).keys


async def test_too_many_keys_for_one_wallet(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.harness import serving

    async with serving(db_url, clock, max_keys_per_wallet=5) as server:
        keys = keys_stub(server)
        for i in range(5):
            await keys.CreateKey(_key_req([(DAY, 1)], request_id=f"k{i}"), metadata=auth("eli"))
        info = await expect_error(keys.CreateKey(_key_req([(DAY, 1)], request_id="k5"), metadata=auth("eli")),
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_KEYS")
        assert info.metadata["limit"] == "5"
        # 10,000 attempts at once: never more than the cap, never INTERNAL.
        results = await asyncio.gather(*(
            keys.CreateKey(_key_req([(DAY, 1)], request_id=f"m{i}"), metadata=auth("fox")) for i in range(200)
        ), return_exceptions=True)
        made = [r for r in results if not isinstance(r, BaseException)]
        assert len(made) == 5
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in results if isinstance(r, grpc.aio.AioRpcError))
        listed = await keys.ListKeys(keys_pb2.ListKeysRequest(page_size=3), metadata=auth("fox"))
        rest = await keys.ListKeys(keys_pb2.ListKeysRequest(page_size=3, page_token=listed.next_page_token),
                                   metadata=auth("fox"))
        assert len({k.id for k in [*listed.keys, *rest.keys]}) == 5 and not rest.next_page_token


async def test_create_is_idempotent_and_shows_the_secret_once(server: Running) -> None:
    keys = keys_stub(server)
    first = await keys.CreateKey(_key_req([(DAY, 1), (HOUR, 1), (MONTH, 1), (LIFETIME, 1)], request_id="same"),
                                 metadata=auth("gus"))
    again = await keys.CreateKey(_key_req([(DAY, 1), (HOUR, 1), (MONTH, 1), (LIFETIME, 1)], request_id="same"),
                                 metadata=auth("gus"))
    assert again.key.id == first.key.id and first.secret and not again.secret
    assert [b.window for b in first.key.budgets] == [HOUR, DAY, MONTH, LIFETIME]
    assert first.key.secret_prefix == first.secret[:12]
    await expect_error(keys.CreateKey(_key_req([(DAY, 2)], request_id="same"), metadata=auth("gus")),
                       grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_update_takes_effect_for_the_next_spend(server: Running) -> None:
    await fund(server, "hal", 1_000 * CREDIT)
    made = await create_key(server, "hal", [(DAY, 10 * CREDIT)], categories=["agent"], max_spend_millicredits=8 * CREDIT)
    md = bearer(made.secret)
    await expect_error(server.s.usage.Spend(spend_req(9 * CREDIT, "big"), metadata=md),
                       grpc.StatusCode.FAILED_PRECONDITION, "KEY_SPEND_TOO_LARGE")
    other_category = usage_pb2.SpendRequest(amount_millicredits=1, request_id="cat", category="training")
    await expect_error(server.s.usage.Spend(other_category, metadata=md),
                       grpc.StatusCode.PERMISSION_DENIED, "KEY_CATEGORY_NOT_ALLOWED")
    await server.s.usage.Spend(spend_req(8 * CREDIT, "s1"), metadata=md)
    await expect_error(server.s.usage.Spend(spend_req(3 * CREDIT, "s2"), metadata=md),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    updated = await keys_stub(server).UpdateKey(keys_pb2.UpdateKeyRequest(
        key_id=made.key.id, request_id="u1", update_mask=FieldMask(paths=["budgets", "label"]), label="bigger \U0001f9d1\U0001f3fd\u200d\U0001f4bb",
        budgets=[keys_pb2.Budget(window=DAY, limit_millicredits=20 * CREDIT)]), metadata=auth("hal"))
    assert updated.key.label == "bigger \U0001f9d1\U0001f3fd\u200d\U0001f4bb"  # an emoji sequence's joiner is kept
    assert (updated.key.budgets[0].used_millicredits, updated.key.budgets[0].remaining_millicredits) == \
        (8 * CREDIT, 12 * CREDIT)
    await server.s.usage.Spend(spend_req(3 * CREDIT, "s3"), metadata=md)


async def test_a_refund_gives_budget_back_in_the_window_of_the_spend(server: Running) -> None:
    await fund(server, "ida", 10_000 * CREDIT)
    made = await create_key(server, "ida", [(DAY, 100 * CREDIT)])
    spent = await server.s.usage.Spend(spend_req(100 * CREDIT, "s1", user_id="ida", key_id=made.key.id),
                                       metadata=SERVICE)
    await expect_error(server.s.usage.Spend(spend_req(1, "s2", user_id="ida", key_id=made.key.id), metadata=SERVICE),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    await server.s.usage.RefundUsage(usage_pb2.RefundUsageRequest(
        transaction_id=spent.transaction.id, amount_millicredits=40 * CREDIT, request_id="f1"), metadata=SERVICE)
    later = await server.s.usage.Spend(spend_req(40 * CREDIT, "s3", user_id="ida", key_id=made.key.id),
                                       metadata=SERVICE)
    # A reversal the next day gives back in the day of the spend, not in today's
    # window (the audit at the end checks each window's use against its transfers).
    server.clock.advance(86_400)
    await server.s.usage.Spend(spend_req(100 * CREDIT, "d2", user_id="ida", key_id=made.key.id), metadata=SERVICE)
    await server.s.admin.ReverseTransaction(admin_pb2.ReverseTransactionRequest(
        transaction_id=later.transaction.id, reason="bug", request_id="rv"), metadata=ADMIN)
    await expect_error(server.s.usage.Spend(spend_req(1, "d3", user_id="ida", key_id=made.key.id), metadata=SERVICE),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")


async def test_history_filters_and_groups_by_key(server: Running) -> None:
    await fund(server, "jo", 10_000 * CREDIT)
    a = await create_key(server, "jo", [(DAY, 100 * CREDIT)], label="a")
    b = await create_key(server, "jo", [(DAY, 100 * CREDIT)], label="b")
    await server.s.usage.Spend(spend_req(10 * CREDIT, "a1"), metadata=bearer(a.secret))
    await server.s.usage.Spend(spend_req(20 * CREDIT, "a2"), metadata=bearer(a.secret))
    await server.s.usage.Spend(spend_req(5 * CREDIT, "b1", user_id="jo", key_id=b.key.id), metadata=SERVICE)
    await server.s.usage.Spend(spend_req(1 * CREDIT, "n1"), metadata=auth("jo"))
    page = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(key_id=a.key.id),
                                                   metadata=auth("jo"))
    assert [t.amount_millicredits for t in page.transactions] == [-20 * CREDIT, -10 * CREDIT]
    assert {t.key_id for t in page.transactions} == {a.key.id}
    report = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(), metadata=auth("jo"))
    assert {(k.key_id, k.spent_millicredits, k.operations) for k in report.keys} == {
        (a.key.id, 30 * CREDIT, 2), (b.key.id, 5 * CREDIT, 1), ("", 1 * CREDIT, 1)}
    only_b = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(key_id=b.key.id),
                                                      metadata=auth("jo"))
    assert only_b.total_spent_millicredits == 5 * CREDIT


async def _watch(
    server: Running, md: tuple[tuple[str, str], ...]
) -> tuple[list[balance_pb2.WatchBalanceResponse], asyncio.Future[None]]:
    """The wallet's watch, read into a list from its snapshot on."""
    stream = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(), metadata=md)
    got: list[balance_pb2.WatchBalanceResponse] = []
    snapshot = asyncio.Event()

    async def read() -> None:
        async for msg in stream:
            got.append(msg)
            snapshot.set()

    reader = asyncio.ensure_future(read())
    await asyncio.wait_for(snapshot.wait(), 30)
    return got, reader


async def test_the_watch_carries_budget_events(server: Running) -> None:
    await fund(server, "kim", 10_000 * CREDIT)
    made = await create_key(server, "kim", [(DAY, 100 * CREDIT)])
    md = bearer(made.secret)
    got, reader = await _watch(server, md)
    await server.s.usage.Spend(spend_req(85 * CREDIT, "s1"), metadata=md)  # 85 %: warning
    await expect_error(server.s.usage.Spend(spend_req(20 * CREDIT, "s2"), metadata=md),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")  # refused: exhausted
    server.clock.advance(86_400)
    await server.s.usage.Spend(spend_req(1 * CREDIT, "s3"), metadata=md)  # the next day: reset
    types = [balance_pb2.BALANCE_EVENT_TYPE_BUDGET_WARNING, balance_pb2.BALANCE_EVENT_TYPE_BUDGET_EXHAUSTED,
             balance_pb2.BALANCE_EVENT_TYPE_BUDGET_RESET]
    for _ in range(200):
        if [m.type for m in got if m.type in types] == types:
            break
        await asyncio.sleep(0.02)
    reader.cancel()
    events = [m for m in got if m.type in types]
    assert [m.type for m in events] == types
    assert all(m.key_id == made.key.id for m in events)


async def test_a_budget_event_names_a_key_read_with_many_others(server: Running) -> None:
    """A batch of more than a few keys reads the common key narrow, without
    its label (SQLite); a warning through such a key still names it."""
    users = [f"lea{i}" for i in range(6)]
    made = {}
    for u in users:
        await fund(server, u, 1_000 * CREDIT)
        made[u] = await create_key(server, u, [(DAY, 100 * CREDIT)], label=f"agent-{u}")

    def batch(tag: str, first: int) -> usage_pb2.SpendBatchRequest:
        return usage_pb2.SpendBatchRequest(requests=[
            spend_req(first if i == 0 else 1 * CREDIT, f"{tag}-{u}", user_id=u, key_id=made[u].key.id)
            for i, u in enumerate(users)
        ])

    # Each key's first use (its counters move to this day), then lea0's key past 80 %.
    assert all(r.HasField("response") for r in
               (await server.s.usage.SpendBatch(batch("a", 1 * CREDIT), metadata=SERVICE)).results)
    got, reader = await _watch(server, auth("lea0"))
    assert all(r.HasField("response") for r in
               (await server.s.usage.SpendBatch(batch("b", 85 * CREDIT), metadata=SERVICE)).results)
    for _ in range(200):
        if any(m.type == balance_pb2.BALANCE_EVENT_TYPE_BUDGET_WARNING for m in got):
            break
        await asyncio.sleep(0.02)
    reader.cancel()
    warnings = [m for m in got if m.type == balance_pb2.BALANCE_EVENT_TYPE_BUDGET_WARNING]
    assert [m.key_id for m in warnings] == [made["lea0"].key.id]
    assert "'agent-lea0'" in warnings[0].message, warnings[0].message


async def test_the_reset_event_comes_at_the_window_boundary_once(server: Running) -> None:
    await fund(server, "lee", 10_000 * CREDIT)
    made = await create_key(server, "lee", [(HOUR, 100 * CREDIT)])
    idle = await create_key(server, "lee", [(HOUR, 100 * CREDIT)], label="idle")
    md = bearer(made.secret)
    got, reader = await _watch(server, auth("lee"))

    def resets() -> list[str]:
        return [m.key_id for m in got if m.type == balance_pb2.BALANCE_EVENT_TYPE_BUDGET_RESET]

    await server.s.usage.Spend(spend_req(90 * CREDIT, "s1"), metadata=md)
    # The hour's end, from the key itself (no expectation from the date).
    boundary_us = made.key.budgets[0].resets_at.ToMicroseconds()
    server.clock.advance((boundary_us - server.clock.now_us()) / 1e6 - 1)
    assert await server.run_job("reset_key_budgets") == 0  # a second before: nothing to reset
    # Past the boundary, before any use: the job announces it, once, for the key that had use.
    server.clock.advance(2)
    assert await server.run_job("reset_key_budgets") == 1
    assert await server.run_job("reset_key_budgets") == 0
    for _ in range(200):
        if resets():
            break
        await asyncio.sleep(0.02)
    got_key = await keys_stub(server).GetKey(keys_pb2.GetKeyRequest(key_id=made.key.id), metadata=md)
    assert got_key.key.budgets[0].used_millicredits == 0
    # The next use in the new window sends no second reset; the full budget is there.
    await server.s.usage.Spend(spend_req(100 * CREDIT, "s2"), metadata=md)
    await server.s.usage.Spend(spend_req(1 * CREDIT, "s3"), metadata=auth("lee"))  # a marker after it
    for _ in range(200):
        if sum(m.type == balance_pb2.BALANCE_EVENT_TYPE_TRANSFER for m in got) >= 3:
            break
        await asyncio.sleep(0.02)
    reader.cancel()
    assert resets() == [made.key.id]
    assert idle.key.id not in resets()


async def test_refusals_are_counted_by_reason(server: Running) -> None:
    await fund(server, "lea", 10_000 * CREDIT)
    made = await create_key(server, "lea", [(DAY, 1 * CREDIT)])
    before = METRICS.refusals.labels("BUDGET_EXCEEDED")._value.get()
    await expect_error(server.s.usage.Spend(spend_req(2 * CREDIT, "s"), metadata=bearer(made.secret)),
                       grpc.StatusCode.FAILED_PRECONDITION, "BUDGET_EXCEEDED")
    batch = usage_pb2.SpendBatchRequest(requests=[spend_req(2 * CREDIT, f"b{i}") for i in range(3)])
    await server.s.usage.SpendBatch(batch, metadata=bearer(made.secret))
    assert METRICS.refusals.labels("BUDGET_EXCEEDED")._value.get() == before + 4


async def test_verify_finds_a_key_use_that_its_transfers_do_not_explain(server: Running) -> None:
    await fund(server, "max", 10_000 * CREDIT)
    made = await create_key(server, "max", [(DAY, 100 * CREDIT)])
    await server.s.usage.Spend(spend_req(10 * CREDIT, "s"), metadata=bearer(made.secret))
    assert (await server.audit()).ok
    assert server.app is not None  # the audit's own subject: a row changed behind the API
    async with server.app.db.writer.begin() as conn:
        await conn.execute(update(key_usage).where(key_usage.c.id == made.key.id).values(day_used=1))
    report = await server.audit()
    assert not report.ok and f"key {made.key.id}: day use 1" in report.render()
    async with server.app.db.writer.begin() as conn:
        await conn.execute(update(key_usage).where(key_usage.c.id == made.key.id).values(day_used=10 * CREDIT))
