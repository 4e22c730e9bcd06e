"""One grammar for ids: a token whose subject is not a valid user id is
refused at authentication, whatever its role, before anything is stored;
`python -m server verify` lists a wallet whose id breaks the grammar."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from flownexus.billing.v1 import admin_pb2, balance_pb2, history_pb2, usage_pb2
from sqlalchemy import delete, insert

from server.db.schema import accounts
from server.ledger.model import wallet_id
from tests.grpc.test_hostile_values import _sub_token, stored
from tests.harness import Running, auth, expect_error, run_cmd

ROOT = Path(__file__).resolve().parents[2]
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
# Key separators, whitespace, a look-alike letter, bidirectional and invisible
# characters, and the control characters refused before.
BAD_SUBJECTS = (
    "mallory:x", "team/mallory", "a|b", " mallory", "mallory ", "mallory\n", "mållory", "zoë",
    "mallory\u202egnp", "mal\u200blory", "\u200bmallory", "\ufeffmallory", "a\x00b", "lone\ud800",
    "-mallory", ".mallory", "x" * 129, "",
)


async def test_subjects_outside_the_grammar_are_refused(server: Running) -> None:
    await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=auth("honest"))
    before = await stored(server)
    for sub in BAD_SUBJECTS:
        for role in ("user", "service", "admin"):
            md = _sub_token(sub, role)
            for call in (
                server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id="x"), metadata=md),
                server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=md),
                server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(), metadata=md),
            ):
                await expect_error(call, UNAUTH, "INVALID_SUBJECT")
    assert await stored(server) == before
    # The same grammar as the operator RPCs: every subject a token may carry
    # is a user_id GetAccount accepts.
    for sub in ("a", "Z9", "alice.b+tag@example.com", "svc_1-x", "x" * 128):
        r = await server.s.balance.GetBalance(balance_pb2.GetBalanceRequest(), metadata=_sub_token(sub))
        assert r.user_id == sub
        acct = await server.s.admin.GetAccount(admin_pb2.GetAccountRequest(user_id=sub), metadata=auth("ops", "admin"))
        assert acct.user_id == sub


async def test_verify_lists_wallets_whose_id_breaks_the_grammar(server: Running) -> None:
    assert server.app is not None
    bad = ["mallory:x", "m\u00e5llory", "mal\u200blory"]
    async with server.app.db.writer.begin() as conn:
        for i, user in enumerate(bad):
            await conn.execute(insert(accounts).values(
                id=wallet_id(user), kind="wallet", user_id=user, balance=0, pending=0, earned_total=0,
                spent_total=0, unlimited_overdraft=False, version=0, created_at_us=i,
            ))
    env = {**os.environ, "BILLING_DATABASE_URL": server.url, "BILLING_LOG_JSON": "false"}
    code, out, err = await run_cmd(sys.executable, "-m", "server", "verify", env=env, cwd=ROOT)
    assert code == 1, out + err
    listed = [line for line in out.splitlines() if "breaks the id grammar" in line]
    assert len(listed) == len(bad), out
    for user in bad:
        assert any(repr(wallet_id(user)) in line for line in listed), out
    async with server.app.db.writer.begin() as conn:
        await conn.execute(delete(accounts).where(accounts.c.id.in_([wallet_id(u) for u in bad])))
    code, out, err = await run_cmd(sys.executable, "-m", "server", "verify", env=env, cwd=ROOT)
    assert code == 0, out + err
