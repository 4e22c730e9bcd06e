"""`python -m server serve --workers N`: N serving processes on one PostgreSQL.

grpc.aio runs every call of a process on one event-loop thread, so one
process uses about one core. On a machine with more cores, N processes share
the gRPC and the HTTP port with SO_REUSEPORT: the kernel hands each new
connection to one of them (balancing is per connection, so clients need
several channels). They are replicas like those on several hosts
(docs/operations.md "Running N replicas"): each has its own ledger writer, jobs are
claimed with SKIP LOCKED, and WatchBalance events cross between them through
LISTEN/NOTIFY. This parent applies the migrations once, starts the
processes, forwards SIGTERM/SIGINT to them (each drains gracefully), and
when one of them exits on its own, stops the others and exits with its
status, for the service manager to restart the whole set.

SQLite takes one writer per file and is served by one process: N > 1 is refused.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from types import FrameType

from server.platform.config import Settings

log = logging.getLogger(__name__)

# How long the processes get to drain after SIGTERM before they are killed.
DRAIN_SECONDS = 30.0


def refusal(settings: Settings, workers: int) -> str | None:
    """Why `serve --workers N` cannot run with these settings, or None."""
    if workers > 1 and settings.is_sqlite:
        return (
            f"--workers {workers} needs PostgreSQL (BILLING_DATABASE_URL=postgresql+asyncpg://...): "
            "SQLite takes one writer per file, so it is served by one process; run `serve` without --workers"
        )
    if workers > 1 and (settings.grpc_port == 0 or settings.http_port == 0):
        return "--workers needs fixed ports: with BILLING_GRPC_PORT or BILLING_HTTP_PORT 0 each process would get its own"
    return None


def serve_workers(settings: Settings, workers: int) -> int:
    why = refusal(settings, workers)
    if why:
        print(f"python -m server: {why}", file=sys.stderr)
        return 2
    from server.db.engine import Database

    async def migrate() -> None:
        db = Database(settings.database_url)
        try:
            await db.migrate()
        finally:
            await db.dispose()

    asyncio.run(migrate())
    # The children read the same BILLING_* environment.
    command = [sys.executable, "-m", "server", "serve", "--worker-process"]
    procs = [subprocess.Popen(command) for _ in range(workers)]
    log.info("serving processes started", extra={"pids": [p.pid for p in procs], "grpc_port": settings.grpc_port})
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while not stopping:
            exited = [p for p in procs if p.poll() is not None]
            if exited:
                status = exited[0].returncode or 1
                log.error("a serving process exited; stopping the others", extra={"pid": exited[0].pid, "status": status})
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_SECONDS
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
