"""The org commands of docs/operations.md, run for real through grpcurl:
create an org, add a member with a budget, fund it, a service spends for
the member, the report by member, the org's tier and budget events, removal."""

from __future__ import annotations

from tests.docs.test_runbook import ok, refused, runbook_env  # noqa: F401  (a fixture)
from tests.harness import Running
from tests.runbook_tools import Result, run_shell, runbook_blocks

BLOCKS = runbook_blocks()


async def test_org_commands(server: Running, runbook_env: dict[str, str]) -> None:  # noqa: F811
    env = dict(runbook_env, ADDR=server.target)

    async def run(name: str) -> Result:
        return await run_shell(BLOCKS[name], env)

    org = ok(await run("create-org"))["org"]
    assert org["id"].startswith("org_") and org["role"] == "ORG_ROLE_OWNER"
    env["ORG_ID"] = org["id"]
    member = ok(await run("add-member"))["member"]
    assert member["user_id"] == "bob" and member["budgets"][0]["limit_millicredits"] == "50000"
    ok(await run("adjust-org-balance"))
    spent = ok(await run("spend-for-member"))
    assert spent["transaction"]["member_id"] == "bob" and spent["credits_millicredits"] == "97500"
    listed = ok(await run("list-members"))["members"]
    assert {m["user_id"] for m in listed} == {"alice", "bob"}
    report = ok(await run("org-spending-report"))
    assert report["members"] == [{"member_id": "bob", "spent_millicredits": "2500", "operations": "1"}]
    assert ok(await run("org-tier"))["tier"] == "TIER_FREE"
    assert ok(await run("org-budget-events")).get("events", []) == []  # bob used 5 % of his day
    ok(await run("remove-member"))
    env_spend = BLOCKS["spend-for-member"].replace("runbook-org-spend-1", "runbook-org-spend-2")
    refused(await run_shell(env_spend, env), "PermissionDenied", "NOT_ORG_MEMBER")
