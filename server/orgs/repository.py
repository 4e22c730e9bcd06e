"""Orgs' SQL: an org, a membership (one indexed read per call that names an
org), the caller's orgs and an org's members; the rows inside a ledger batch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.fastread import FastReader
from server.db.schema import org_members, orgs
from server.ledger import keys
from server.ledger.tx import LedgerTx

# By primary key: a removal is seen by the member's very next call, in every
# process, with no cache to invalidate.
MEMBERSHIP = "SELECT role, removed_at_us FROM org_members WHERE id = ?"


class OrgsRepository:
    def __init__(self, engine: AsyncEngine, fast: FastReader) -> None:
        self.engine = engine
        self.fast = fast

    async def role(self, org_id: str, user_id: str) -> str:
        """The user's role in the org; "" when not a member (never or no longer)."""
        found = await self.fast.fetchrow(MEMBERSHIP, keys.org_member(org_id, user_id))
        if found is None or found[1]:
            return ""
        return str(found[0])

    async def org(self, org_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(orgs).where(orgs.c.id == org_id))).mappings().first()
        return dict(found) if found is not None else None

    async def member(self, org_id: str, user_id: str) -> dict[str, Any] | None:
        q = select(org_members).where(org_members.c.id == keys.org_member(org_id, user_id))
        async with self.engine.connect() as conn:
            found = (await conn.execute(q)).mappings().first()
        return dict(found) if found is not None else None

    async def windows_ended(self, current: list[tuple[str, str, int]], limit: int) -> list[tuple[str, str]]:
        """(org id, user id) of members with use recorded in a window that has
        ended; `current` gives each counter's (start column, use column, start
        of the current window). As for keys."""
        m = org_members.c
        ended = [and_(m[start_col] < start, m[used_col] > 0) for start_col, used_col, start in current]
        q = select(m.org_id, m.user_id).where(or_(*ended)).order_by(m.id).limit(limit)
        async with self.engine.connect() as conn:
            return [(str(o), str(u)) for o, u in (await conn.execute(q)).all()]

    async def orgs_of(self, user_id: str, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
        """The user's live memberships with their orgs, oldest first, after (added_at_us, org_id)."""
        m = org_members.c
        q = (
            select(orgs, m.role, m.added_at_us)
            .join(org_members, m.org_id == orgs.c.id)
            .where(m.user_id == user_id, m.removed_at_us == 0)
        )
        if after is not None:
            at, oid = after
            q = q.where(or_(m.added_at_us > at, and_(m.added_at_us == at, m.org_id > oid)))
        q = q.order_by(m.added_at_us, m.org_id).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def members(self, org_id: str, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
        """An org's live members, oldest first, after (added_at_us, user_id)."""
        m = org_members.c
        q = select(org_members).where(m.org_id == org_id, m.removed_at_us == 0)
        if after is not None:
            at, uid = after
            q = q.where(or_(m.added_at_us > at, and_(m.added_at_us == at, m.user_id > uid)))
        q = q.order_by(m.added_at_us, m.user_id).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]


# ---- inside a ledger batch (under the org wallet's lock) -------------------------------------


async def locked_org(tx: LedgerTx, org_id: str) -> dict[str, Any] | None:
    return await tx.rows(orgs).get(org_id, lock=True)


async def locked_member(tx: LedgerTx, org_id: str, user_id: str) -> dict[str, Any] | None:
    return await tx.rows(org_members).get(keys.org_member(org_id, user_id), lock=True)


async def count_orgs_created(tx: LedgerTx, user_id: str) -> int:
    """Orgs a user has created, under their wallet's lock (the cap per user)."""
    return int(await tx.fetch_scalar(select(func.count()).select_from(orgs).where(orgs.c.created_by == user_id)))


async def owners(tx: LedgerTx, org_id: str) -> list[str]:
    """The org's live owners, as this batch sees them (its staged changes included)."""
    m = org_members.c
    q = select(org_members).where(m.org_id == org_id, m.role == "owner", m.removed_at_us == 0)
    rows = await tx.rows(org_members).select(q)
    # A row changed earlier in this batch is the cached one: judge it as changed.
    return sorted(r["user_id"] for r in rows if r["role"] == "owner" and not r["removed_at_us"])


def insert_org(tx: LedgerTx, row: dict[str, Any]) -> None:
    tx.rows(orgs).insert(row)


def insert_member(tx: LedgerTx, org_id: str, user_id: str, role: str, budgets: str = "[]") -> dict[str, Any]:
    return tx.rows(org_members).insert({
        "id": keys.org_member(org_id, user_id), "org_id": org_id, "user_id": user_id, "role": role,
        "added_at_us": tx.now_us, "removed_at_us": 0, "budgets": budgets,
    })


def update_member(tx: LedgerTx, row: dict[str, Any], **values: Any) -> None:
    tx.rows(org_members).update(row, **values)
