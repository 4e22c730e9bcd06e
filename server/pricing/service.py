"""Pricing rules: the snapshot of every rate card version each process prices
from, publishing a version, and reading meters and cards.

Public API for other domains (they import only from here):
- `Usage`, `Quote`, `PricingError`;
- `PricingService.quote(usage, at_us) -> Quote`: synchronous, no I/O;
- `usage_from_proto(msg) -> Usage`: a `flownexus.billing.v1.Usage` read and
  checked for form (PricingError, INVALID_ARGUMENT); whether the meter and
  its dimensions exist is `quote`'s answer, at the spend's instant."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

from server.pricing import card as cards
from server.pricing.card import (
    MAX_QUANTITY,
    METER_NAME,
    METER_NAME_MAX,
    InvalidRateCard,
    PricingError,
)
from server.pricing.models import CONFIG_PUBLISHER, Quote, RateCard, RateCardVersion, Usage

__all__ = [
    "DEFAULT_RATE_CARD", "InvalidRateCard", "PricingError", "PricingService", "Quote", "Snapshot", "Usage",
    "usage_from_proto",
]

DEFAULT_RATE_CARD = Path(__file__).with_name("default_rate_card.toml")
MAX_USAGE_DIMENSIONS = 8


def usage_from_proto(msg: Any) -> Usage:
    """A Usage message as a value, checked for form: a meter name, a quantity
    from 1 to MAX_QUANTITY, at most a few dimensions (sorted by name)."""
    meter = msg.meter
    if not meter:
        raise PricingError("usage.meter is required", reason="UNKNOWN_METER", field="usage.meter")
    if len(meter) > METER_NAME_MAX or not METER_NAME.match(meter):
        raise PricingError("usage.meter is not a meter name (PricingService.ListMeters)",
                           reason="UNKNOWN_METER", field="usage.meter")
    quantity = msg.quantity
    if not 1 <= quantity <= MAX_QUANTITY:
        raise PricingError(f"usage.quantity must be a whole number of units from 1 to {MAX_QUANTITY}",
                           reason="INVALID_QUANTITY", field="usage.quantity")
    dims = msg.dimensions
    if len(dims) > MAX_USAGE_DIMENSIONS:
        raise PricingError(f"usage.dimensions has at most {MAX_USAGE_DIMENSIONS} entries",
                           reason="UNKNOWN_DIMENSION", field="usage.dimensions")
    for name, value in dims.items():
        if len(name) > 32 or not cards.DIMENSION_NAME.match(name):
            raise PricingError("usage.dimensions names a dimension that no meter has",
                               reason="UNKNOWN_DIMENSION", field="usage.dimensions")
        if len(value) > 32 or not cards.DIMENSION_VALUE.match(value):
            raise PricingError(f"usage.dimensions.{name} is not a value of any meter",
                               reason="INVALID_DIMENSION_VALUE", field=f"usage.dimensions.{name}")
    return Usage(meter, quantity, tuple(sorted(dims.items())))


class Snapshot:
    """Every version, immutable: the one in effect at an instant is the one with
    the latest effective_at at or before it (of equal ones, the highest number)."""

    __slots__ = ("_keys", "latest", "versions")

    def __init__(self, versions: list[RateCardVersion]) -> None:
        ordered = sorted(versions, key=lambda v: (v.effective_at_us, v.version))
        self._keys = [(v.effective_at_us, v.version) for v in ordered]
        self.versions = ordered
        self.latest = max(versions, key=lambda v: v.version) if versions else None

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


class PricingService:
    def __init__(self, card: RateCard | None = None) -> None:
        card = card or load_file(DEFAULT_RATE_CARD)
        self._snapshot = Snapshot([RateCardVersion(1, card, 0, 0, CONFIG_PUBLISHER, "")])

    def quote(self, usage: Usage, at_us: int) -> Quote:
        """The price of `usage` with the version in effect at `at_us`."""
        version = self._snapshot.at(at_us)
        if version is None:  # unreachable once started: version 1 is effective from the epoch
            raise PricingError("no rate card is in effect at this instant", reason="NO_RATE_CARD")
        return cards.price(version.card, version.version, usage)
