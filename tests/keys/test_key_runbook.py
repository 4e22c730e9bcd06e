"""The scoped-key commands of docs/operations.md, run for real through grpcurl:
create a key, spend through it, see its budget, revoke it."""

from __future__ import annotations

from tests.docs.test_runbook import make_ops, ok, refused, runbook_env  # noqa: F401  (a fixture)
from tests.harness import Running
from tests.runbook_tools import Result, run_shell, runbook_blocks

BLOCKS = runbook_blocks()


async def test_create_see_and_revoke_a_key(server: Running, runbook_env: dict[str, str]) -> None:  # noqa: F811
    ops = make_ops(server, runbook_env)
    made = ok(await ops("create-key"))
    key = made["key"]
    assert made["secret"].startswith("fnk_") and key["user_id"] == "alice" and key["label"] == "nightly-agent"
    assert key["budgets"] == [{"window": "BUDGET_WINDOW_DAY", "limit_millicredits": "500000",
                               "remaining_millicredits": "500000", "resets_at": key["budgets"][0]["resets_at"]}]
    env = dict(runbook_env, ADDR=server.target, KEY_ID=key["id"], KEY_SECRET=made["secret"])

    async def run(name: str) -> Result:
        return await run_shell(BLOCKS[name], env)

    spent = ok(await run("spend-with-key"))
    assert spent["transaction"]["key_id"] == key["id"]
    seen = ok(await run("get-key"))["key"]["budgets"][0]
    assert (seen["used_millicredits"], seen["remaining_millicredits"]) == ("1500", "498500")
    revoked = ok(await run("revoke-key"))["key"]
    assert "revoke_time" in revoked
    refused(await run("spend-with-key"), "Unauthenticated", "KEY_REVOKED")
