"""Ids and page positions at the edges of int64, on SQLite and PostgreSQL:
INVALID_ARGUMENT at validation, never INTERNAL or UNAVAILABLE, nothing stored,
no traceback in the log."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import admin_pb2, history_pb2, payments_pb2, usage_pb2

from server.grpc import validation
from tests.grpc.test_hostile_values import Tracebacks, _token, stored, tracebacks  # noqa: F401
from tests.harness import Running, auth, expect_error

IA = grpc.StatusCode.INVALID_ARGUMENT
I64_MIN = -(2**63)


async def test_page_tokens_at_int64_minimum(server: Running, tracebacks: Tracebacks) -> None:  # noqa: F811
    """Every paged RPC: a position of int64's minimum (whose negation does not
    fit) is INVALID_PAGE_TOKEN like any other forged position."""
    me, ops = auth("tess"), auth("ops", "admin")
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="s"), metadata=me)
    before = await stored(server)
    sig = validation.filters_signature("", [], None, None)
    for position in (I64_MIN, I64_MIN + 1, 0, -1):
        await expect_error(
            server.s.history.ListTransactions(
                history_pb2.ListTransactionsRequest(page_token=_token(position, sig)), metadata=me),
            IA, "INVALID_PAGE_TOKEN",
        )
    asig = validation.filters_signature("", "", "")
    psig = validation.filters_signature("payments", "tess")
    for position in ([I64_MIN, "x"], [1, ""]):
        await expect_error(
            server.s.admin.ListAdminActions(
                admin_pb2.ListAdminActionsRequest(page_token=_token(position, asig)), metadata=ops),
            IA, "INVALID_PAGE_TOKEN",
        )
        await expect_error(
            server.s.payments.ListPayments(
                payments_pb2.ListPaymentsRequest(page_token=_token(position, psig)), metadata=me),
            IA, "INVALID_PAGE_TOKEN",
        )
    # The smallest real position still pages (to nothing before it).
    r = await server.s.history.ListTransactions(
        history_pb2.ListTransactionsRequest(page_token=_token(1, sig)), metadata=me)
    assert list(r.transactions) == []
    assert await stored(server) == before
    assert tracebacks.records == []


async def test_transaction_ids_beyond_int64(server: Running, tracebacks: Tracebacks) -> None:  # noqa: F811
    """ReverseTransaction and RefundUsage refuse an id that no transfer can
    have before the writer sees it: a client is not told to retry forever."""
    svc, ops = auth("svc", "service"), auth("ops", "admin")
    spent = await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="tess", amount_millicredits=5, request_id="s"), metadata=svc)
    before = await stored(server)
    for bad in ("9223372036854775808", "9999999999999999999", "18446744073709551616", "0", "-1", "00000000000000000001x"):
        info = await expect_error(
            server.s.admin.ReverseTransaction(admin_pb2.ReverseTransactionRequest(
                transaction_id=bad, reason="r", request_id=f"rev{bad}"), metadata=ops),
            IA, "INVALID_TRANSACTION_ID",
        )
        assert info.metadata["field"] == "transaction_id"
        await expect_error(
            server.s.usage.RefundUsage(usage_pb2.RefundUsageRequest(
                transaction_id=bad, amount_millicredits=1, reason="r", request_id=f"ref{bad}"),
                metadata=svc),
            IA, "INVALID_TRANSACTION_ID",
        )
    assert await stored(server) == before
    # int64's maximum is a well-formed id that names no transfer.
    await expect_error(
        server.s.admin.ReverseTransaction(admin_pb2.ReverseTransactionRequest(
            transaction_id=str(2**63 - 1), reason="r", request_id="revmax"), metadata=ops),
        grpc.StatusCode.NOT_FOUND,
    )
    r = await server.s.usage.RefundUsage(usage_pb2.RefundUsageRequest(
        transaction_id=spent.transaction.id, amount_millicredits=5, reason="r", request_id="ok"),
        metadata=svc)
    assert r.refunded_millicredits == 5
    assert tracebacks.records == []
