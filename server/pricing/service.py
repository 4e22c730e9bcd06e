"""Pricing rules: the snapshot of every rate card version each process prices
from, publishing a version, and reading meters and cards.

Public API for other domains (they import only from here):
- `Usage`, `Quote`, `PricingError`;
- `PricingService.quote(usage, at_us) -> Quote`: synchronous, no I/O;
- `PricingService.priced(usage, at_us) -> UsageRecord`: the same price as
  the ledger records it, one record per distinct usage of an instant (a
  ledger batch's), shared by the spends that give that usage;
- `usage_record(usage, quote, at_us, hold_id) -> UsageRecord`: a record of
  its own (a hold's, which the ledger writes its hold into);
- `PricingService.usage_from_proto(msg) -> Usage`: a
  `flownexus.billing.v1.Usage` read and checked for form (PricingError,
  INVALID_ARGUMENT); whether the meter and its dimensions exist is
  `quote`'s answer, at the spend's instant;
- `unit_price(version, meter, dimensions) -> (unit price, per units)`: what
  a stored version charges for one combination of dimension values
  (PricingError when it does not price it), for the ledger audit."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.ledger.ops import Call, Idempotency, UsageRecord
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock
from server.pricing import card as cards
from server.pricing import repository as repo
from server.pricing.card import (
    MAX_QUANTITY,
    METER_NAME,
    METER_NAME_MAX,
    InvalidRateCard,
    PricingError,
    rounded_up,
)
from server.pricing.models import CONFIG_PUBLISHER, Quote, RateCard, RateCardVersion, Usage
from server.pricing.repository import PricingRepository

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RATE_CARD", "InvalidRateCard", "PricingError", "PricingService", "Quote", "Snapshot", "Usage",
    "rounded_up", "unit_price", "usage_record",
]

DEFAULT_RATE_CARD = Path(__file__).with_name("default_rate_card.toml")
MAX_USAGE_DIMENSIONS = 8
# Distinct usages whose records one instant keeps (a batch has at most a few hundred items).
MAX_RECORDS_KEPT = 1024


# Meter names and dimension (name, value) pairs that some rate card version
# prices skip the form check's regular expressions (a set lookup); at most
# this many of each, the newest versions' first. Any other name meets the
# checks every time: a caller's made-up names are never kept.
MAX_KNOWN = 1024
# Usages without dimensions already checked, by (meter, quantity), of meters
# a version prices (PricingService._checked).
MAX_CHECKED_KEPT = 4096


def _check_meter(meter: str) -> None:
    if not meter:
        raise PricingError("usage.meter is required", reason="UNKNOWN_METER", field="usage.meter")
    if len(meter) > METER_NAME_MAX or not METER_NAME.match(meter):
        raise PricingError("usage.meter is not a meter name (PricingService.ListMeters)",
                           reason="UNKNOWN_METER", field="usage.meter")


def _check_dimension(pair: tuple[str, str]) -> None:
    name, value = pair
    if len(name) > 32 or not cards.DIMENSION_NAME.match(name):
        raise PricingError("usage.dimensions names a dimension that no meter has",
                           reason="UNKNOWN_DIMENSION", field="usage.dimensions")
    if len(value) > 32 or not cards.DIMENSION_VALUE.match(value):
        raise PricingError(f"usage.dimensions.{name} is not a value of any meter",
                           reason="INVALID_DIMENSION_VALUE", field=f"usage.dimensions.{name}")


class Snapshot:
    """Every version, immutable: the one in effect at an instant is the one with
    the latest effective_at at or before it (of equal ones, the highest number).
    `meters` and `pairs`: the meter names and dimension (name, value) pairs
    the versions price (MAX_KNOWN of each at most, the newest versions' first)."""

    __slots__ = ("_keys", "latest", "meters", "pairs", "versions")

    def __init__(self, versions: list[RateCardVersion]) -> None:
        ordered = sorted(versions, key=lambda v: (v.effective_at_us, v.version))
        self._keys = [(v.effective_at_us, v.version) for v in ordered]
        self.versions = ordered
        self.latest = max(versions, key=lambda v: v.version) if versions else None
        meters: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for v in sorted(versions, key=lambda v: -v.version):
            for m in v.card.meters.values():
                if len(meters) < MAX_KNOWN:
                    meters.add(m.name)
                for d in m.dimensions:
                    for value in d.values:
                        if len(pairs) < MAX_KNOWN:
                            pairs.add((d.name, value))
        self.meters = frozenset(meters)
        self.pairs = frozenset(pairs)

    def at(self, at_us: int) -> RateCardVersion | None:
        i = bisect.bisect_right(self._keys, (at_us, 2**63))
        return self.versions[i - 1] if i else None

    def by_number(self) -> list[RateCardVersion]:
        return sorted(self.versions, key=lambda v: v.version)


def load_file(path: Path) -> RateCard:
    """The rate card file, validated; InvalidRateCard names the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRateCard(str(path), f"cannot be read ({exc.__class__.__name__}: {exc})") from None
    return cards.parse_toml(text, str(path))


def version_of(row: dict[str, Any]) -> RateCardVersion:
    """A stored version (its card is read back through the same validation)."""
    return RateCardVersion(
        int(row["version"]), cards.parse(json.loads(row["card"])), int(row["effective_at_us"]),
        int(row["published_at_us"]), str(row["published_by"]), str(row["request_id"]),
    )


@dataclass
class Publish(Call):
    """PublishRateCard's operation. It changes no wallet, so its admin audit
    row names the version it made (and from when) instead of a user."""

    made: dict[str, int] = field(default_factory=dict)

    def audit_details(self) -> dict[str, Any]:
        return dict(self.made)


def unit_price(version: RateCardVersion, meter: str, dimensions: Mapping[str, object]) -> tuple[int, int]:
    """The unit price and per_units of one meter's combination of dimension
    values under a version, by the card's own lookup; PricingError
    (UNKNOWN_METER or a dimension's reason) when the version does not price it."""
    m = cards.meter_of(version.card, version.version, meter)
    return m.prices[cards.combination(m, dimensions)], m.per_units


def usage_record(usage: Usage, quote: Quote, at_us: int, hold_id: str = "") -> UsageRecord:
    """What the ledger records of a priced usage: its transfer_usage row and
    the response's fields (`hold_id`: a hold's Reserve or Capture)."""
    return UsageRecord(
        meter=usage.meter, quantity=usage.quantity, dimensions=dict(usage.dimensions), version=quote.version,
        unit_price=quote.unit_price, per_units=quote.per_units, amount=quote.amount, priced_at_us=at_us,
        hold_id=hold_id,
    )


def no_card(at_us: int) -> PricingError:
    return PricingError("no rate card version is in effect at this instant", reason="NO_RATE_CARD",
                        at_us=at_us)


def rate_card_file(setting: str) -> RateCard:
    """The card of BILLING_RATE_CARD (empty: the default file), validated."""
    return load_file(Path(setting) if setting else DEFAULT_RATE_CARD)


class PricingService:
    """Every process keeps a snapshot of all versions (immutable, so a refresh
    adds only newer ones): after its own publish at once, and every fifth of
    the lead time otherwise. A version takes effect at least the lead time
    after it is published, so every replica has it before it prices with it;
    a process whose last refresh is older than the lead time refuses to quote
    (PRICES_STALE, UNAVAILABLE) rather than price with a card it cannot vouch for."""

    def __init__(
        self, writer: LedgerWriter, repository: PricingRepository, clock: Clock, *, card: RateCard,
        lead_seconds: float,
    ) -> None:
        self.writer = writer
        self.repo = repository
        self.clock = clock
        self.card = card  # the rate card file's, validated when the process was built
        self.lead_us = int(lead_seconds * 1_000_000)
        self.lead_seconds = lead_seconds
        self.refresh_seconds = max(0.2, lead_seconds / 5) if lead_seconds > 0 else 1.0
        self._snapshot = Snapshot([])
        # The records of the last instant priced (`priced`), by usage, and the
        # instant, snapshot and version in effect they were priced with.
        self._records: dict[Usage, UsageRecord] = {}
        self._records_at = -1
        self._records_from: Snapshot | None = None
        self._records_version: RateCardVersion | None = None
        # Usages without dimensions already checked (usage_from_proto), of meters
        # the snapshot knows: a value, the same whatever the card.
        self._checked: dict[tuple[str, int], Usage] = {}
        self._confirmed = float("-inf")  # time.monotonic() at the start of the last good refresh
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ---- the snapshot -----------------------------------------------------------------------

    def usage_from_proto(self, msg: Any) -> Usage:
        """A Usage message as a value, checked for form: a meter name, a quantity
        from 1 to MAX_QUANTITY, at most a few dimensions (sorted by name). The
        names a rate card version knows need no regular expression; only a
        known meter's usages are kept (a caller's made-up names are not)."""
        meter = msg.meter
        quantity = msg.quantity
        dims = msg.dimensions
        if not dims:  # most usage: no dimensions, and most often one seen before
            found = self._checked.get((meter, quantity))
            if found is not None:
                return found
        known = self._snapshot
        if meter not in known.meters:
            _check_meter(meter)
        if not 1 <= quantity <= MAX_QUANTITY:
            raise PricingError(f"usage.quantity must be a whole number of units from 1 to {MAX_QUANTITY}",
                               reason="INVALID_QUANTITY", field="usage.quantity")
        if not dims:
            usage = Usage(meter, quantity)
            if meter in known.meters:
                checked = self._checked
                if len(checked) >= MAX_CHECKED_KEPT:
                    checked.clear()
                checked[(meter, quantity)] = usage
            return usage
        if len(dims) > MAX_USAGE_DIMENSIONS:
            raise PricingError(f"usage.dimensions has at most {MAX_USAGE_DIMENSIONS} entries",
                               reason="UNKNOWN_DIMENSION", field="usage.dimensions")
        given = tuple(sorted(dims.items()))  # read from the message once, checked and kept in this order
        pairs = known.pairs
        for pair in given:
            if pair not in pairs:
                _check_dimension(pair)
        return Usage(meter, quantity, given)

    def quote(self, usage: Usage, at_us: int) -> Quote:
        """The price of `usage` with the version in effect at `at_us`: no I/O."""
        version = self._in_effect(at_us)
        return cards.price(version.card, version.version, usage)

    def priced(self, usage: Usage, at_us: int) -> UsageRecord:
        """`quote`'s price as the ledger records it, for a spend at `at_us`.
        The records of one instant (a ledger batch's) are kept until another
        instant or a new snapshot is asked for: each distinct usage of a batch
        is priced once, with the version in effect at the batch's instant, and
        the spends that give it share its record (never changed once made)."""
        records = self._records
        if at_us != self._records_at or self._records_from is not self._snapshot:
            self._records_version = self._in_effect(at_us)
            records = self._records = {}
            self._records_at, self._records_from = at_us, self._snapshot
        elif self.lead_us:
            self._check_fresh()
        found = records.get(usage)
        if found is None:
            version = self._records_version
            assert version is not None
            found = usage_record(usage, cards.price(version.card, version.version, usage), at_us)
            if len(records) < MAX_RECORDS_KEPT:
                records[usage] = found
        return found

    def _in_effect(self, at_us: int) -> RateCardVersion:
        if self.lead_us:
            self._check_fresh()
        version = self._snapshot.at(at_us)
        if version is None:
            raise no_card(at_us)
        return version

    def _check_fresh(self) -> None:
        if time.monotonic() - self._confirmed > self.lead_seconds:
            raise errors.Unavailable(
                "prices could not be confirmed with the database recently; retry with the same request_id",
                reason="PRICES_STALE",
            )

    async def refresh(self) -> int:
        """Read the versions this process does not have yet; how many."""
        async with self._lock:
            began = time.monotonic()
            known = self._snapshot.latest.version if self._snapshot.latest else 0
            rows = await self.repo.versions_after(known)
            if rows:
                self._snapshot = Snapshot(self._snapshot.versions + [version_of(r) for r in rows])
            self._confirmed = began
            return len(rows)

    async def start(self) -> None:
        """Apply the rate card file, load every version, then keep looking for new ones."""
        made = await self.writer.submit(Call(fn=self._apply_file))
        await self.refresh()
        if made:
            v = self._version(int(made))
            log.info("rate card file published as a version", extra={
                "version": v.version, "effective_at_us": v.effective_at_us, "card_sha256": v.card.sha256})
        self._task = asyncio.create_task(self._poll(), name="pricing-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # the next round tries again; quotes go stale meanwhile
                log.warning("rate card refresh failed: %s", type(exc).__name__)

    async def _apply_file(self, tx: LedgerTx) -> int:
        """The file's card: version 1 (effective from the epoch) in an empty
        store; else a new version effective after the lead time when its
        content was never applied from the file and is not the latest version.
        Replicas starting together: the version number's primary key lets one
        win, and the others, read again, find its row."""
        card = self.card
        last = await repo.latest(tx)
        if last is None:
            version, effective = 1, 0
        elif last["card_sha256"] == card.sha256 or await repo.config_version(tx, card.sha256) is not None:
            return 0
        else:
            version, effective = int(last["version"]) + 1, tx.now_us + self.lead_us
        repo.insert(tx, RateCardVersion(
            version, card, effective, tx.now_us, CONFIG_PUBLISHER, f"config:{card.sha256}").row())
        return version

    def _version(self, number: int) -> RateCardVersion:
        for v in self._snapshot.versions:
            if v.version == number:
                return v
        raise errors.NotFound(f"rate card version {number} does not exist", reason="RATE_CARD_VERSION_NOT_FOUND",
                              metadata={"version": number})

    # ---- reads (any authenticated caller) ----------------------------------------------------------

    def card_at(self, at_us: int | None, number: int = 0) -> RateCardVersion:
        if number:
            return self._version(number)
        when = self.clock.now_us() if at_us is None else at_us
        found = self._snapshot.at(when)
        if found is None:
            raise no_card(when)
        return found

    def versions(self, limit: int, below: int | None) -> list[RateCardVersion]:
        """Newest first, numbered below `below` (a page's position)."""
        ordered = sorted(self._snapshot.versions, key=lambda v: -v.version)
        if below is not None:
            ordered = [v for v in ordered if v.version < below]
        return ordered[:limit]

    def estimate(self, usage: Usage, at_us: int | None) -> Quote:
        return self.quote(usage, self.clock.now_us() if at_us is None else at_us)

    # ---- publishing (admin) ------------------------------------------------------------------

    async def publish(
        self, principal: Principal, card: RateCard, effective_at_us: int | None, *, request_id: str,
        fingerprint: str,
    ) -> RateCardVersion:
        principal.require(Role.ADMIN, what="PublishRateCard")
        now = self.clock.now_us()
        if effective_at_us is not None and effective_at_us < now:
            raise errors.InvalidArgument(
                "effective_time must be now or later: a published version never reprices the past",
                reason="EFFECTIVE_TIME_IN_PAST", metadata={"field": "effective_time"},
            )
        lead = self.lead_us
        op = Publish()

        async def apply(tx: LedgerTx) -> int:
            last = await repo.latest(tx)
            version = int(last["version"]) + 1 if last else 1
            effective = max(effective_at_us if effective_at_us is not None else 0, tx.now_us + lead)
            repo.insert(tx, RateCardVersion(
                version, card, effective, tx.now_us, principal.subject, request_id).row())
            op.made = {"rate_card_version": version, "effective_at_us": effective}
            return version

        op.fn = apply
        op.idempotency = Idempotency.of_request(principal, "PublishRateCard", request_id, fingerprint)
        made = await self.writer.submit(op)
        await self.refresh()  # this process prices with it from its instant, whatever the poll's phase
        return self._version(int(made))
