"""Authentication and authorization: a user token reaches only its own account;
only service/admin tokens award credits or act for others."""

from __future__ import annotations

import asyncio

import grpc
import jwt
import pytest
from flownexus.billing.v1 import balance_pb2, common_pb2, earnings_pb2, history_pb2, usage_pb2

from server.platform.auth import Role, mint_token
from tests.harness import JWT_SECRET, WAIT, auth, error_info, expect_error, token


async def test_user_cannot_read_another_users_balance(server) -> None:
    await expect_error(
        server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(user_id="bob"), metadata=auth("alice")),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_YOUR_ACCOUNT",
    )
    await expect_error(
        server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(user_id="bob"), metadata=auth("alice")),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_YOUR_ACCOUNT",
    )


async def test_user_cannot_spend_for_another_user(server) -> None:
    await expect_error(
        server.s.usage.Spend(
            usage_pb2.SpendRequest(user_id="bob", amount_millicredits=1, request_id="r"), metadata=auth("alice")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_YOUR_ACCOUNT",
    )


async def test_service_may_spend_for_any_user(server) -> None:
    r = await server.s.usage.Spend(
        usage_pb2.SpendRequest(user_id="bob", amount_millicredits=1_000, request_id="r"),
        metadata=auth("sandbox-runner", "service"),
    )
    assert r.credits_millicredits == 99_000


async def test_user_token_cannot_award(server) -> None:
    req = earnings_pb2.AwardCreditsRequest(
        user_id="bob", amount_millicredits=1_000, source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref="c", request_id="r"
    )
    await expect_error(server.s.earnings.AwardCredits(req, metadata=auth("alice")), grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    # Not even for themselves, and not even with a service token naming itself.
    req.user_id = "alice"
    await expect_error(server.s.earnings.AwardCredits(req, metadata=auth("alice")), grpc.StatusCode.PERMISSION_DENIED)
    req.user_id = "engine"
    await expect_error(
        server.s.earnings.AwardCredits(req, metadata=auth("engine", "service")), grpc.StatusCode.PERMISSION_DENIED, "SELF_AWARD"
    )
    b = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth("bob"))
    assert b.earned_total_millicredits == 0


async def test_missing_or_bad_tokens_are_unauthenticated(server) -> None:
    req = balance_pb2.CheckBalanceRequest()
    await expect_error(server.s.balance.CheckBalance(req), grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
    for header, reason in [
        ("Bearer not-a-jwt", "INVALID_TOKEN"),
        ("Basic dXNlcjpwYXNz", "INVALID_TOKEN"),
        (f"Bearer {token('alice', ttl=-10)}", "TOKEN_EXPIRED"),
        (f"Bearer {jwt.encode({'sub': 'alice', 'role': 'admin', 'exp': 2**31}, 'other-secret-0123456789-0123456789-abc')}", "INVALID_SIGNATURE"),
        (f"Bearer {jwt.encode({'sub': 'alice', 'role': 'root', 'exp': 2**31, 'iss': 'flownexus-billing'}, JWT_SECRET)}", "INVALID_TOKEN"),
    ]:
        await expect_error(
            server.s.balance.CheckBalance(req, metadata=(("authorization", header),)), grpc.StatusCode.UNAUTHENTICATED, reason
        )


async def test_a_token_signed_with_another_secret_says_so(server) -> None:
    """The likeliest mistake (a token minted with another BILLING_JWT_SECRET)
    gets its own reason and message; the message reveals nothing of either secret."""
    other = "another-secret-0123456789-0123456789-xyz"
    bearer = mint_token(other, "alice", Role.USER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(("authorization", f"Bearer {bearer}"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err.value).reason == "INVALID_SIGNATURE"
    details = err.value.details() or ""
    assert details == "the token's signature does not match this server's secret", details
    assert other not in details and JWT_SECRET not in details
    # A tampered payload under the right secret's signature is a signature mismatch too.
    head, _, sig = token("alice").split(".")
    forged = ".".join([head, jwt.utils.base64url_encode(b'{"sub":"bob","role":"admin","exp":9999999999}').decode(), sig])
    await expect_error(
        server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(("authorization", f"Bearer {forged}"),)),
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_SIGNATURE",
    )


async def test_watch_without_token_is_refused(server) -> None:
    call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), WAIT)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_user_cannot_watch_another_user(server) -> None:
    call = server.s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(user_id="bob"), metadata=auth("alice"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), WAIT)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_token_for_another_audience_is_refused(sqlite_server) -> None:
    """Tokens minted for the MCP endpoint (`python -m server token --audience URL`) carry
    `aud`; the API takes only tokens without one, so such a token is useless against it."""
    for bearer in (
        mint_token(JWT_SECRET, "alice", Role.USER, audience="https://mcp.example.com/mcp"),
        jwt.encode({"sub": "alice", "role": "admin", "exp": 2**40, "iss": "flownexus-billing", "aud": ["x", "y"]}, JWT_SECRET),
    ):
        await expect_error(
            sqlite_server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=(("authorization", f"Bearer {bearer}"),)),
            grpc.StatusCode.UNAUTHENTICATED,
            "WRONG_AUDIENCE",
        )
    plain = await sqlite_server.s.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth("alice"))
    assert plain.credits_millicredits == 100_000


def test_the_token_command_mints_for_an_audience(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from server.__main__ import main

    monkeypatch.setenv("BILLING_JWT_SECRET", JWT_SECRET)
    assert main(["token", "--user", "dana", "--role", "service", "--audience", "https://mcp.example.com/mcp"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), JWT_SECRET, algorithms=["HS256"], audience="https://mcp.example.com/mcp")
    assert (claims["sub"], claims["role"], claims["aud"]) == ("dana", "service", "https://mcp.example.com/mcp")
    assert main(["token", "--user", "dana"]) == 0
    assert "aud" not in jwt.decode(capsys.readouterr().out.strip(), JWT_SECRET, algorithms=["HS256"])


async def test_a_token_from_an_issuer_whose_clock_runs_ahead_is_accepted(sqlite_server) -> None:
    """`iat` ahead of the server's clock (skew between issuer and server, or a
    child process started under a shifted test clock) does not refuse a token
    that has not expired."""
    import time

    now = int(time.time())
    ahead = jwt.encode(
        {"sub": "skewed", "role": "user", "iat": now + 600, "exp": now + 3600, "iss": "flownexus-billing"},
        JWT_SECRET, algorithm="HS256",
    )
    b = await sqlite_server.s.balance.GetBalance(
        balance_pb2.GetBalanceRequest(), metadata=(("authorization", f"Bearer {ahead}"),)
    )
    assert b.credits_millicredits == 100_000
