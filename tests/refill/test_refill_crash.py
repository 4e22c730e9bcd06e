"""Auto-refill survives a real crash: the server is killed with
SIGKILL right after the triggering Spend commits; on restart the refill
still happens, exactly once.

The billing server runs as a subprocess (`python -m server serve`) against
localstripe behind the Checkout fake (tests/stripe_fake.py), on SQLite and
PostgreSQL:

1. first run with a one-hour worker interval, so the refill worker cannot run
   before the kill: the user saves a card (setup link, signed webhook) and
   enables auto-refill; a Spend takes the balance below the threshold and,
   as soon as its response arrives, the process gets `kill -9`;
2. the database (read-only, straight from the file/server) holds the durable
   refill job and no charge happened: no PaymentIntent, no auto_refill payment,
   no grant;
3. second run with a 0.3 s worker interval: within a bounded wait the refill is
   paid with exactly one PaymentIntent and exactly one `grant:{payment_id}`
   transfer, the balance is back above the threshold, and several more worker
   intervals charge nothing more (nor does a late `payment_intent.succeeded`);
4. graceful stop, then `python -m server verify` exits 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
from flownexus.billing.v1 import balance_pb2, refill_pb2, usage_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import JWT_SECRET, PG_DSN, WAIT, Stubs, auth, free_port, run_cmd
from tests.stripe_fake import API_KEY, WEBHOOK_SECRET, StripeFake, event

ROOT = Path(__file__).resolve().parents[2]
USER = "crash-refill-user"
FREE = 100_000  # the free allowance, millicredits
THRESHOLD = 50_000  # 50 credits
SPEND = 60_000  # leaves 40 credits: below the threshold
AMOUNT_CENTS = 1_000  # $10 buys 100 credits
CREDITS = 100_000
INTERVAL = 0.3  # the worker interval after the restart, seconds
WAIT_PAID = WAIT  # bound on the wait for the refill after the restart (only a hang reaches it)


class ServerProcess:
    """`python -m server serve` as a child process; the event loop never blocks on it."""

    def __init__(self, url: str, workdir: Path, stripe_url: str) -> None:
        self.url = url
        self.workdir = workdir
        self.stripe_url = stripe_url
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    def env(self, worker_interval: float = 3600.0) -> dict[str, str]:
        return {
            **os.environ,
            "BILLING_DATABASE_URL": self.url,
            "BILLING_GRPC_HOST": "127.0.0.1",
            "BILLING_GRPC_PORT": str(self.grpc_port),
            "BILLING_HTTP_HOST": "127.0.0.1",
            "BILLING_HTTP_PORT": str(self.http_port),
            "BILLING_JWT_SECRET": JWT_SECRET,
            "BILLING_SHUTDOWN_GRACE_SECONDS": "0",  # no balancer here: drain at once
            "BILLING_VAR_DIR": str(self.workdir),
            "BILLING_LOG_LEVEL": "WARNING",
            "BILLING_WORKER_INTERVAL_SECONDS": str(worker_interval),
            "BILLING_STRIPE_API_KEY": API_KEY,
            "BILLING_STRIPE_API_BASE": self.stripe_url,
            "BILLING_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated"), os.environ.get("PYTHONPATH", "")]),
        }

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/webhooks/stripe"

    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def log_tail(self) -> str:
        return self.log_path().read_bytes()[-3000:].decode(errors="replace")

    async def start(self, worker_interval: float) -> None:
        self.starts += 1
        with open(self.log_path(), "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "serve", cwd=ROOT, env=self.env(worker_interval), stdout=log, stderr=log
            )
        deadline = time.monotonic() + WAIT
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as ch, aiohttp.ClientSession() as http:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.proc.returncode is None, f"server exited with {self.proc.returncode}: {self.log_tail()}"
                try:
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        async with http.get(f"http://127.0.0.1:{self.http_port}/healthz") as h:
                            if h.status == 200:
                                return
                except (grpc.aio.AioRpcError, aiohttp.ClientError):
                    pass
                assert time.monotonic() < deadline, "server did not become healthy: " + self.log_tail()
                await asyncio.sleep(0.1)

    async def kill9(self) -> None:
        assert self.proc is not None and self.proc.returncode is None
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = await asyncio.wait_for(self.proc.wait(), WAIT)
        assert rc == -signal.SIGKILL, rc

    async def stop(self) -> int:
        """SIGTERM and wait (the graceful drain); SIGKILL if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.returncode is not None:
            return self.proc.returncode
        self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), WAIT)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


# ---- read-only database access (no server code involved) ----------------------------------------


async def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql` (qmark placeholders), read-only, straight from the database."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]

        def read() -> list[tuple[Any, ...]]:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                return [tuple(r) for r in con.execute(sql, params)]
            finally:
                con.close()

        return await asyncio.to_thread(read)
    n = 0

    def numbered(_: Any) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    pg_sql = re.sub(r"\?", numbered, sql)
    dsn = PG_DSN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "on"})
    try:
        return [tuple(r) for r in await conn.fetch(pg_sql, *params)]
    finally:
        await conn.close()


async def refill_jobs(url: str) -> list[tuple[Any, ...]]:
    return await query(url, "SELECT id, status, payment_id, attempts FROM refill_jobs WHERE user_id = ? ORDER BY created_at_us", USER)


async def refill_payment_rows(url: str) -> list[tuple[Any, ...]]:
    return await query(
        url,
        "SELECT id, status, amount_cents, payment_intent_id FROM payments WHERE user_id = ? AND kind = 'auto_refill' "
        "ORDER BY created_at_us",
        USER,
    )


async def grants(url: str) -> list[tuple[Any, ...]]:
    """Every payment grant and auto-refill transfer in this (fresh) database."""
    return await query(url, "SELECT key, amount, kind FROM transfers WHERE key LIKE 'grant:%' OR kind = 'auto_refill'")


async def customer_of(url: str) -> str:
    rows = await query(url, "SELECT stripe_customer_id FROM users WHERE user_id = ?", USER)
    assert rows and rows[0][0], f"no Stripe customer for {USER}: {rows}"
    return str(rows[0][0])


# ---- the Stripe side ------------------------------------------------------------------------------


def pi_posts(fake: StripeFake) -> list[dict[str, str]]:
    """PaymentIntent creations the billing server sent through the fake."""
    return [r for r in fake.requests if r["method"] == "POST" and r["path"] == "/v1/payment_intents"]


async def customer_pis(fake: StripeFake, customer: str) -> list[dict[str, Any]]:
    """PaymentIntents localstripe holds for `customer` (whoever created them)."""
    listing = await fake.api("GET", "/v1/payment_intents?limit=100")
    assert not listing.get("has_more"), "more PaymentIntents than one page"
    return [pi for pi in listing["data"] if pi.get("customer") == customer]


# ---- the test --------------------------------------------------------------------------------------


async def test_refill_survives_kill_9_right_after_the_triggering_spend(
    db_url: str, tmp_path: Path, stripe_fake: StripeFake
) -> None:
    server = ServerProcess(db_url, tmp_path, stripe_fake.url)
    stubs: Stubs | None = None
    try:
        # ---- run 1: the worker cannot run (one-hour interval) ----
        await server.start(worker_interval=3600)
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        stripe_fake.webhook_url = server.webhook_url  # the fake delivers signed events like Stripe

        # A saved card through a setup link, then auto-refill on.
        link = await stubs.refill.CreateSetupLink(
            refill_pb2.CreateSetupLinkRequest(request_id=uuid.uuid4().hex), metadata=auth(USER), timeout=10
        )
        done = await stripe_fake.complete(link.setup_url.rsplit("/", 1)[-1], "pm_card_visa")
        assert done["statuses"] == {"checkout.session.completed": 200}, done["statuses"]
        cfg = (
            await stubs.refill.ConfigureAutoRefill(
                refill_pb2.ConfigureAutoRefillRequest(
                    enabled=True, threshold_millicredits=THRESHOLD, amount_cents=AMOUNT_CENTS, request_id=uuid.uuid4().hex
                ),
                metadata=auth(USER),
                timeout=10,
            )
        ).auto_refill
        assert cfg.enabled and cfg.state == refill_pb2.AUTO_REFILL_STATE_IDLE, cfg
        assert cfg.payment_method.last4 == "4242"
        customer = await customer_of(db_url)
        assert pi_posts(stripe_fake) == [] and await customer_pis(stripe_fake, customer) == []

        # The triggering Spend; kill -9 the moment its answer arrives.
        r = await stubs.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=SPEND, request_id=uuid.uuid4().hex, category="sandbox"),
            metadata=auth(USER),
            timeout=10,
        )
        await server.kill9()
        assert r.transaction.id, r
        await stubs.channel.close()
        stubs = None

        # The durable job is in the database, committed with the Spend; nothing was charged.
        jobs = await refill_jobs(db_url)
        assert [(s, p, a) for _, s, p, a in jobs] == [("queued", None, 0)], jobs
        assert await refill_payment_rows(db_url) == []
        assert await grants(db_url) == []
        assert pi_posts(stripe_fake) == [] and await customer_pis(stripe_fake, customer) == []
        wallet = await query(db_url, "SELECT balance FROM accounts WHERE id = ?", f"wallet:{USER}")
        assert wallet == [(FREE - SPEND,)], wallet

        # ---- run 2: a fast worker picks the job up ----
        await server.start(worker_interval=INTERVAL)
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        deadline = time.monotonic() + WAIT_PAID
        while True:
            paid = [p for p in await refill_payment_rows(db_url) if p[1] == "paid"]
            if paid:
                break
            assert time.monotonic() < deadline, (
                f"no refill paid within {WAIT_PAID}s: jobs={await refill_jobs(db_url)} "
                f"payments={await refill_payment_rows(db_url)}\n{server.log_tail()}"
            )
            await asyncio.sleep(0.1)

        async def check_exactly_once() -> None:
            payments = await refill_payment_rows(db_url)
            assert len(payments) == 1, payments
            pid, status, cents, pi_id = payments[0]
            assert (status, cents) == ("paid", AMOUNT_CENTS) and pid.startswith("rfa_") and pi_id, payments[0]
            assert await grants(db_url) == [(f"grant:{pid}", CREDITS, "auto_refill")]
            posts = pi_posts(stripe_fake)
            assert len(posts) == 1 and posts[0]["idempotency_key"] == pid, posts
            pis = await customer_pis(stripe_fake, customer)
            assert [(p["id"], p["status"], p["amount"]) for p in pis] == [(pi_id, "succeeded", AMOUNT_CENTS)], pis
            jobs = await refill_jobs(db_url)
            assert [(s, p) for _, s, p, _ in jobs] == [("succeeded", pid)], jobs

        await check_exactly_once()
        b = await stubs.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(USER), timeout=WAIT)
        assert b.credits_millicredits == FREE - SPEND + CREDITS > THRESHOLD

        # Several more worker intervals, and Stripe's own late webhook: nothing more is charged or granted.
        pi = (await customer_pis(stripe_fake, customer))[0]
        assert await stripe_fake.deliver(event("payment_intent.succeeded", pi)) == 200
        await asyncio.sleep(INTERVAL * 6)
        await check_exactly_once()
        b = await stubs.balance.CheckBalance(balance_pb2.CheckBalanceRequest(), metadata=auth(USER), timeout=WAIT)
        assert b.credits_millicredits == FREE - SPEND + CREDITS
        await stubs.channel.close()
        stubs = None

        # ---- graceful stop, then the offline audit ----
        assert await server.stop() == 0, server.log_tail()
        rc, out, err = await run_cmd(sys.executable, "-m", "server", "verify", env=server.env(), cwd=ROOT, timeout=60)
        assert rc == 0, out + err
        assert "ledger OK" in out
    finally:
        if stubs is not None:
            await stubs.channel.close()
        await server.stop()
