"""Out-of-range values and control characters, on SQLite and PostgreSQL:
each is INVALID_ARGUMENT (or, for a token's subject, UNAUTHENTICATED) with a
reason, the server logs no traceback, and nothing is stored.

- Timestamps outside google.protobuf.Timestamp's range (years 1 to 9999) on
  ListTransactions, GetSpendingReport and AdjustBalance.
- Page tokens whose position does not fit in int64 (or is a bool).
- A token `sub` holding NUL, another control character or a lone surrogate.
- NUL and control characters in every stored free-text field, Spend
  metadata keys and values included; other callers' Spends go on meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import jwt
import pytest
from flownexus.billing.v1 import admin_pb2, balance_pb2, earnings_pb2, history_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from server.db.schema import idempotency, transfers
from server.grpc import validation
from tests.harness import JWT_SECRET, Running, auth, expect_error

IA = grpc.StatusCode.INVALID_ARGUMENT
BAD_SECONDS = (2**62, -(2**62), 253_402_300_800, -62_135_596_801, 10**12)


class Tracebacks(logging.Handler):
    """Every log record of the server that carries an exception or a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info or "Traceback" in text or record.levelno >= logging.ERROR:
            self.records.append(f"{record.name}: {text} {self.format(record) if record.exc_info else ''}")


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def stored(server: Running) -> tuple[int, int]:
    assert server.app is not None
    async with server.read() as conn:
        n_transfers = (await conn.execute(select(func.count()).select_from(transfers))).scalar_one()
        n_requests = (await conn.execute(select(func.count()).select_from(idempotency))).scalar_one()
    return int(n_transfers), int(n_requests)


def _token(position: Any, sig: str) -> str:
    raw = json.dumps({"p": position, "f": sig}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_out_of_range_timestamps_and_page_tokens(server: Running, tracebacks: Tracebacks) -> None:
    me = auth("tess")
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=me)
    before = await stored(server)
    n = 0
    for seconds in BAD_SECONDS:
        t = Timestamp(seconds=seconds)
        for field in ("start_time", "end_time"):
            info = await expect_error(
                server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(**{field: t}), metadata=me),
                IA, "INVALID_TIMESTAMP",
            )
            assert info.metadata["field"] == field
            info = await expect_error(
                server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(**{field: t}), metadata=me),
                IA, "INVALID_TIMESTAMP",
            )
            assert info.metadata["field"] == field
            n += 2
        await expect_error(
            server.s.admin.AdjustBalance(admin_pb2.AdjustBalanceRequest(
                user_id="tess", amount_millicredits=1, reason="r", lot=2, expires_at=t, request_id=f"adj{seconds}",
            ), metadata=auth("ops", "admin")),
            IA, "INVALID_TIMESTAMP",
        )
    # Nanos outside [0, 1e9) are as invalid as the seconds above.
    await expect_error(
        server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(start_time=Timestamp(seconds=1, nanos=-1)), metadata=me),
        IA, "INVALID_TIMESTAMP",
    )
    # The edges themselves are valid: the first and the last instant a Timestamp holds.
    first, last = Timestamp(seconds=-62_135_596_800), Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(start_time=first, end_time=last), metadata=me)
    r = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(start_time=first, end_time=last), metadata=me)
    assert r.start_time == first
    # A window ending in year 1 starts at the first instant, never before it.
    await expect_error(
        server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(end_time=first), metadata=me),
        IA, "INVALID_TIME_RANGE",
    )
    await server.s.history.GetSpendingReport(
        history_pb2.GetSpendingReportRequest(end_time=Timestamp(seconds=-62_135_596_800 + 86_400)), metadata=me)

    # Page tokens with the right filters but a position outside int64, or of another type.
    sig = validation.filters_signature("", [], None, None)  # the filters of a request without any
    for position in (2**63, 2**64 + 5, -(2**63) - 1, 10**30, True, 1.5, None, [1], "1"):
        await expect_error(
            server.s.history.ListTransactions(
                history_pb2.ListTransactionsRequest(page_token=_token(position, sig)), metadata=me),
            IA, "INVALID_PAGE_TOKEN",
        )
        n += 1
    # The same for the (created_at, id) tokens of ListAdminActions.
    asig = validation.filters_signature("", "", "")
    for position in ([2**63, "x"], [1, "x" * 300], [True, "x"], [1], [1, 2]):
        await expect_error(
            server.s.admin.ListAdminActions(
                admin_pb2.ListAdminActionsRequest(page_token=_token(position, asig)), metadata=auth("ops", "admin")),
            IA, "INVALID_PAGE_TOKEN",
        )
    # A well-formed one still pages.
    await server.s.history.ListTransactions(
        history_pb2.ListTransactionsRequest(page_token=_token(2**63 - 1, sig)), metadata=me)
    assert n == len(BAD_SECONDS) * 4 + 9
    assert await stored(server) == before
    assert tracebacks.records == []


def _sub_token(sub: str, role: str = "user") -> tuple[tuple[str, str], ...]:
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + 600, "iss": "flownexus-billing"}
    return (("authorization", f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"),)


BAD_SUBJECTS = ("a\x00b", "\x00", "nul-at-end\x00", "tab\tsub", "line\nbreak", "del\x7f", "c1\x85", "esc\x1b[31m", "lone\ud800")


async def test_subject_with_control_characters_is_refused(server: Running, tracebacks: Tracebacks) -> None:
    """Refused at authentication, identically on both databases, on reads
    and writes; meanwhile an honest caller's Spends all go through."""
    victim = auth("honest")
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=victim)
    before = await stored(server)

    async def honest(n: int) -> int:
        ok = 0
        for i in range(n):
            await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10, request_id=f"h{i}"), metadata=victim)
            ok += 1
        return ok

    async def hostile() -> int:
        refused = 0
        for sub in BAD_SUBJECTS:
            for role in ("user", "service"):
                md = _sub_token(sub, role)
                for call in (
                    server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="x"), metadata=md),
                    server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=md),
                    server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=md),
                ):
                    await expect_error(call, grpc.StatusCode.UNAUTHENTICATED, "INVALID_SUBJECT")
                    refused += 1
        return refused

    ok, refused = await asyncio.gather(honest(40), hostile())
    assert ok == 40 and refused == len(BAD_SUBJECTS) * 6
    t, r = await stored(server)
    assert (t, r) == (before[0] + 40, before[1] + 40)  # the honest Spends only
    # Subjects follow the grammar of user ids (tests/hostile/test_subjects.py).
    r2 = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=_sub_token("zoe"))
    assert r2.user_id == "zoe"
    assert tracebacks.records == []


def _text_cases() -> list[tuple[str, str, Any, tuple[tuple[str, str], ...], str]]:
    """(case, method, request, metadata, reason) for every stored free-text field."""
    u, s, a = auth("ctl"), auth("svc-ctl", "service"), auth("ops", "admin")
    sp, rv, aw = usage_pb2.SpendRequest, usage_pb2.ReserveRequest, earnings_pb2.AwardCreditsRequest
    c: list[tuple[str, str, Any, tuple[tuple[str, str], ...], str]] = []
    for bad in ("a\x00b", "\x01", "bell\x07", "esc\x1b", "del\x7f", "c1\x9b", "cr\rlf"):
        c += [
            (f"spend metadata value {bad!r}", "Spend", sp(amount_millicredits=1, request_id="m", metadata={"k": bad}), u, "INVALID_METADATA"),
            (f"spend metadata key {bad!r}", "Spend", sp(amount_millicredits=1, request_id="m", metadata={bad: "v"}), u, "INVALID_METADATA"),
            (f"spend description {bad!r}", "Spend", sp(amount_millicredits=1, request_id="m", description=bad), u, "INVALID_TEXT"),
            (f"reserve description {bad!r}", "Reserve", rv(amount_millicredits=1, request_id="m", description=bad), u, "INVALID_TEXT"),
            (f"spend app_id {bad!r}", "Spend", sp(amount_millicredits=1, request_id="m", app_id=bad, publisher_user_id="pub"), s, "INVALID_TEXT"),
            (f"award reason {bad!r}", "AwardCredits", aw(user_id="ctl", amount_millicredits=1, source=1, reason=bad, request_id="m"), s, "INVALID_TEXT"),
            (f"award source_ref {bad!r}", "AwardCredits", aw(user_id="ctl", amount_millicredits=1, source=1, source_ref=bad, request_id="m"), s, "INVALID_TEXT"),
            (f"adjust reason {bad!r}", "AdjustBalance", admin_pb2.AdjustBalanceRequest(user_id="ctl", amount_millicredits=1, reason=f"r{bad}", lot=2, request_id="m"), a, "INVALID_TEXT"),
        ]
    # A metadata key has no tab or newline either (a value may, like other free text).
    c.append(("spend metadata key tab", "Spend", sp(amount_millicredits=1, request_id="m", metadata={"a\tb": "v"}), u, "INVALID_METADATA"))
    c.append(("spend metadata key newline", "Spend", sp(amount_millicredits=1, request_id="m", metadata={"a\nb": "v"}), u, "INVALID_METADATA"))
    return c


STUB = {"Spend": "usage", "Reserve": "usage", "AwardCredits": "earnings", "AdjustBalance": "admin"}


async def test_control_characters_in_stored_strings_are_refused(server: Running, tracebacks: Tracebacks) -> None:
    other = auth("bystander")
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=other)
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth("ctl"))
    before = await stored(server)
    cases = _text_cases()
    for i, (name, method, req, md, reason) in enumerate(cases):
        try:
            await expect_error(getattr(getattr(server.s, STUB[method]), method)(req, metadata=md), IA, reason)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        # Another caller's Spend right after each refusal is unaffected.
        await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id=f"b{i}"), metadata=other)
    assert await stored(server) == (before[0] + len(cases), before[1] + len(cases))
    # Tab, newline and any printable Unicode stay allowed in values and free text, and come back as sent.
    fine = {"note": "tab\there\nnewline", "emoji": "💸 ünï"}
    await server.s.usage.Spend(
        usage_pb2.SpendRequest(amount_millicredits=1, request_id="fine", description="ok\tdesc", metadata=fine), metadata=auth("ctl"))
    page = await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(page_size=1), metadata=auth("ctl"))
    assert dict(page.transactions[0].metadata) == fine and page.transactions[0].description == "ok\tdesc"
    assert tracebacks.records == []
