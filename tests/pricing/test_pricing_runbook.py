"""The price commands of docs/operations.md, run for real through grpcurl:
the meters, an estimate, a scheduled publish (and its retry), the card on
each side of its instant and the versions."""

from __future__ import annotations

from datetime import UTC

from server.platform.clock import from_us
from tests.docs.test_runbook import ok, refused, runbook_env  # noqa: F401  (a fixture)
from tests.harness import Running
from tests.runbook_tools import Result, run_shell, runbook_blocks

BLOCKS = runbook_blocks()
HOUR_US = 3_600_000_000


def rfc3339(us: int) -> str:
    return from_us(us).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_price_commands(server: Running, runbook_env: dict[str, str]) -> None:  # noqa: F811
    change = (server.clock.now_us() // 1_000_000 + 24 * 3600) * 1_000_000
    env = dict(runbook_env, ADDR=server.target, EFFECTIVE_TIME=rfc3339(change))

    async def run(name: str, **extra: str) -> Result:
        return await run_shell(BLOCKS[name], dict(env, **extra))

    meters = ok(await run("list-meters"))
    assert meters["version"] == "1" and len(meters["meters"]) == 5
    assert ok(await run("estimate-cost")) == {
        "amount_millicredits": "14400", "version": "1", "unit_price_millicredits": "4", "per_units": "1"}
    made = ok(await run("publish-rate-card"))["rate_card"]
    assert (made["version"], made["effective_time"], made["published_by"]) == ("2", rfc3339(change), "ops")
    assert ok(await run("publish-rate-card"))["rate_card"] == made  # the retry: the same version
    refused(await run("publish-rate-card", ADMIN_TOKEN=env["TOKEN"]), "PermissionDenied", "ROLE_REQUIRED")
    refused(await run("publish-rate-card", EFFECTIVE_TIME=rfc3339(server.clock.now_us() - HOUR_US)),
            "InvalidArgument", "EFFECTIVE_TIME_IN_PAST")
    at_change = ok(await run("get-rate-card"))["rate_card"]
    assert at_change["version"] == "2"
    sandbox = next(m for m in at_change["meters"] if m["name"] == "sandbox.seconds")
    assert {p["dimensions"]["size"]: p["unit_price_millicredits"] for p in sandbox["prices"]} == {
        "small": "1", "medium": "3", "large": "5"}
    before = ok(await run("get-rate-card", EFFECTIVE_TIME=rfc3339(change - 1_000_000)))["rate_card"]
    assert before["version"] == "1"
    versions = ok(await run("list-rate-card-versions"))["versions"]
    assert [v["version"] for v in versions] == ["2", "1"]
