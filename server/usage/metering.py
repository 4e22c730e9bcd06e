"""Usage priced from the rate card: the usage domain's side of pricing.

A Spend or Reserve that gives `usage` instead of an amount is priced inside
its ledger batch, at the batch's instant (the transfer's own date), with the
rate card version in effect then (PricingService.priced: in memory, no I/O;
pricing makes the records, and keeps one per usage of an instant).
A Capture of a hold reserved by usage is priced at the hold's instant, so
with the version the hold was made at: the price agreed when the credits were
set aside. The transfer records meter, quantity, dimensions, version, unit
price and the priced instant (transfer_usage)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from flownexus.billing.v1 import common_pb2

from server.ledger.ops import Metered, UsageRecord
from server.platform import errors
from server.pricing.service import Quote, Usage, usage_record


class Quoter(Protocol):
    """What the usage domain asks of pricing (server/pricing/service.py's PricingService)."""

    def quote(self, usage: Usage, at_us: int) -> Quote: ...

    def priced(self, usage: Usage, at_us: int) -> UsageRecord: ...

    def usage_from_proto(self, msg: Any) -> Usage: ...


def metered(pricing: Quoter, usage: Usage, *, shared: bool = True) -> Metered:
    """A request's usage, priced when the ledger applies it (ops.Metered).
    `shared`: a Spend's record is pricing's for that usage at the batch's
    instant, shared by the batch's identical usages (a Reserve's is its own:
    the ledger writes its hold into it). A partial, not an object of ours:
    one is made for every priced request, and called in C."""
    if shared:
        return partial(pricing.priced, usage)
    return partial(_own_record, pricing, usage)


def spend_metering(pricing: Quoter) -> Callable[[Usage], Metered]:
    """`metered(pricing, usage)` of a Spend, made in C: a partial of partial,
    so that a priced request makes its Metered without a Python call."""
    return partial(partial, pricing.priced)


def _own_record(pricing: Quoter, usage: Usage, at_us: int) -> UsageRecord:
    return usage_record(usage, pricing.quote(usage, at_us), at_us)


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
    return usage_record(usage, quote, held.priced_at_us, held.hold_id)


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
