"""The Alembic migrations build exactly the schema the code declares
(server/db/schema.py), on SQLite and on PostgreSQL: a column, index or
constraint added to one and not the other fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from server.db.engine import Database
from server.db.schema import metadata


async def test_migrations_match_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    finally:
        await engine.dispose()
    assert diff == [], diff
