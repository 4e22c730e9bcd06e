"""Usage priced from the rate card: the usage domain's side of pricing.

A Spend or Reserve that gives `usage` instead of an amount is priced inside
its ledger batch, at the batch's instant (the transfer's own date), with the
rate card version in effect then (PricingService.quote: in memory, no I/O).
A Capture of a hold reserved by usage is priced at the hold's instant, so
with the version the hold was made at: the price agreed when the credits were
set aside. The transfer records meter, quantity, dimensions, version, unit
price and the priced instant (transfer_usage)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from flownexus.billing.v1 import common_pb2

from server.ledger.ops import UsageRecord
from server.platform import errors
from server.pricing.service import Quote, Usage


class Quoter(Protocol):
    """What the usage domain asks of pricing (server/pricing/service.py's PricingService)."""

    def quote(self, usage: Usage, at_us: int) -> Quote: ...


class MeteredUsage:
    """A request's usage, priced when the ledger applies it (ops.Metered).
    `shared`: identical usages priced at one instant (a batch's) share one
    record, as their quote is one (a Spend's; a Reserve writes its hold into
    its own)."""

    __slots__ = ("pricing", "shared", "usage")

    def __init__(self, pricing: Quoter, usage: Usage, *, shared: bool = True) -> None:
        self.pricing = pricing
        self.usage = usage
        self.shared = shared

    def priced_at(self, at_us: int) -> UsageRecord:
        quote = self.pricing.quote(self.usage, at_us)
        if not self.shared:
            return record(self.usage, quote, at_us)
        global _records_at
        if _records_at != at_us:
            _records.clear()
            _records_at = at_us
        # By the quote's identity: pricing keeps one quote per usage of an
        # instant (an int's hash, not the usage's); the quote is kept with its
        # record, so its id cannot be another's meanwhile.
        found = _records.get(id(quote))
        if found is None or found[0] is not quote:
            made = record(self.usage, quote, at_us)
            if len(_records) < MAX_RECORDS_KEPT:
                _records[id(quote)] = (quote, made)
            return made
        return found[1]


# The records of the last instant priced, by their quote's id, with the quote.
MAX_RECORDS_KEPT = 1024
_records: dict[int, tuple[Quote, UsageRecord]] = {}
_records_at = -1


def record(usage: Usage, quote: Quote, at_us: int, hold_id: str = "") -> UsageRecord:
    return UsageRecord(
        meter=usage.meter, quantity=usage.quantity, dimensions=dict(usage.dimensions), version=quote.version,
        unit_price=quote.unit_price, per_units=quote.per_units, amount=quote.amount, priced_at_us=at_us,
        hold_id=hold_id,
    )


def stored(row: dict[str, Any]) -> UsageRecord:
    """A transfer_usage row as a record; `amount` is the transfer's (0 when unknown)."""
    return UsageRecord(
        meter=row["meter"], quantity=int(row["quantity"]), dimensions=json.loads(row["dimensions"]),
        version=int(row["version"]), unit_price=int(row["unit_price"]), per_units=int(row["per_units"]),
        amount=int(row.get("amount") or 0), priced_at_us=int(row["priced_at_us"]), hold_id=row.get("hold_id") or "",
    )


def capture_price(pricing: Quoter, held: UsageRecord, quantity: int) -> UsageRecord | None:
    """The final quantity of a hold reserved by usage, priced with the hold's
    version (at its instant); None for 0 (nothing is charged)."""
    if quantity == 0:
        return None
    usage = Usage(held.meter, quantity, tuple(sorted(held.dimensions.items())))
    quote = pricing.quote(usage, held.priced_at_us)
    if quote.version != held.version:  # a version made effective at the hold's very instant later on
        raise errors.FailedPrecondition(
            "the hold's rate card version no longer prices its instant", reason="RATE_CARD_CHANGED",
            metadata={"version": str(held.version)},
        )
    return record(usage, quote, held.priced_at_us, held.hold_id)


def usage_into(msg: common_pb2.PricedUsage, usage: UsageRecord) -> None:
    """What a transfer priced from usage used, as the API shows it."""
    msg.meter = usage.meter
    msg.quantity = usage.quantity
    if usage.dimensions:
        msg.dimensions.update(usage.dimensions)
    msg.rate_card_version = usage.version
    msg.unit_price_millicredits = usage.unit_price
    msg.per_units = usage.per_units
    msg.amount_millicredits = usage.amount
    msg.priced_at.FromMicroseconds(usage.priced_at_us)
