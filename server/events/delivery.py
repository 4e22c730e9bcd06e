"""Webhook delivery: every event, at least once, to each endpoint that wants
it, in order per wallet, signed per the Standard Webhooks specification.

All state is in the database, changed through the ledger writer in small
operations that share its batches (`Join`): an endpoint's new events become
delivery rows (its cursor), a claim sets a lease on the oldest pending
delivery of each wallet, and the outcome is recorded after the attempt. A
process killed mid-attempt leaves a lease that lapses; the delivery is then
attempted again with the same webhook-id. With several processes, the claim
locks the endpoint's row (PostgreSQL: SKIP LOCKED, so one process claims for
an endpoint at a time) and a leased delivery is never claimed twice.

Isolation: each endpoint has its own task and at most
BILLING_WEBHOOK_ENDPOINT_CONCURRENCY attempts in flight, each with a timeout
and a bounded read, so a slow endpoint holds up nobody else; the ledger only
sees a few small row changes per attempt."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

from server.db.batchsql import Row
from server.events import repository as repo
from server.events.models import DeliveryStatus, EndpointStatus, EventType, event_name
from server.events.service import EventsService, Mutation, emit, iso, new_delivery
from server.ledger.tx import LedgerTx
from server.platform import errors
from server.platform.auth import Principal, Role, current_principal
from server.platform.config import Settings
from server.platform.metrics import METRICS

log = logging.getLogger(__name__)

US = 1_000_000
# New events turned into deliveries per claim.
DISPATCH_BATCH = 500


# ---- SSRF guard ------------------------------------------------------------------------


def address_allowed(ip: str) -> bool:
    """Public unicast addresses only: never private, loopback, link-local,
    multicast, reserved or unspecified (IPv4-mapped IPv6 is judged as IPv4)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified)


def _invalid(message: str, reason: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(message, reason=reason, metadata={"field": "url"})


async def check_url(url: str, settings: Settings) -> str:
    """An endpoint URL as accepted: absolute https (http when allowed), and
    every address its host resolves to public (unless private ones are allowed)."""
    if not url or len(url) > 2000:
        raise _invalid("url is required (at most 2000 characters)", "WEBHOOK_URL_INVALID")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise _invalid("url is not a valid URL", "WEBHOOK_URL_INVALID") from None
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise _invalid("url must be an absolute http(s) URL without credentials", "WEBHOOK_URL_INVALID")
    if parts.scheme == "http" and not settings.events_allow_http:
        raise _invalid("url must use https", "WEBHOOK_URL_NOT_HTTPS")
    if settings.events_allow_private_urls:
        return url
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except OSError:
        raise _invalid("url's host does not resolve", "WEBHOOK_URL_INVALID") from None
    if not infos or not all(address_allowed(str(info[4][0])) for info in infos):
        raise _invalid("url resolves to a private, loopback or link-local address", "WEBHOOK_URL_PRIVATE")
    return url


class GuardedResolver(AbstractResolver):
    """The connector's resolver: addresses that are not allowed are dropped at
    connection time too (a name that resolved publicly at creation may not now)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = [r for r in await self._inner.resolve(host, port, family) if address_allowed(r["host"])]
        if not found:
            raise OSError(f"{host} resolves to no public address")
        return found

    async def close(self) -> None:
        await self._inner.close()


# ---- the schedule ------------------------------------------------------------------------


def retry_delay_seconds(attempts: int, s: Settings, rand: random.Random) -> float:
    """After the n-th failed attempt: base * 2^(n-1), capped, with +-jitter."""
    delay = min(s.webhook_retry_base_seconds * 2 ** min(attempts - 1, 60), s.webhook_retry_max_seconds)
    return delay * (1 + s.webhook_retry_jitter * (2 * rand.random() - 1))


# ---- the worker ------------------------------------------------------------------------------


@dataclass
class Claimed:
    delivery_id: str
    endpoint_id: str
    url: str
    secrets: list[str]
    event: Row
    lease_until_us: int


@dataclass
class Outcome:
    ok: bool
    code: int = 0
    error: str = ""


class DeliveryWorker:
    def __init__(self, service: EventsService) -> None:
        self.service = service
        self.s = service.settings
        self.writer = service.writer
        self.clock = service.clock
        self.rand = random.Random()
        self._endpoints: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=None if self.s.events_allow_private_urls else GuardedResolver(), limit=0,
            limit_per_host=self.s.webhook_endpoint_concurrency, ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._task = asyncio.create_task(self._supervise(), name="webhook-delivery")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._task, *self._endpoints.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _supervise(self) -> None:
        """One task per enabled endpoint with work; looks again when this
        process commits events, and every BILLING_EVENTS_POLL_SECONDS."""
        while not self._stopping:
            try:
                for row in await repo.enabled_endpoints(self.service.db.reader):
                    task = self._endpoints.get(row["id"])
                    if task is None or task.done():
                        self._endpoints[row["id"]] = asyncio.create_task(self._endpoint(row["id"]))
            except Exception:
                log.exception("webhook delivery: listing endpoints failed")
            await self.service.committed(self.s.events_poll_seconds)

    async def _endpoint(self, endpoint_id: str) -> None:
        """Claim and attempt this endpoint's deliveries until none is due. The
        outcomes of the attempts that ended and the next claim go to the
        writer as one small operation."""
        # Its own turn in the ledger writer (a queue per caller): endpoints never
        # wait behind each other's bookkeeping, nor share one queue with the service's jobs.
        current_principal.set(Principal(f"webhook-endpoint/{endpoint_id}", Role.SERVICE))
        inflight: set[asyncio.Task[tuple[Claimed, Outcome]]] = set()
        ended: list[tuple[Claimed, Outcome]] = []
        try:
            while True:
                free = self.s.webhook_endpoint_concurrency - len(inflight)
                claimed, dispatched = await self.writer.submit(
                    Mutation(fn=functools.partial(self._step, endpoint_id=endpoint_id, ended=ended, free=free))
                )
                ended = []
                for c in claimed:
                    inflight.add(asyncio.create_task(self._attempt(c)))
                if dispatched and len(inflight) < self.s.webhook_endpoint_concurrency:
                    continue  # the new deliveries are claimable now that their batch committed
                if not inflight:
                    return
                # Until an attempt ends or new events commit: a hanging attempt
                # must not keep the next wallets' events waiting.
                more = asyncio.ensure_future(self.service.committed(self.s.events_poll_seconds))
                done, _ = await asyncio.wait({*inflight, more}, return_when=asyncio.FIRST_COMPLETED)
                more.cancel()
                for t in done:
                    if t is not more:
                        inflight.discard(t)
                        ended.append(t.result())  # type: ignore[arg-type]
        except asyncio.CancelledError:
            for t in inflight:
                t.cancel()
            raise
        except Exception:
            log.exception("webhook delivery failed", extra={"endpoint_id": endpoint_id})

    async def _step(
        self, tx: LedgerTx, endpoint_id: str, ended: list[tuple[Claimed, Outcome]], free: int
    ) -> tuple[list[Claimed], bool]:
        for c, outcome in ended:
            await self._record(tx, c, outcome)
        return await self._claim(tx, endpoint_id, free)

    async def _claim(self, tx: LedgerTx, endpoint_id: str, free: int) -> tuple[list[Claimed], bool]:
        """Up to `free` deliveries leased to this process, and whether new
        events became deliveries (they can be claimed once this batch commits)."""
        ep = await repo.endpoint_for_worker(tx, endpoint_id)
        if ep is None or ep["status"] != EndpointStatus.ENABLED:
            return [], False
        now = tx.now_us
        # New events of the types it wants become its deliveries (due now).
        new_events = await repo.events_after(tx, ep["cursor"], DISPATCH_BATCH)
        wanted = set(json.loads(ep["event_types"]))
        for e in new_events:
            if not wanted or e["type"] in wanted:
                repo.insert_delivery(tx, new_delivery(endpoint_id, e, now))
        if new_events:
            repo.update_endpoint(tx, ep, cursor=new_events[-1]["id"], updated_at_us=ep["updated_at_us"])
        due = await repo.due_heads(tx, endpoint_id, now, free) if free > 0 else []
        events = await repo.event_rows(tx, [d["event_id"] for d in due])
        lease = now + int(self.s.webhook_lease_seconds * US)
        keys = [ep["secret"]]
        if ep["previous_secret"] and ep["previous_secret_until_us"] > now:
            keys.append(ep["previous_secret"])
        out = []
        for d in due:
            event = events.get(d["event_id"])
            if event is None:  # pruned: nothing left to send
                repo.update_delivery(tx, d, status=DeliveryStatus.FAILED, last_error="event pruned")
                continue
            repo.update_delivery(tx, d, lease_until_us=lease)
            out.append(Claimed(d["id"], endpoint_id, ep["url"], keys, event, lease))
        return out, bool(new_events)

    async def _attempt(self, c: Claimed) -> tuple[Claimed, Outcome]:
        outcome = await self.send(c)
        METRICS.webhook_deliveries.labels("succeeded" if outcome.ok else "failed").inc()
        return c, outcome

    async def send(self, c: Claimed) -> Outcome:
        e = c.event
        name = event_name(e["id"])
        body = json.dumps({
            "type": e["type"],
            "timestamp": iso(e["created_at_us"]),
            "data": {"id": name, "user_id": e["user_id"], **json.loads(e["payload"])},
        }, separators=(",", ":")).encode()
        # The signature's timestamp is the wall clock of the attempt: receivers
        # compare it with theirs (replay protection), not with the event's instant.
        sent_at = datetime.fromtimestamp(int(time.time()), UTC)
        signatures = " ".join(Webhook(k).sign(name, sent_at, body.decode()) for k in c.secrets)
        headers = {
            "content-type": "application/json", "user-agent": "flownexus-billing-webhooks",
            "webhook-id": name, "webhook-timestamp": str(int(sent_at.timestamp())), "webhook-signature": signatures,
        }
        assert self._session is not None
        try:
            if not self.s.events_allow_private_urls:
                host = urlsplit(c.url).hostname or ""
                if _is_ip(host) and not address_allowed(host):
                    return Outcome(False, 0, "address not allowed")
            timeout = aiohttp.ClientTimeout(total=self.s.webhook_timeout_seconds)
            async with self._session.post(c.url, data=body, headers=headers, timeout=timeout,
                                          allow_redirects=False) as resp:
                # Read a bounded part of the answer, never the whole of it.
                await resp.content.read(self.s.webhook_max_response_bytes)
                return Outcome(200 <= resp.status < 300, resp.status, "" if resp.status < 300 else f"HTTP {resp.status}")
        except TimeoutError:
            return Outcome(False, 0, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:200])

    async def _record(self, tx: LedgerTx, c: Claimed, outcome: Outcome) -> None:
        d = await repo.delivery(tx, c.delivery_id)
        if d is None or d["status"] != DeliveryStatus.PENDING:
            return  # deleted, or settled by another attempt meanwhile
        ep = await repo.endpoint(tx, c.endpoint_id, lock=True)
        now = tx.now_us
        attempts = d["attempts"] + 1
        if outcome.ok:
            repo.update_delivery(tx, d, status=DeliveryStatus.SUCCEEDED, attempts=attempts, lease_until_us=0,
                                 last_response_code=outcome.code, last_error="")
            if ep is not None and ep["failing_since_us"]:
                repo.update_endpoint(tx, ep, failing_since_us=0)
            return
        given_up = now - d["created_at_us"] >= int(self.s.webhook_retry_period_seconds * US)
        repo.update_delivery(
            tx, d, attempts=attempts, lease_until_us=0, last_response_code=outcome.code, last_error=outcome.error,
            status=DeliveryStatus.FAILED if given_up else DeliveryStatus.PENDING,
            next_attempt_at_us=now + int(retry_delay_seconds(attempts, self.s, self.rand) * US),
        )
        if ep is None:
            return
        since = ep["failing_since_us"] or now
        if not ep["failing_since_us"]:
            repo.update_endpoint(tx, ep, failing_since_us=now)
        if ep["status"] == EndpointStatus.ENABLED and now - since >= int(self.s.webhook_disable_after_seconds * US):
            repo.update_endpoint(tx, ep, status=EndpointStatus.DISABLED)
            emit(tx, EventType.WEBHOOK_ENDPOINT_DISABLED, "", {
                "endpoint_id": ep["id"], "url": ep["url"], "failing_since": iso(since), "last_error": outcome.error,
            })
            log.warning("webhook endpoint disabled after failing continuously", extra={"endpoint_id": ep["id"]})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False

