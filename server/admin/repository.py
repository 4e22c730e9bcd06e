"""Admin's SQL: the audit trail, read outside the writer."""

from __future__ import annotations

import json

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from server.admin.models import AdminActionView
from server.db.schema import admin_actions


class AdminRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def actions(
        self, *, user_id: str, action: str, actor: str, before: tuple[int, str] | None, limit: int
    ) -> list[AdminActionView]:
        t = admin_actions
        q = select(t).order_by(t.c.created_at_us.desc(), t.c.id.desc()).limit(limit)
        if user_id:
            q = q.where(t.c.user_id == user_id)
        if action:
            q = q.where(t.c.action == action)
        if actor:
            q = q.where(t.c.actor == actor)
        if before is not None:
            q = q.where(tuple_(t.c.created_at_us, t.c.id) < tuple_(*before))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [
            AdminActionView(
                id=r["id"], actor=r["actor"], action=r["action"], user_id=r["user_id"], reason=r["reason"],
                request_id=r["request_id"], transfer_ids=[int(i) for i in json.loads(r["transfer_ids"])],
                created_at_us=r["created_at_us"], details=r["details"],
            )
            for r in rows
        ]
