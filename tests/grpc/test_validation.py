"""Bad input is refused with INVALID_ARGUMENT and a clear reason, and never
changes the ledger."""

from __future__ import annotations

import grpc
import pytest
from flownexus.billing.v1 import (
    balance_pb2,
    common_pb2,
    earnings_pb2,
    history_pb2,
    usage_pb2,
)
from sqlalchemy import func, select

from server.db.schema import transfers
from tests.harness import auth, expect_error

INT64_MAX = 2**63 - 1
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def spend(**kw):  # type: ignore[no-untyped-def]
    values = {"amount_millicredits": 1_000, "request_id": "r1"}
    values.update(kw)
    return usage_pb2.SpendRequest(**values)


def award(**kw):  # type: ignore[no-untyped-def]
    values = {
        "user_id": "bob",
        "amount_millicredits": 1_000,
        "source": common_pb2.EARNING_SOURCE_CHALLENGE,
        "source_ref": "c1",
        "request_id": "r1",
    }
    values.update(kw)
    return earnings_pb2.AwardCreditsRequest(**values)


CASES = [
    ("spend zero", "usage.Spend", spend(amount_millicredits=0), "INVALID_AMOUNT"),
    ("spend negative", "usage.Spend", spend(amount_millicredits=-5), "INVALID_AMOUNT"),
    ("spend int64 max", "usage.Spend", spend(amount_millicredits=INT64_MAX), "INVALID_AMOUNT"),
    ("spend int64 min", "usage.Spend", spend(amount_millicredits=-(2**63)), "INVALID_AMOUNT"),
    ("spend empty request_id", "usage.Spend", spend(request_id=""), "MISSING_REQUEST_ID"),
    ("spend oversized request_id", "usage.Spend", spend(request_id="x" * 129), "INVALID_REQUEST_ID"),
    ("spend unicode request_id", "usage.Spend", spend(request_id="ид-1"), "INVALID_REQUEST_ID"),
    ("spend oversized user_id", "usage.Spend", spend(user_id="u" * 129), "INVALID_USER_ID"),
    ("spend bad category", "usage.Spend", spend(category="Sandbox Time"), "INVALID_CATEGORY"),
    ("spend huge description", "usage.Spend", spend(description="d" * 501), "FIELD_TOO_LONG"),
    ("spend half revenue share", "usage.Spend", spend(app_id="app-1"), "INVALID_REVENUE_SHARE"),
    ("reserve zero", "usage.Reserve", usage_pb2.ReserveRequest(amount_millicredits=0, request_id="r"), "INVALID_AMOUNT"),
    ("capture bad hold id", "usage.Capture", usage_pb2.CaptureRequest(hold_id="", amount_millicredits=1, request_id="r"), "INVALID_HOLD_ID"),
    ("capture negative", "usage.Capture", usage_pb2.CaptureRequest(hold_id="hold_x", amount_millicredits=-1, request_id="r"), "INVALID_AMOUNT"),
    ("release no request_id", "usage.Release", usage_pb2.ReleaseRequest(hold_id="hold_x"), "MISSING_REQUEST_ID"),
    ("award unknown enum", "earnings.AwardCredits", award(source=42), "INVALID_ENUM"),
    ("award unspecified enum", "earnings.AwardCredits", award(source=0), "INVALID_ENUM"),
    ("award empty user", "earnings.AwardCredits", award(user_id=""), "INVALID_USER_ID"),
    ("award overflow", "earnings.AwardCredits", award(amount_millicredits=INT64_MAX), "INVALID_AMOUNT"),
    ("history negative page", "history.ListTransactions", history_pb2.ListTransactionsRequest(page_size=-1), "INVALID_PAGE_SIZE"),
    ("history garbage token", "history.ListTransactions", history_pb2.ListTransactionsRequest(page_token="!!garbage!!"), "INVALID_PAGE_TOKEN"),
    ("history unknown type", "history.ListTransactions", history_pb2.ListTransactionsRequest(types=[99]), "INVALID_ENUM"),
    ("balance bad user id", "balance.GetBalance", balance_pb2.GetBalanceRequest(user_id="a b"), "INVALID_USER_ID"),
]


async def _transfer_count(server) -> int:  # type: ignore[no-untyped-def]
    async with server.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(transfers))).scalar_one())


@pytest.mark.parametrize("db_kind", ["sqlite"])
async def test_bad_input_is_refused_without_changing_the_ledger(server) -> None:
    # A baseline so the wallets exist; then nothing may move.
    await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("alice"))
    before = await _transfer_count(server)
    for name, method, request, reason in CASES:
        service, rpc = method.split(".")
        stub = getattr(server.s, service)
        role = "service" if service == "earnings" else "user"
        info = await expect_error(getattr(stub, rpc)(request, metadata=auth("alice", role)), INVALID, reason)
        assert info.domain == "billing.flownexus.dev", name
    assert await _transfer_count(server) == before
    b = await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("alice"))
    assert b.credits_millicredits == 100_000


async def test_page_token_bound_to_its_filters(server) -> None:
    for i in range(3):
        await server.s.usage.Spend(spend(request_id=f"r{i}"), metadata=auth("alice"))
    page = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(page_size=1), metadata=auth("alice"))
    assert page.next_page_token
    other = history_pb2.ListTransactionsRequest(
        page_size=1, page_token=page.next_page_token, types=[common_pb2.TRANSACTION_TYPE_SPEND]
    )
    await expect_error(server.s.history.ListTransactions(other, metadata=auth("alice")), INVALID, "INVALID_PAGE_TOKEN")
