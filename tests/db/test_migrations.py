"""The Alembic migrations build exactly the schema the code declares
(server/db/schema.py), on SQLite and on PostgreSQL: a column, index or
constraint added to one and not the other fails here, not in production."""

from __future__ import annotations

import re
import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, text
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import CreateIndex

from server.db.engine import Database
from server.db.schema import metadata


async def test_migrations_match_the_declared_schema(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    sqlite = empty_db_url.startswith("sqlite")
    # SQLAlchemy cannot reflect SQLite's expression indexes; those are
    # compared here by their DDL instead.
    expression_indexes = {
        i.name: i for t in metadata.tables.values() for i in t.indexes if sqlite and any(
            not isinstance(e, Column) for e in i.expressions)
    }

    def include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
        return not (type_ == "index" and name in expression_indexes)

    engine = create_async_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
                diff = await conn.run_sync(lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": include}), metadata))
            stored = dict((await conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))).all()) \
                if sqlite else {}
    finally:
        await engine.dispose()
    assert diff == [], diff

    def shape(ddl: str) -> str:
        return re.sub(r"[\s()]", "", ddl)

    for name, index in expression_indexes.items():
        declared = str(CreateIndex(index).compile(dialect=sqlite_dialect()))
        assert shape(stored.get(name) or "") == shape(declared), (name, stored.get(name), declared)


def _alembic_config(sync_conn):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    from server.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    return cfg


def _alembic(sync_conn, target: str) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    command.upgrade(_alembic_config(sync_conn), target)


async def test_user_keyed_transfers_are_re_keyed_exactly(empty_db_url: str) -> None:
    """Keys an earlier release built by joining a user id with `:` get the
    unambiguous encoding; the parts come from each row's own accounts and
    columns, so the user `upgrade:x` and the user `x` stay apart."""
    from sqlalchemy import insert, select

    from server.db.schema import transfers
    from server.ledger import keys

    rows = [
        # (old key, kind, debit, credit, category, ref, expected new key)
        ("allowance:upgrade:x:1700", "allowance_grant", "system:tier_allowances", "wallet:upgrade:x", "", "",
         keys.allowance("upgrade:x", 1700)),
        ("allowance:upgrade:x:1700", "allowance_grant", "system:tier_allowances", "wallet:x", "", "",
         keys.allowance_upgrade("x", 1700)),
        ("allowance-expiry:a:b:99", "allowance_expiry", "wallet:a:b", "system:tier_allowances", "", "",
         keys.allowance_expiry("a:b", 99, 1)),
        ("allowance-expiry:a:b:99:2", "allowance_expiry", "wallet:a:b", "system:tier_allowances", "", "",
         keys.allowance_expiry("a:b", 99, 2)),
        ("award:u:challenge:r1:challenge:x", "award", "system:earnings", "wallet:u:challenge:r1", "challenge", "x",
         keys.award("u:challenge:r1", "challenge", "x")),
        ("allowance:invoice:in_1", "allowance_grant", "system:tier_allowances", "wallet:p", "", "in_1",
         "allowance:invoice:in_1"),
        ("grant:pay_1", "purchase", "system:stripe_purchases", "wallet:p", "", "", "grant:pay_1"),
    ]
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0006")
            for n, (old, kind, debit, credit, category, ref, _) in enumerate(rows, 1):
                # Two rows may not share a key: the second user's grant was refused then.
                key = old if n != 2 else old + ":legacy-clash"
                await conn.execute(insert(transfers).values(
                    id=n, key=key, debit_account=debit, credit_account=credit, amount=1, kind=kind,
                    description="", category=category, ref=ref, metadata="{}",
                    debit_balance_after=0, credit_balance_after=0, created_at_us=0,
                ))
            await conn.run_sync(_alembic, "head")
            found = dict((await conn.execute(select(transfers.c.id, transfers.c.key))).all())
    finally:
        await engine.dispose()
    for n, (*_, expected) in enumerate(rows, 1):
        if n == 2:
            assert found[n] == "allowance:upgrade:x:1700:legacy-clash"  # not what its row would make: kept
        else:
            assert found[n] == expected, (n, found[n])


def _alembic_down(sync_conn, target: str) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    command.downgrade(_alembic_config(sync_conn), target)


async def test_saved_cards_move_from_refill_configs_to_payments_and_back(empty_db_url: str) -> None:
    """Migration 0011: every card refill_configs held (a resolved card with its
    details, a setup link's card not yet resolved) moves to saved_cards, and
    the downgrade puts it back on the config."""
    base = {"enabled": True, "threshold": 1, "amount_cents": 500, "state": "active", "paused_reason": "",
            "recovery_url": "", "last_failure_reason": "", "cap_blocked_until_us": 0, "created_at_us": 1,
            "updated_at_us": 7}
    none = {"payment_method_id": None, "pm_brand": "", "pm_last4": "", "pm_exp_month": 0, "pm_exp_year": 0,
            "setup_intent_id": None}
    configs = {
        "carded": {**none, "payment_method_id": "pm_1", "pm_brand": "visa", "pm_last4": "4242", "pm_exp_month": 12,
                   "pm_exp_year": 2040},
        "setup": {**none, "setup_intent_id": "seti_1"},
        "bare": none,
    }
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0010")
            for user, card in configs.items():
                columns = {"user_id": user, **base, **card}
                await conn.execute(text(f"INSERT INTO refill_configs ({', '.join(columns)}) "
                                        f"VALUES ({', '.join(':' + c for c in columns)})"), columns)
            await conn.run_sync(_alembic, "0011")
            moved = {r.user_id: tuple(r)[1:] for r in (await conn.execute(text(
                "SELECT user_id, payment_method_id, brand, last4, exp_month, exp_year, setup_intent_id, updated_at_us "
                "FROM saved_cards ORDER BY user_id"))).all()}
            assert moved == {"carded": ("pm_1", "visa", "4242", 12, 2040, None, 7),
                             "setup": (None, "", "", 0, 0, "seti_1", 7)}
            await conn.run_sync(_alembic_down, "0010")
            back = {r.user_id: dict(r._mapping) for r in (await conn.execute(text(
                "SELECT user_id, payment_method_id, pm_brand, pm_last4, pm_exp_month, pm_exp_year, setup_intent_id "
                "FROM refill_configs"))).all()}
    finally:
        await engine.dispose()
    for user, card in configs.items():
        assert back[user] == {"user_id": user, **card}, user


async def test_orgs_tables_come_and_go_with_their_migration(empty_db_url: str) -> None:
    """Migration 0017: orgs and org_members with their indexes; the downgrade
    drops them and leaves the rest, and the upgrade builds them again."""
    from sqlalchemy import inspect

    def tables(sync):  # type: ignore[no-untyped-def]
        return set(inspect(sync).get_table_names())

    engine = create_async_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0017")
            assert {"orgs", "org_members"} <= await conn.run_sync(tables)
            await conn.execute(text(
                "INSERT INTO org_members (id, org_id, user_id, role, added_at_us, removed_at_us, budgets, hour_start_us, "
                "hour_used, day_start_us, day_used, month_start_us, month_used, lifetime_used) "
                "VALUES ('m', 'org_1', 'u', 'owner', 1, 0, '[]', 0, 0, 0, 0, 0, 0, 0)"))
            await conn.run_sync(_alembic_down, "0016")
            left = await conn.run_sync(tables)
            assert not {"orgs", "org_members"} & left and "api_keys" in left
            columns = await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("transfers")})
            assert "member_id" not in columns and "key_id" in columns
            await conn.run_sync(_alembic, "0017")
            assert {"orgs", "org_members"} <= await conn.run_sync(tables)
    finally:
        await engine.dispose()


async def test_key_counters_move_to_their_usage_rows_and_back(empty_db_url: str) -> None:
    """Migration 0021: each key's use counters (and its next reset) move from
    its api_keys row to a key_usage row of its own, values kept; the
    downgrade puts them back on the key's row."""
    from sqlalchemy import inspect

    counters = ("hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used",
                "lifetime_used", "resets_at_us")
    keys = {"key_a": (3600, 5, 86400, 7, 2592000, 9, 11, 7200), "key_b": (0, 0, 0, 0, 0, 0, 0, 0)}
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0020")
            for key_id, values in keys.items():
                row = {"id": key_id, "user_id": "u", "label": "k", "secret_hash": key_id, "secret_prefix": "fnk_",
                       "budgets": "[]", "categories": "[]", "max_spend": 0, "expires_at_us": 0, "revoked_at_us": 0,
                       "created_by": "", "created_at_us": 1, **dict(zip(counters, values, strict=True))}
                await conn.execute(text(f"INSERT INTO api_keys ({', '.join(row)}) "
                                        f"VALUES ({', '.join(':' + c for c in row)})"), row)
            await conn.run_sync(_alembic, "0021")
            moved = {r[0]: tuple(r[1:]) for r in (await conn.execute(text(
                f"SELECT id, {', '.join(counters)} FROM key_usage ORDER BY id"))).all()}
            assert moved == keys
            columns = await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("api_keys")})
            assert not set(counters) & columns and "budgets" in columns
            await conn.run_sync(_alembic_down, "0020")
            back = {r[0]: tuple(r[1:]) for r in (await conn.execute(text(
                f"SELECT id, {', '.join(counters)} FROM api_keys ORDER BY id"))).all()}
            assert back == keys
            assert "key_usage" not in await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_the_usage_hold_index_leaves_out_spends(empty_db_url: str) -> None:
    """transfer_usage's hold_id index covers only the rows that name a hold:
    a priced Spend (most rows, hold_id NULL) adds no entry to it."""
    db = Database(empty_db_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            if empty_db_url.startswith("sqlite"):
                q = "SELECT sql FROM sqlite_master WHERE name = 'ix_transfer_usage_hold_id'"
            else:
                q = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_transfer_usage_hold_id'"
            ddl = (await conn.execute(text(q))).scalar_one()
    finally:
        await engine.dispose()
    assert re.search(r"WHERE \(?hold_id IS NOT NULL\)?", ddl), ddl
