"""Events rules: the outbox written inside the ledger's transaction, balance
alerts, reading events back, webhook endpoints.

Other domains emit through one call, inside their ledger operation:

    from server.events.service import emit
    emit(tx, EventType.REFILL_FAILED, user_id, {"reason": "card_declined"})

The event is then written by the same commit as the change (or not at all,
if the operation is refused or the batch fails)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from server.db.batchsql import Row
from server.db.engine import Database
from server.events import repository as repo
from server.events.models import (
    EVENT_TYPES,
    OUTBOX,
    AlertsView,
    CreatedEndpoint,
    DeliveryPage,
    DeliveryStatus,
    DeliveryView,
    EndpointPage,
    EndpointStatus,
    EndpointView,
    EventType,
    EventView,
    PendingEvent,
    RotatedSecret,
)
from server.ledger import keys
from server.ledger.model import BalanceEvent, HoldStatus, Kind, from_json, to_json
from server.ledger.ops import Idempotency, Join
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs.models import Right, WalletOf
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock, from_us
from server.platform.config import Settings
from server.platform.metrics import METRICS
from server.platform.units import credits_text

# Refill's thresholds of these users' enabled auto-refills (the default alert).
RefillThresholds = Callable[[LedgerTx, list[str]], Awaitable[dict[str, int]]]

MAX_THRESHOLDS = 10
# The longest lead a wallet may set for credits.expiring: a year. Beyond it the
# scan's horizon (now + lead) would leave int64 and fail the job for everyone.
MAX_LEAD_SECONDS = 366 * 86_400
US = 1_000_000
DAY_US = 86_400 * US
SCAN_LIMIT = 1_000
FORECAST_WINDOW_DAYS = 30
FORECAST_EVERY_US = 3600 * US
PRUNE_BATCH = 1_000
PRUNE_BATCHES = 20
# A balance_alerts row whose thresholds are this: the wallet uses the defaults.
DEFAULTS = "null"


def emit(tx: LedgerTx, type: EventType, user_id: str, payload: dict[str, Any], *, dedup_key: str | None = None) -> None:
    """Record an event in this ledger operation: it is committed with the
    operation's changes, or dropped with them. `user_id` is the wallet's
    ("" for events of the service itself); `payload` a JSON object (its
    fields per type in docs/events.md). A `dedup_key` makes the event once
    per key (check `already_emitted` first: the key is unique)."""
    tx.batch_append(OUTBOX, PendingEvent(str(type), user_id, payload, dedup_key))


async def already_emitted(tx: LedgerTx, dedup_key: str) -> bool:
    return any(e.dedup_key == dedup_key for e in tx.batch_list(OUTBOX)) or await repo.dedup_key_used(tx, dedup_key)


@dataclass
class Mutation(Join):
    """An events change that joins the next ledger batch, with its response
    stored for its request_id."""

    result: Any = None

    def encode(self, value: Any) -> bytes:
        return to_json(value)

    def decode(self, data: bytes) -> Any:
        return from_json(self.result, data)


def iso(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


class EventsService:
    def __init__(
        self, settings: Settings, db: Database, writer: LedgerWriter, clock: Clock,
        refill_thresholds: RefillThresholds, monthly_allowance: Callable[[Row], int | None], org_wallet: WalletOf,
    ) -> None:
        self.settings = settings
        self.org_wallet = org_wallet
        self.db = db
        self.writer = writer
        self.clock = clock
        self.refill_thresholds = refill_thresholds
        self.monthly_allowance = monthly_allowance
        # Set (and replaced) whenever this process commits events: wakes watchers and the delivery worker.
        self._committed = asyncio.Event()
        self._forecast_at = -FORECAST_EVERY_US  # the last forecast scan (service clock)

    # ---- the outbox: a ledger extension, last of the domains' hooks --------------------------

    async def before_flush(self, tx: LedgerTx, ops: list[Any]) -> None:
        from_ledger(tx)
        await self._balance_alerts(tx)
        outbox: list[PendingEvent] = tx.batch_list(OUTBOX)
        if not outbox:
            return
        last = await repo.allocate_ids(tx, len(outbox))
        first = last - len(outbox) + 1
        types: dict[str, int] = {}
        for i, ev in enumerate(outbox):
            repo.insert_event(tx, {
                "id": first + i, "type": ev.type, "user_id": ev.user_id,
                "payload": json.dumps(ev.payload, separators=(",", ":"), sort_keys=True),
                "created_at_us": tx.now_us, "dedup_key": ev.dedup_key,
            })
            types[ev.type] = types.get(ev.type, 0) + 1
        tx.after_commit.append(lambda: self._on_commit(types))

    def _on_commit(self, types: dict[str, int]) -> None:
        METRICS.observe_billing_events(types)
        self.wake()

    def wake(self) -> None:
        event, self._committed = self._committed, asyncio.Event()
        event.set()

    async def committed(self, wait_seconds: float) -> None:
        """Until this process commits events, or `timeout` seconds (other processes' are polled)."""
        try:
            await asyncio.wait_for(self._committed.wait(), wait_seconds)
        except TimeoutError:
            pass

    # ---- balance alerts ----------------------------------------------------------------

    async def _balance_alerts(self, tx: LedgerTx) -> None:
        """balance.low when a wallet's balance went from at or above a
        threshold to below it in this batch, balance.recovered the other way.
        The batch's balance before (as loaded, under the wallet's lock) and
        after (every operation applied) decide: concurrent spends in one batch
        cross once, and batches of one wallet follow each other under its lock."""
        loaded = tx.loaded_balances
        moved: list[tuple[str, int | None, int]] = []
        for acct in tx.accounts.values():
            user = acct["user_id"]
            if acct["kind"] != "wallet" or not user:
                continue
            before = loaded.get(acct["id"])
            if before != acct["balance"]:
                moved.append((user, before, acct["balance"]))
        if not moved:
            return
        users = [m[0] for m in moved]
        custom = await repo.alert_rows(tx, users)
        thresholds: dict[str, list[int]] = {}
        need_default = []
        for u in users:
            row = custom.get(u)
            if row is None or row["thresholds"] == DEFAULTS:
                need_default.append(u)
            else:
                thresholds[u] = json.loads(row["thresholds"])
        if need_default:
            refill = await self.refill_thresholds(tx, need_default)
            for u in need_default:
                thresholds[u] = self._default_thresholds(tx.users.get(u), refill.get(u, 0))
        for user, before, after in moved:
            for t in sorted(thresholds.get(user, ()), reverse=True):
                if (before is None or before >= t) and after < t:
                    self._alert(tx, EventType.BALANCE_LOW, user, t, before, after)
                elif before is not None and before < t <= after:
                    self._alert(tx, EventType.BALANCE_RECOVERED, user, t, before, after)

    def _alert(self, tx: LedgerTx, type: EventType, user: str, threshold: int, before: int | None, after: int) -> None:
        emit(tx, type, user, {
            "threshold_millicredits": threshold, "balance_millicredits": after,
            "previous_balance_millicredits": before if before is not None else 0,
        })
        low = type == EventType.BALANCE_LOW
        tx.notify(BalanceEvent(
            user_id=user, kind="balance_low" if low else "balance_recovered", credits=after,
            message=f"Balance {'below' if low else 'back to'} the alert threshold of {credits_text(threshold)} credits",
        ))

    def _default_thresholds(self, user: Row | None, refill_threshold: int) -> list[int]:
        if refill_threshold > 0:
            return [refill_threshold]
        monthly = self.monthly_allowance(user) if user is not None else None
        low = (monthly or 0) * self.settings.events_default_low_percent // 100
        return [low] if low > 0 else []

    # ---- lead-time alerts and retention (background jobs, on the service clock) ---------------

    async def scan_expiring(self) -> int:
        """credits.expiring for each allowance or promotional lot with credits
        left that ends within its wallet's lead time: once per lot (its end)."""
        now = self.clock.now_us()
        reader = self.db.reader
        # Bounded also for a lead stored before SetBalanceAlerts bounded it.
        longest = min(await repo.longest_lead_seconds(reader), MAX_LEAD_SECONDS)
        horizon = max(self.settings.events_expiry_lead_seconds, longest) * US
        found = await repo.expiring_lots(reader, now, horizon, SCAN_LIMIT)
        if not found:
            return 0
        custom = await repo.alerts_of(reader, sorted({r["user_id"] for r in found}))
        due = []
        for lot in found:
            lead = self._alerts_view(lot["user_id"], custom.get(lot["user_id"]), []).expiry_lead_seconds
            if lead and lot["expires_at_us"] - now <= lead * US:
                due.append((lot, lead))

        async def apply(tx: LedgerTx) -> int:
            n = 0
            for lot, lead in due:
                key = keys.event_once("credits.expiring", lot["user_id"], lot["kind"], lot["expires_at_us"])
                if await already_emitted(tx, key):
                    continue
                emit(tx, EventType.CREDITS_EXPIRING, lot["user_id"], {
                    "lot_kind": lot["kind"], "remaining_millicredits": lot["remaining"],
                    "expires_at": iso(lot["expires_at_us"]), "lead_seconds": lead,
                }, dedup_key=key)
                n += 1
            return n

        return int(await self.writer.submit(Mutation(fn=apply))) if due else 0

    async def scan_forecast(self) -> int:
        """forecast.runs_out when, at the last 30 days' spend rate, a wallet's
        balance lasts fewer than its forecast days: once per wallet per UTC day.
        The rate is a scan of 30 days of spends: it runs at most once an hour."""
        now = self.clock.now_us()
        if now - self._forecast_at < FORECAST_EVERY_US:
            return 0
        self._forecast_at = now
        rates = await repo.spend_rates(self.db.reader, now - FORECAST_WINDOW_DAYS * DAY_US)
        custom = await repo.alerts_of(self.db.reader, sorted(r["user_id"] for r in rates))
        day = now // DAY_US
        due = []
        for r in rates:
            days = self._alerts_view(r["user_id"], custom.get(r["user_id"]), []).forecast_days
            daily = int(r["spent"]) // FORECAST_WINDOW_DAYS
            if days and daily > 0 and r["balance"] < daily * days:
                due.append((r, days, daily))

        async def apply(tx: LedgerTx) -> int:
            n = 0
            for r, days, daily in due:
                key = keys.event_once("forecast.runs_out", r["user_id"], day)
                if await already_emitted(tx, key):
                    continue
                emit(tx, EventType.FORECAST_RUNS_OUT, r["user_id"], {
                    "balance_millicredits": r["balance"], "daily_spend_millicredits": daily,
                    "days_left": round(max(r["balance"], 0) / daily, 1), "forecast_days": days,
                }, dedup_key=key)
                n += 1
            return n

        return int(await self.writer.submit(Mutation(fn=apply))) if due else 0

    async def prune(self) -> int:
        """Events and finished deliveries past the retention period, in bounded batches."""
        before = self.clock.now_us() - int(self.settings.events_retention.total_seconds() * US)
        pruned = 0
        for _ in range(PRUNE_BATCHES):
            n = int(await self.writer.submit(Mutation(fn=lambda tx: repo.prune(tx, before, PRUNE_BATCH))))
            pruned += n
            if n < PRUNE_BATCH:
                break
        return pruned

    # ---- alert settings -------------------------------------------------------------------

    def _alerts_view(self, user_id: str, row: Row | None, defaults: list[int]) -> AlertsView:
        if row is None or row["thresholds"] == DEFAULTS:
            return AlertsView(user_id, defaults, self.settings.events_expiry_lead_seconds,
                              self.settings.events_forecast_days, True)
        return AlertsView(user_id, json.loads(row["thresholds"]), row["expiry_lead_seconds"], row["forecast_days"], False)

    async def _defaults_in(self, tx: LedgerTx, user_id: str) -> list[int]:
        await tx.wallet(user_id)
        refill = await self.refill_thresholds(tx, [user_id])
        return self._default_thresholds(tx.users.get(user_id), refill.get(user_id, 0))

    async def get_alerts(self, principal: Principal, user_id: str) -> AlertsView:
        user = principal.resolve_user(user_id)

        async def read(tx: LedgerTx) -> AlertsView:
            return self._alerts_view(user, await repo.alerts_in_batch(tx, user), await self._defaults_in(tx, user))

        view: AlertsView = await self.writer.submit(Mutation(fn=read, accounts={f"wallet:{user}"}))
        return view

    async def set_alerts(
        self, principal: Principal, user_id: str, *, thresholds: list[int], expiry_lead_seconds: int,
        forecast_days: int, reset: bool, request_id: str, fingerprint: str,
    ) -> AlertsView:
        user = principal.resolve_user(user_id)
        if reset and (thresholds or expiry_lead_seconds or forecast_days):
            raise errors.InvalidArgument("reset_to_defaults takes no other settings", reason="INVALID_ALERTS")
        if len(set(thresholds)) != len(thresholds) or len(thresholds) > MAX_THRESHOLDS or any(t <= 0 for t in thresholds):
            raise errors.InvalidArgument(
                f"thresholds must be at most {MAX_THRESHOLDS} distinct positive amounts", reason="INVALID_ALERTS",
                metadata={"field": "thresholds_millicredits"},
            )
        if not 0 <= expiry_lead_seconds <= MAX_LEAD_SECONDS or not 0 <= forecast_days <= 366:
            raise errors.InvalidArgument(
                f"expiry_lead_seconds must be 0 to {MAX_LEAD_SECONDS} and forecast_days 0 to 366",
                reason="INVALID_ALERTS",
            )
        ordered = sorted(thresholds, reverse=True)

        async def apply(tx: LedgerTx) -> AlertsView:
            row = await repo.alerts_in_batch(tx, user)
            if reset:
                repo.save_alerts(tx, row, user, thresholds=DEFAULTS, expiry_lead_seconds=0, forecast_days=0)
            else:
                repo.save_alerts(tx, row, user, thresholds=repo.thresholds_json(ordered),
                                 expiry_lead_seconds=expiry_lead_seconds, forecast_days=forecast_days)
            return self._alerts_view(user, await repo.alerts_in_batch(tx, user), await self._defaults_in(tx, user))

        idem = Idempotency.of_request(principal, "SetBalanceAlerts", request_id, fingerprint)
        view: AlertsView = await self.writer.submit(
            Mutation(fn=apply, accounts={f"wallet:{user}"}, idempotency=idem, result=AlertsView)
        )
        return view

    # ---- reading events back ----------------------------------------------------------------

    def reader_scope(self, principal: Principal, user_id: str) -> str | None:
        """The wallet a caller reads: its own for a user token; any or all (None) for service and admin."""
        if principal.privileged:
            return user_id or None
        return principal.resolve_user(user_id)

    async def scope_of(self, principal: Principal, user_id: str, org_id: str) -> str | None:
        """`reader_scope`, or with an org the org's wallet: its events tell of
        every member's and key's use, so a user token reads them as an owner or
        admin of the org (Right.MANAGE), as for its keys; service and admin
        tokens read any org's, as any user's."""
        if not org_id:
            return self.reader_scope(principal, user_id)
        return await self.org_wallet(principal, user_id, org_id, Right.READ if principal.privileged else Right.MANAGE)

    async def list_events(self, scope: str | None, types: list[str], after_id: int, limit: int) -> list[EventView]:
        return await repo.list_events(self.db.reader, user_id=scope, types=types, after_id=after_id, limit=limit)

    async def recent_events(self, scope: str | None, limit: int) -> list[EventView]:
        """The last `limit` events in the scope, newest first (what ListEvents' last page holds)."""
        return await repo.list_events(self.db.reader, user_id=scope, types=[], after_id=0, limit=limit, newest=True)

    async def last_event_id(self) -> int:
        return await repo.last_event_id(self.db.reader)

    # ---- webhook endpoints (service and admin tokens) ------------------------------------------

    @staticmethod
    def operator(principal: Principal) -> None:
        principal.require(Role.SERVICE, Role.ADMIN, what="manage webhook endpoints")

    async def create_endpoint(
        self, principal: Principal, *, url: str, event_types: list[str], description: str, request_id: str,
        fingerprint: str,
    ) -> CreatedEndpoint:
        self.operator(principal)
        types = known_types(event_types)
        secret = new_secret()

        async def apply(tx: LedgerTx) -> CreatedEndpoint:
            row = repo.insert_endpoint(tx, {
                "id": f"we_{uuid.uuid4().hex[:24]}", "url": url, "event_types": json.dumps(types),
                "description": description, "secret": secret, "previous_secret": "", "previous_secret_until_us": 0,
                "status": EndpointStatus.ENABLED, "failing_since_us": 0,
                # Events from its creation on (earlier ones: RedeliverEvent).
                "cursor": await repo.last_committed_id(tx),
                "created_at_us": tx.now_us, "updated_at_us": tx.now_us,
            })
            return CreatedEndpoint(endpoint_view(row), secret)

        idem = Idempotency.of_request(principal, "CreateWebhookEndpoint", request_id, fingerprint)
        created: CreatedEndpoint = await self.writer.submit(Mutation(fn=apply, idempotency=idem, result=CreatedEndpoint))
        return created

    async def _existing(self, tx: LedgerTx, endpoint_id: str) -> Row:
        row = await repo.endpoint(tx, endpoint_id, lock=True)
        if row is None:
            raise errors.NotFound("webhook endpoint not found", reason="WEBHOOK_ENDPOINT_NOT_FOUND")
        return row

    async def update_endpoint(
        self, principal: Principal, endpoint_id: str, *, url: str, event_types: list[str] | None,
        description: str | None, enabled: bool | None, request_id: str, fingerprint: str,
    ) -> EndpointView:
        self.operator(principal)
        types = known_types(event_types) if event_types is not None else None

        async def apply(tx: LedgerTx) -> EndpointView:
            row = await self._existing(tx, endpoint_id)
            values: dict[str, Any] = {}
            if url:
                values["url"] = url
            if types is not None:
                values["event_types"] = json.dumps(types)
            if description is not None:
                values["description"] = description
            if enabled is not None:
                values["status"] = EndpointStatus.ENABLED if enabled else EndpointStatus.DISABLED
                if enabled:
                    values["failing_since_us"] = 0
            return endpoint_view(repo.update_endpoint(tx, row, **values))

        idem = Idempotency.of_request(principal, "UpdateWebhookEndpoint", request_id, fingerprint)
        view: EndpointView = await self.writer.submit(Mutation(fn=apply, idempotency=idem, result=EndpointView))
        return view

    async def delete_endpoint(self, principal: Principal, endpoint_id: str, *, request_id: str, fingerprint: str) -> str:
        self.operator(principal)

        async def apply(tx: LedgerTx) -> str:
            await self._existing(tx, endpoint_id)
            await repo.delete_endpoint(tx, endpoint_id)
            return endpoint_id

        idem = Idempotency.of_request(principal, "DeleteWebhookEndpoint", request_id, fingerprint)
        done: str = await self.writer.submit(Mutation(fn=apply, idempotency=idem, result=str))
        return done

    async def rotate_secret(self, principal: Principal, endpoint_id: str, *, request_id: str, fingerprint: str) -> RotatedSecret:
        self.operator(principal)
        secret = new_secret()
        grace_us = int(self.settings.webhook_secret_grace_seconds * 1_000_000)

        async def apply(tx: LedgerTx) -> RotatedSecret:
            row = await self._existing(tx, endpoint_id)
            until = tx.now_us + grace_us
            repo.update_endpoint(tx, row, secret=secret, previous_secret=row["secret"], previous_secret_until_us=until)
            return RotatedSecret(secret, until)

        idem = Idempotency.of_request(principal, "RotateWebhookSecret", request_id, fingerprint)
        rotated: RotatedSecret = await self.writer.submit(Mutation(fn=apply, idempotency=idem, result=RotatedSecret))
        return rotated

    async def list_endpoints(self, principal: Principal, after: str, limit: int) -> EndpointPage:
        self.operator(principal)
        rows = await repo.list_endpoints(self.db.reader, after=after, limit=limit + 1)
        page = EndpointPage([endpoint_view(r) for r in rows[:limit]])
        if len(rows) > limit:
            page.next_token = rows[limit - 1]["id"]
        return page

    async def list_deliveries(
        self, principal: Principal, endpoint_id: str, status: str, before_event: int, limit: int
    ) -> DeliveryPage:
        self.operator(principal)
        rows = await repo.list_deliveries(self.db.reader, endpoint_id, status=status, before_event=before_event,
                                          limit=limit + 1)
        page = DeliveryPage([delivery_view(r) for r in rows[:limit]])
        if len(rows) > limit:
            page.next_token = str(rows[limit - 1]["event_id"])
        return page

    async def redeliver(
        self, principal: Principal, endpoint_id: str, event_id: int, *, request_id: str, fingerprint: str
    ) -> DeliveryView:
        """The delivery pending again, due now, its retry period started anew."""
        self.operator(principal)

        async def apply(tx: LedgerTx) -> DeliveryView:
            await self._existing(tx, endpoint_id)
            event = await repo.event_by_id(tx, event_id)
            if event is None:
                raise errors.NotFound("event not found", reason="EVENT_NOT_FOUND")
            did = delivery_id(endpoint_id, event_id)
            row = await repo.delivery(tx, did)
            values = {"status": DeliveryStatus.PENDING, "next_attempt_at_us": tx.now_us, "lease_until_us": 0,
                      "created_at_us": tx.now_us}
            if row is None:
                row = repo.insert_delivery(tx, new_delivery(endpoint_id, event, tx.now_us))
            else:
                repo.update_delivery(tx, row, **values)
            return delivery_view({**row, "event_type": event["type"]})

        idem = Idempotency.of_request(principal, "RedeliverEvent", request_id, fingerprint)
        view: DeliveryView = await self.writer.submit(Mutation(fn=apply, idempotency=idem, result=DeliveryView))
        self.wake()
        return view


# ---- the other domains' outcomes, from what they tell the balance watch -----------------------

# Transfers that are themselves a payment or refund outcome (disputes are
# told by payments' handlers: a dispute may move no credits).
_TRANSFER_EVENTS = {
    Kind.PURCHASE: EventType.PAYMENT_SUCCEEDED,
    Kind.AUTO_REFILL: EventType.PAYMENT_SUCCEEDED,
    Kind.REFUND_CLAWBACK: EventType.PAYMENT_REFUNDED,
}
_NOTICE_EVENTS = {
    "refill_succeeded": EventType.REFILL_SUCCEEDED,
    "refill_failed": EventType.REFILL_FAILED,
    "refill_paused": EventType.REFILL_PAUSED,
    "action_required": EventType.REFILL_ACTION_REQUIRED,
    "tier_changed": EventType.TIER_CHANGED,
    "payment_failed": EventType.PAYMENT_FAILED,
    "budget_warning": EventType.BUDGET_WARNING,
    "budget_exhausted": EventType.BUDGET_EXHAUSTED,
    "budget_reset": EventType.BUDGET_RESET,
}
_CODE = re.compile(r"\(([a-z_]+)\)")
_TIERS = re.compile(r"from (\w+) to (\w+)")
_PAYMENT = re.compile(r"Payment (\S+) failed")
_WINDOW = re.compile(r"a new (hour|day|month) budget window began$")


def from_ledger(tx: LedgerTx) -> None:
    """Events for what the batch's operations told the balance watch (the
    notices of refill, payments and tiers, and the transfers of purchases,
    refunds, disputes and hold expiries): the same batch, so the same commit,
    and no domain has to call twice."""
    for n in tx.events:
        t = n.transfer
        if t is not None:
            if n.kind != "transfer":
                continue
            etype = _TRANSFER_EVENTS.get(t.kind)  # type: ignore[call-overload]
            if etype is not None:
                emit(tx, etype, n.user_id, {
                    "payment_id": t.ref,
                    "amount_millicredits": abs(t.amount), "transaction_id": str(t.id), "description": t.description,
                })
            elif t.kind == Kind.HOLD_RELEASE and (tx.holds.get(t.ref) or {}).get("status") == HoldStatus.EXPIRED:
                emit(tx, EventType.HOLD_EXPIRED, n.user_id, {
                    "hold_id": t.ref, "amount_millicredits": abs(t.amount), "transaction_id": str(t.id),
                })
            continue
        etype = _NOTICE_EVENTS.get(n.kind)
        if etype is None:
            continue
        body: dict[str, Any] = {"message": n.message}
        if n.payment_url:
            body["recovery_url"] = n.payment_url
        if n.key_id:
            body["key_id"] = n.key_id
        if n.member:
            body["member_id"] = n.member
        if etype == EventType.TIER_CHANGED and (m := _TIERS.search(n.message)):
            body.update(from_tier=m.group(1), to_tier=m.group(2))
        elif etype == EventType.PAYMENT_FAILED and (m := _PAYMENT.search(n.message)):
            body["payment_id"] = m.group(1)
        elif etype == EventType.BUDGET_RESET:
            if m := _WINDOW.search(n.message):
                body["window"] = m.group(1)
        elif m := _CODE.search(n.message):
            body["reason"] = m.group(1)
        emit(tx, etype, n.user_id, body)


# ---- helpers shared with the delivery worker ----------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def known_types(types: Iterable[str]) -> list[str]:
    out = sorted(set(types))
    unknown = [t for t in out if t not in EVENT_TYPES]
    if unknown:
        raise errors.InvalidArgument(
            f"unknown event type {unknown[0]!r}", reason="UNKNOWN_EVENT_TYPE", metadata={"type": unknown[0][:64]}
        )
    return out


def delivery_id(endpoint_id: str, event_id: int) -> str:
    return f"{endpoint_id}/{event_id}"


def new_delivery(endpoint_id: str, event: Row, now_us: int) -> Row:
    return {
        "id": delivery_id(endpoint_id, event["id"]), "endpoint_id": endpoint_id, "event_id": event["id"],
        "user_id": event["user_id"], "status": DeliveryStatus.PENDING, "attempts": 0,
        "next_attempt_at_us": now_us, "lease_until_us": 0, "last_response_code": 0, "last_error": "",
        "created_at_us": now_us, "updated_at_us": now_us,
    }


def endpoint_view(r: Row) -> EndpointView:
    return EndpointView(
        id=r["id"], url=r["url"], event_types=json.loads(r["event_types"]), description=r["description"],
        status=r["status"], failing_since_us=r["failing_since_us"], created_at_us=r["created_at_us"],
        updated_at_us=r["updated_at_us"],
    )


def delivery_view(r: Row) -> DeliveryView:
    return DeliveryView(
        endpoint_id=r["endpoint_id"], event_id=r["event_id"], event_type=r.get("event_type") or "",
        status=r["status"], attempts=r["attempts"], last_response_code=r["last_response_code"],
        last_error=r["last_error"], next_attempt_at_us=r["next_attempt_at_us"], created_at_us=r["created_at_us"],
        updated_at_us=r["updated_at_us"],
    )
