"""Pricing's SQL: the rate card versions, read whole into each process's
snapshot (they are immutable, so a refresh reads only the newer ones), and
the rows a publish reads and writes inside its ledger batch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.schema import rate_card_versions
from server.ledger.tx import LedgerTx

V = rate_card_versions.c


class PricingRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def versions_after(self, version: int) -> list[dict[str, Any]]:
        """The versions numbered above `version`, in order."""
        q = select(rate_card_versions).where(V.version > version).order_by(V.version)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]


async def latest(tx: LedgerTx) -> dict[str, Any] | None:
    """The highest-numbered version, read in the batch."""
    rows = await tx.rows(rate_card_versions).select(
        select(rate_card_versions).order_by(V.version.desc()).limit(1)
    )
    return rows[0] if rows else None


async def config_version(tx: LedgerTx, sha256: str) -> dict[str, Any] | None:
    """A version made from a rate card file with this content, if any."""
    rows = await tx.rows(rate_card_versions).select(
        select(rate_card_versions).where(V.published_by == "config", V.card_sha256 == sha256).limit(1)
    )
    return rows[0] if rows else None


def insert(tx: LedgerTx, row: dict[str, Any]) -> None:
    """A new version: the primary key decides between replicas numbering at once
    (the loser's batch is read again and numbers after the winner)."""
    tx.rows(rate_card_versions).insert(row)
