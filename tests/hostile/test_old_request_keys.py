"""Request records stored under the key encoding before 0007
(`{role}/{subject}:{Method}:{request_id}`) are moved by migration 0014, and
the service looks up one key per request: a retry across the upgrade still
replays, and an old form that a new request could read as its own is never
replayed to it, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util

import grpc
from sqlalchemy import insert, select, update

from server.db.engine import MIGRATIONS_DIR
from server.db.schema import idempotency, transfers
from server.ledger import keys
from tests.calls import FREE, credits, spend
from tests.harness import Running, expect_error


def _before_0014() -> str:
    """The revision 0014 follows (whatever the chain it was merged into)."""
    path = MIGRATIONS_DIR / "versions" / "0014_old_request_keys.py"
    spec = importlib.util.spec_from_file_location("migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.down_revision)


def _downgrade(sync_conn, target: str) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    from tests.db.test_migrations import _alembic_config

    command.downgrade(_alembic_config(sync_conn), target)


def old_key(role: str, subject: str, method: str, request_id: str) -> str:
    return f"{role}/{subject}:{method}:{request_id}"


async def _as_before_0007(server: Running, rows: list[tuple[str, str, str]]) -> None:
    """Store the records of (user, method, request_id) under the old form, and
    put the database back at the revision before 0014, as an earlier release left it."""
    assert server.app is not None
    async with server.app.db.writer.begin() as conn:
        for user, method, rid in rows:
            await conn.execute(update(idempotency).where(idempotency.c.key == keys.idempotency("user", user, method, rid))
                               .values(key=old_key("user", user, method, rid)))
        # Back to the revision before 0014 the way a release would be: later
        # migrations are undone too, so that the restart runs them again.
        await conn.run_sync(_downgrade, _before_0014())


async def test_old_records_are_moved_and_replayed_once(server: Running) -> None:
    first = await spend(server, "olduser", 2_500, "before-upgrade")
    colon = await spend(server, "V", 1_000, "job:Spend:42")
    kept = await spend(server, "both", 500, "r")
    await _as_before_0007(server, [("olduser", "Spend", "before-upgrade"), ("V", "Spend", "job:Spend:42")])
    assert server.app is not None
    async with server.app.db.writer.begin() as conn:
        # A record of a subject no token may carry any more, and an old form
        # whose new key is stored as well.
        for key in (old_key("user", "mållory", "Spend", "x"), old_key("user", "both", "Spend", "r"),
                    old_key("user", "a/b", "Spend", "x"), "user/nocolon"):
            await conn.execute(insert(idempotency).values(key=key, fingerprint="f", response=b"r", created_at_us=1))
    await server.restart()  # migrates to head
    async with server.app.db.reader.connect() as conn:
        stored = set((await conn.execute(select(idempotency.c.key))).scalars())
        n_transfers = (await conn.execute(select(transfers.c.id))).all()
    assert not any(k.startswith(("user/", "service/", "admin/")) for k in stored), stored
    # The plain record replays: the same transaction, charged once.
    again = await spend(server, "olduser", 2_500, "before-upgrade")
    assert again.transaction.id == first.transaction.id
    assert await credits(server, "olduser") == FREE - 2_500
    await expect_error(spend(server, "olduser", 3_000, "before-upgrade"), grpc.StatusCode.FAILED_PRECONDITION,
                       "REQUEST_ID_REUSED")
    # A request_id holding `:` could be another subject's old request: never
    # replayed, never applied again.
    await expect_error(spend(server, "V", 1_000, "job:Spend:42"), grpc.StatusCode.FAILED_PRECONDITION,
                       "REQUEST_ID_EXPIRED")
    assert await credits(server, "V") == FREE - 1_000
    again = await spend(server, "both", 500, "r")
    assert again.transaction.id == kept.transaction.id
    async with server.app.db.reader.connect() as conn:
        assert len((await conn.execute(select(transfers.c.id))).all()) == len(n_transfers)
    assert colon.transaction.id


async def test_the_writer_looks_up_one_key_per_request(server: Running) -> None:
    """No lookup under the old form remains: an old-form record found at
    startup (written after the migration) is not a replay."""
    assert server.app is not None
    first = await spend(server, "newuser", 1_000, "r1")
    async with server.app.db.writer.begin() as conn:
        await conn.execute(insert(idempotency).values(
            key=old_key("user", "newuser", "Spend", "r2"), fingerprint="f", response=b"", created_at_us=1))
    await server.restart()
    second = await spend(server, "newuser", 1_000, "r2")
    assert second.transaction.id != first.transaction.id
    assert await credits(server, "newuser") == FREE - 2_000
    async with server.app.db.writer.begin() as conn:
        await conn.execute(idempotency.delete().where(idempotency.c.key == old_key("user", "newuser", "Spend", "r2")))
