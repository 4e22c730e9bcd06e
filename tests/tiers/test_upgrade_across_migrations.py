"""An Enterprise upgrade granted by a release older than the key encoding of
server/ledger/keys.py, then repeated in the same month by this release: the
grant of that month is found under its re-keyed name, never made twice."""

from __future__ import annotations

from datetime import UTC, datetime

from flownexus.billing.v1 import common_pb2, tier_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from server.ledger import keys
from server.platform.clock import ManualClock, month_bounds, to_us
from tests.calls import balance
from tests.db.test_migrations import _alembic
from tests.harness import Running, auth

FREE = 100_000


def _upgrade(request_id: str) -> tier_pb2.UpgradeTierRequest:
    return tier_pb2.UpgradeTierRequest(user_id="eve", tier=common_pb2.TIER_ENTERPRISE, request_id=request_id,
                                       monthly_credits_millicredits=3_000_000)


async def test_an_upgrade_granted_before_the_re_keying_is_not_granted_again(db_url: str, clock: ManualClock) -> None:
    clock.set(datetime(2031, 4, 21, tzinfo=UTC))  # 10 of April's 30 days left
    start, _ = month_bounds(to_us(datetime(2031, 4, 21, tzinfo=UTC)))
    old_key, new_key = f"allowance:upgrade:eve:{start}", keys.allowance_upgrade("eve", start)
    server = await Running(db_url, clock).start()
    try:
        await server.s.tier.UpgradeTier(_upgrade("e1"), metadata=auth("root", "admin"))
    finally:
        await server.stop()

    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            # The grant as the release before migration 0007 keyed it, and the
            # database as that release left it: migration 0007 not yet run.
            await conn.execute(text("UPDATE transfers SET key = :old WHERE key IN (:old, :new)"),
                               {"old": old_key, "new": new_key})
            await conn.execute(text("DROP INDEX ix_lots_expiry"))
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            await conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
            await conn.run_sync(_alembic, "0007")
            await conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
            stored = (await conn.execute(
                text("SELECT key FROM transfers WHERE kind = 'allowance_grant' AND key <> :monthly"),
                {"monthly": keys.allowance("eve", start)},
            )).scalars().all()
        assert stored == [new_key]
    finally:
        await engine.dispose()

    server = await Running(db_url, clock).start()
    try:
        again = await server.s.tier.UpgradeTier(_upgrade("e2"), metadata=auth("root", "admin"))
        assert again.status == tier_pb2.UPGRADE_STATUS_COMPLETED
        assert (await balance(server, "eve")).credits_millicredits == FREE + 1_000_000  # 3,000,000 * 10/30, once
        await server.verify()
    finally:
        await server.stop()
