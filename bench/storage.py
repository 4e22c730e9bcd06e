"""Storage cost of one Reserve/Release cycle on SQLite (docs/reliability.md).

`python -m bench.storage [N]`: a real server on a fresh SQLite file, N cycles
of one user with an empty and with a 500-character description, then the
same after the retention job pruned every stored response. Size is the file
plus its WAL after a checkpoint."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

from flownexus.billing.v1 import usage_pb2

from server.platform.clock import ManualClock, to_us
from tests.harness import PINNED_START, Running, auth, serving


def size(db: Path) -> int:
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def cycles(server: Running, n: int, tag: str, description: str) -> None:
    md = auth("looper")
    for i in range(n):
        req = usage_pb2.ReserveRequest(amount_millicredits=1, request_id=f"{tag}r{i}", description=description)
        hold = (await server.s.usage.Reserve(req, metadata=md)).hold
        await server.s.usage.Release(usage_pb2.ReleaseRequest(hold_id=hold.id, request_id=f"{tag}x{i}"), metadata=md)


async def measure(server: Running, db: Path, n: int, tag: str, description: str) -> float:
    before = size(db)
    await cycles(server, n, tag, description)
    return (size(db) - before) / n


async def main(n: int) -> None:
    db = Path(tempfile.mkdtemp()) / "storage.db"
    clock = ManualClock(to_us(PINNED_START))
    async with serving(f"sqlite+aiosqlite:///{db}", clock) as server:
        assert server.app is not None
        await cycles(server, 50, "warm", "")
        print(f"empty description: {await measure(server, db, n, 'e', ''):.0f} bytes per cycle")
        print(f"500-character description: {await measure(server, db, n, 'd', 'd' * 500):.0f} bytes per cycle")
        clock.advance(8 * 86_400)
        prune = server.app.workers.jobs["prune_responses"]
        pruned = total = await prune()
        while pruned:
            pruned = await prune()
            total += pruned
        after = await measure(server, db, n, "p", "d" * 500)
        print(f"after pruning {total} responses, 500 characters: {after:.0f} bytes per cycle")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000))
