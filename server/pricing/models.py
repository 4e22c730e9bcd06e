"""Pricing's values: usage, quotes, meters and rate card versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Usage(NamedTuple):
    """What an operation used: a quantity of one meter, with its dimensions.
    A tuple: one is made for every priced request and hashed to find its
    price, both in C (a frozen dataclass's __init__ and __hash__ are Python's)."""

    meter: str
    quantity: int  # whole units, > 0
    dimensions: tuple[tuple[str, str], ...] = ()  # (name, value), sorted by name


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one usage: amount = ceil(quantity * unit_price / per_units)."""

    amount: int  # millicredits, >= 1
    version: int  # the rate card version used
    unit_price: int  # millicredits per `per_units` units
    per_units: int


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    values: tuple[str, ...]  # sorted


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    unit: str
    description: str
    per_units: int
    dimensions: tuple[Dimension, ...]  # sorted by name
    # The unit price of each combination of dimension values, keyed by the
    # values in the order of `dimensions` (() for a meter without dimensions).
    prices: dict[tuple[str, ...], int] = field(hash=False, compare=False)
    # The same prices keyed as a Usage names them, ((dimension, value), ...)
    # sorted by dimension: one dict lookup prices a usage.
    by_usage: dict[tuple[tuple[str, str], ...], int] = field(hash=False, compare=False, default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateCard:
    """A validated card: its meters by name, and its canonical form (the JSON
    stored and hashed, so that equal cards compare equal whatever the file's layout)."""

    meters: dict[str, Meter] = field(hash=False)
    canonical: str
    sha256: str


@dataclass(frozen=True, slots=True)
class RateCardVersion:
    version: int
    card: RateCard
    effective_at_us: int
    published_at_us: int
    published_by: str  # the admin's subject, or CONFIG_PUBLISHER
    request_id: str

    def row(self) -> dict[str, Any]:
        return {
            "version": self.version, "card": self.card.canonical, "card_sha256": self.card.sha256,
            "effective_at_us": self.effective_at_us, "published_at_us": self.published_at_us,
            "published_by": self.published_by, "request_id": self.request_id,
        }


# published_by of a version made from the rate card file at start.
CONFIG_PUBLISHER = "config"
