"""WatchBalance fan-out across replicas on one PostgreSQL (LISTEN/NOTIFY).

The ledger writer sends ONE notification per committed batch, never one per
spend (NOTIFY takes a global lock at commit): `pg_notify` runs inside the
batch's own transaction, so PostgreSQL delivers it exactly when, and only if,
the batch commits. The payload is compact JSON carrying the batch's events;
a batch whose events exceed PostgreSQL's 8,000-byte payload limit is split
into a few chunks, still in the same transaction.

Every replica LISTENs on a dedicated asyncpg connection (reconnecting with
backoff), skips its own notifications (they carry its replica id; its own
subscribers were served straight from the writer) and hands the others to its
local WatchHub. After a reconnect, local subscribers get a fresh snapshot,
since notifications sent while disconnected are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import asyncpg

from server.balance.watch import RESYNC, WatchHub
from server.db.engine import ping
from server.ledger.model import BalanceEvent, TransferView
from server.ledger.ops import Op
from server.ledger.tx import LedgerTx

log = logging.getLogger(__name__)

CHANNEL = "billing_events"
MAX_PAYLOAD = 7_900  # PostgreSQL refuses payloads of 8,000 bytes and more


def encode_event(e: BalanceEvent) -> list[Any]:
    t = e.transfer
    transfer = (
        None
        if t is None
        else [t.id, t.kind, t.amount, t.balance_after, t.description, t.category, t.ref, t.created_at_us, t.metadata]
    )
    return [e.user_id, e.kind, e.credits, e.pending, transfer, e.message, e.payment_url, e.key_id, e.member]


def decode_event(raw: list[Any]) -> BalanceEvent:
    user_id, kind, credits, pending, t, message, payment_url = raw[:7]
    # A replica of an earlier release sends seven fields: no key or member.
    key_id, member = (raw[7], raw[8]) if len(raw) >= 9 else ("", "")
    transfer = None
    if t is not None:
        tid, tkind, amount, after, description, category, ref, created, metadata = t
        transfer = TransferView(tid, tkind, amount, after, description, category, ref, created, metadata)
    return BalanceEvent(user_id, kind, credits, pending, transfer, message, payment_url, key_id, member)


def payloads(replica: str, batch: int, events: list[BalanceEvent]) -> list[str]:
    """Compact JSON payloads under the size limit: usually exactly one."""
    chunks: list[list[list[Any]]] = [[]]
    size = 0
    for e in events:
        item = encode_event(e)
        n = len(json.dumps(item, separators=(",", ":")).encode()) + 1
        if chunks[-1] and size + n > MAX_PAYLOAD - 100:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return [
        json.dumps({"r": replica, "b": batch, "c": i, "n": len(chunks), "e": c}, separators=(",", ":"))
        for i, c in enumerate(chunks)
    ]


class PgFanout:
    def __init__(self, dsn: str, hub: WatchHub, *, replica_id: str | None = None, reconnect_max: float = 5.0) -> None:
        self.dsn = dsn
        self.hub = hub
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.reconnect_max = reconnect_max
        self.batches_sent = 0  # batches that carried events (one NOTIFY each, unless chunked)
        self.notifications_sent = 0
        self.received = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing = False

    # ---- sending (inside the batch transaction) ------------------------------------------

    async def before_flush(self, tx: LedgerTx, ops: list[Op]) -> None:
        """A LedgerWriter.before_flush hook: runs last, inside the transaction.
        The NOTIFY travels with the batch's write-back statement (one round trip)."""
        if tx.events:
            self.batches_sent += 1
            for p in payloads(self.replica_id, self.batches_sent, tx.events):
                tx.notify_replicas(CHANNEL, p)
                self.notifications_sent += 1

    # ---- receiving ------------------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            msg = json.loads(payload)
            if msg.get("r") == self.replica_id:
                return
            events = [decode_event(e) for e in msg["e"]]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed fan-out payload")
            return
        self.received += 1
        self.hub.deliver(events)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="pg-fanout")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 10)

    async def _supervise(self) -> None:
        delay = 0.1
        first = True
        while not self._closing:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._conn = conn
                self._listening.set()
                if not first:
                    log.info("fan-out listener reconnected; resyncing local watchers")
                    self._resync_all()
                first, delay = False, 0.1
                while not lost.is_set() and not conn.is_closed():
                    # A cheap liveness check also notices a silently dead socket.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 15)
                    if not lost.is_set():
                        try:
                            await asyncio.wait_for(ping(conn), 10)
                        except Exception:
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fan-out listener unavailable: %s", type(exc).__name__)
            finally:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close(timeout=2)
                    self._conn = None
            if not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)

    def _resync_all(self) -> None:
        for subs in list(self.hub._subs.values()):
            for sub in list(subs):
                sub.offer(RESYNC)

    async def stop(self) -> None:
        self._closing = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
