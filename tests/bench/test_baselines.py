"""The raw-driver baselines of `make bench` run the ledger's own statements on
its real tables: a column added to a table must reach them, or the bench
breaks after the suite has passed."""

from __future__ import annotations

import json
import subprocess
import sys

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench.raw_ledger import migrate


async def test_same_schema_baseline_writes_the_ledgers_rows(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await migrate(db_url)
    out = tmp_path / "raw.json"
    cfg = {"db": "sqlite" if db_url.startswith("sqlite") else "postgres", "accounts": 20, "batch": 10,
           "warmup": 0, "duration": 0.3, "out": str(out), "migrated": True,
           "path": db_url.split(":///", 1)[1] if db_url.startswith("sqlite") else "",
           "dsn": db_url.replace("+asyncpg", ""), "url": db_url}
    done = subprocess.run([sys.executable, "-m", "bench.raw_ledger", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["items"] > 0 and result["items"] == result["commits"] * 10
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as con:
            stored = (await con.execute(sa.text("SELECT count(*) FROM transfers WHERE kind = 'spend'"))).scalar()
    finally:
        await engine.dispose()
    assert stored is not None and stored >= result["items"]
