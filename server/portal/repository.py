"""Portal sessions' SQL. Writes are staged in a ledger batch (an exclusive
`ops.Call`); the session lookup of every page is one indexed read."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.schema import portal_sessions
from server.ledger.tx import LedgerTx
from server.portal.models import PortalRow


async def link(tx: LedgerTx, link_id: str) -> PortalRow | None:
    return await tx.rows(portal_sessions).get(link_id, lock=True)


def add_link(tx: LedgerTx, row: PortalRow) -> None:
    tx.rows(portal_sessions).insert(row)


def open_link(tx: LedgerTx, row: PortalRow, *, now_us: int, cookie_hash: str, session_expires_at_us: int) -> None:
    tx.rows(portal_sessions).update(
        row, opened_at_us=now_us, cookie_hash=cookie_hash, session_expires_at_us=session_expires_at_us
    )


async def read_link(engine: AsyncEngine, link_id: str) -> PortalRow | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(portal_sessions).where(portal_sessions.c.id == link_id))).mappings().first()
    return dict(row) if row else None


async def by_cookie(engine: AsyncEngine, cookie_hash: str) -> PortalRow | None:
    q = select(portal_sessions).where(portal_sessions.c.cookie_hash == cookie_hash)
    async with engine.connect() as conn:
        row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None
