"""The rate card's format and rules: parsing (a TOML file or the JSON of a
PublishRateCard request), validation (a bad card is refused whole, naming the
path of the first problem), the canonical form, and the price of a usage.

Prices are exact integers: a meter's unit price is in millicredits per
`per_units` units, one price for each combination of its dimensions' values.
The price of one usage rounds up, once per spend:

    amount = ceil(quantity * unit_price / per_units)      (integers only)

so every priced spend costs at least 1 millicredit (unit prices are >= 1)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from server.ledger.model import MAX_AMOUNT
from server.platform import errors
from server.pricing.models import Dimension, Meter, Quote, RateCard, Usage

# Bounds: quantity * unit_price stays below 2**63 (10**12 * 10**6 = 10**18), so
# the product never overflows an int64 in any language that reads the card.
MAX_QUANTITY = 10**12
MAX_UNIT_PRICE = 10**6  # 1,000 credits per `per_units` units
MAX_PER_UNITS = 10**9
MAX_METERS = 64
MAX_DIMENSIONS = 3
MAX_VALUES = 32
MAX_PRICES = 1024  # priced combinations of one meter
MAX_DESCRIPTION = 200
MAX_CARD_BYTES = 256 * 1024

METER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}$")
METER_NAME_MAX = 64
UNIT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DIMENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DIMENSION_VALUE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,31}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

CARD_KEYS = frozenset({"meters"})
METER_KEYS = frozenset({"unit", "description", "per_units", "dimensions", "prices", "price"})


class PricingError(errors.InvalidArgument):
    """A usage the rate card cannot price, or a card that cannot be used.
    INVALID_ARGUMENT with an ErrorInfo reason; `field` names the path."""

    reason = "PRICING_ERROR"

    def __init__(self, message: str, *, reason: str, field: str = "", **metadata: object) -> None:
        meta: dict[str, object] = {"field": field} if field else {}
        meta.update(metadata)
        super().__init__(message, reason=reason, metadata=meta)
        self.field = field


class InvalidRateCard(PricingError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"rate card refused: {path}: {problem}", reason="INVALID_RATE_CARD", field=path)
        self.path = path
        self.problem = problem


def shown(key: str) -> str:
    """A key of the caller's as a path component: clipped, controls masked
    (an error's message and metadata never carry a huge or binary key back)."""
    key = CONTROL.sub("?", key)
    return key if len(key) <= 64 else key[:61] + "..."


def _int(value: Any, path: str, low: int, high: int) -> int:
    # bool is an int in Python; a card's `true` is not a price.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRateCard(path, f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise InvalidRateCard(path, f"must be an integer from {low} to {high}, got {value}")
    return value


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRateCard(path, "must be a table")
    return value


def _name(value: str, pattern: re.Pattern[str], path: str, rule: str, max_len: int = 32) -> str:
    if len(value) > max_len or not pattern.match(value):
        raise InvalidRateCard(path, rule)
    return value


def _unknown(table: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in sorted(table):
        if key not in allowed:
            raise InvalidRateCard(f"{path}.{shown(key)}" if path else shown(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _meter(name: str, raw: Any) -> Meter:
    path = f"meters.{shown(name)}"
    _name(name, METER_NAME, path, "a meter's name is 1 to 4 lowercase words (a-z, 0-9, _) joined by dots, "
          f"at most {METER_NAME_MAX} characters", METER_NAME_MAX)
    table = _table(raw, path)
    _unknown(table, METER_KEYS, path)
    unit = table.get("unit")
    if not isinstance(unit, str):
        raise InvalidRateCard(f"{path}.unit", "is required: a lowercase word such as \"second\"")
    _name(unit, UNIT, f"{path}.unit", "must be a lowercase word (a-z, 0-9, _), at most 32 characters")
    description = table.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or CONTROL.search(description):
        raise InvalidRateCard(f"{path}.description", f"must be text of at most {MAX_DESCRIPTION} characters "
                              "without control characters")
    per_units = _int(table.get("per_units", 1), f"{path}.per_units", 1, MAX_PER_UNITS)
    dims_raw = _table(table.get("dimensions", {}), f"{path}.dimensions")
    if len(dims_raw) > MAX_DIMENSIONS:
        raise InvalidRateCard(f"{path}.dimensions", f"at most {MAX_DIMENSIONS} dimensions")
    dimensions: list[Dimension] = []
    for dname in sorted(dims_raw):
        dpath = f"{path}.dimensions.{shown(dname)}"
        _name(dname, DIMENSION_NAME, dpath, "a dimension's name is a lowercase word (a-z, 0-9, _), at most 32 characters")
        values = dims_raw[dname]
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
            raise InvalidRateCard(dpath, f"must list 1 to {MAX_VALUES} values")
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InvalidRateCard(f"{dpath}[{i}]", "must be a string")
            _name(v, DIMENSION_VALUE, f"{dpath}[{i}]",
                  "a value is lowercase letters, digits, _, . or -, at most 32 characters")
        if len(set(values)) != len(values):
            raise InvalidRateCard(dpath, "lists a value twice")
        dimensions.append(Dimension(dname, tuple(sorted(values))))
    combos = 1
    for d in dimensions:
        combos *= len(d.values)
    if combos > MAX_PRICES:
        raise InvalidRateCard(f"{path}.dimensions", f"at most {MAX_PRICES} combinations of values are priced")
    prices: dict[tuple[str, ...], int] = {}
    if not dimensions:
        if "prices" in table:
            raise InvalidRateCard(f"{path}.prices", "a meter without dimensions has one `price`")
        prices[()] = _int(table.get("price"), f"{path}.price", 1, MAX_UNIT_PRICE)
    else:
        if "price" in table:
            raise InvalidRateCard(f"{path}.price", "a meter with dimensions prices each value in `prices`")
        tree = table.get("prices")
        if tree is None:
            raise InvalidRateCard(f"{path}.prices", "is required: a price for every value of every dimension")
        for combo in itertools.product(*(d.values for d in dimensions)):
            node: Any = tree
            ppath = f"{path}.prices"
            for value in combo:
                node = _table(node, ppath)
                ppath = f"{ppath}.{value}"
                if value not in node:
                    raise InvalidRateCard(ppath, "has no price: every value of every dimension is priced")
                node = node[value]
            prices[combo] = _int(node, ppath, 1, MAX_UNIT_PRICE)
        _no_extra(tree, dimensions, f"{path}.prices")
    names = [d.name for d in dimensions]
    by_usage = {tuple(zip(names, combo, strict=True)): p for combo, p in prices.items()}
    return Meter(name, unit, description, per_units, tuple(dimensions), prices, by_usage)


def _no_extra(node: Any, dimensions: list[Dimension], path: str) -> None:
    """Prices only for declared values: a price under an unknown value is a typo."""
    if not dimensions:
        return
    node = _table(node, path)
    allowed = frozenset(dimensions[0].values)
    for key in sorted(node):
        if key not in allowed:
            raise InvalidRateCard(f"{path}.{shown(key)}", f"is not a value of dimension {dimensions[0].name}")
        _no_extra(node[key], dimensions[1:], f"{path}.{key}")


def _canonical(meters: dict[str, Meter]) -> str:
    out: dict[str, Any] = {}
    for name in sorted(meters):
        m = meters[name]
        entry: dict[str, Any] = {"unit": m.unit, "per_units": m.per_units}
        if m.description:
            entry["description"] = m.description
        if m.dimensions:
            entry["dimensions"] = {d.name: list(d.values) for d in m.dimensions}
            tree: dict[str, Any] = {}
            for combo, price in m.prices.items():
                node = tree
                for v in combo[:-1]:
                    node = node.setdefault(v, {})
                node[combo[-1]] = price
            entry["prices"] = tree
        else:
            entry["price"] = m.prices[()]
        out[name] = entry
    return json.dumps({"meters": out}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse(data: Any) -> RateCard:
    """A card from its parsed document (TOML or JSON): validated whole."""
    table = _table(data, "(card)")
    _unknown(table, CARD_KEYS, "")
    meters_raw = _table(table.get("meters", {}), "meters")
    if not meters_raw:
        raise InvalidRateCard("meters", "a card has at least one meter")
    if len(meters_raw) > MAX_METERS:
        raise InvalidRateCard("meters", f"at most {MAX_METERS} meters")
    meters = {name: _meter(name, meters_raw[name]) for name in sorted(meters_raw)}
    canonical = _canonical(meters)
    return RateCard(meters, canonical, hashlib.sha256(canonical.encode()).hexdigest())


def parse_json(text: str, path: str = "card_json") -> RateCard:
    if len(text.encode()) > MAX_CARD_BYTES:
        raise InvalidRateCard(path, f"is larger than {MAX_CARD_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidRateCard(path, f"is not JSON ({exc})") from None
    return parse(data)


def parse_toml(text: str, path: str = "card") -> RateCard:
    if len(text.encode()) > MAX_CARD_BYTES:
        raise InvalidRateCard(path, f"is larger than {MAX_CARD_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRateCard(path, f"is not TOML ({exc})") from None
    return parse(data)


def rounded_up(quantity: int, unit_price: int, per_units: int) -> int:
    """The rounding rule: a spend's price rounded up to a whole millicredit, in integers."""
    return -(-(quantity * unit_price) // per_units)


def meter_of(card: RateCard, version: int, name: str) -> Meter:
    meter = card.meters.get(name)
    if meter is None:
        raise PricingError(f"no meter named {shown(name)!r} in rate card version {version}",
                           reason="UNKNOWN_METER", field="usage.meter", meter=shown(name), version=version)
    return meter


def combination(meter: Meter, dimensions: Mapping[str, object]) -> tuple[str, ...]:
    """The key of `meter.prices` that these dimension values name: a value of
    each of the meter's dimensions, and no other dimension; PricingError
    (MISSING_DIMENSION, INVALID_DIMENSION_VALUE, UNKNOWN_DIMENSION) otherwise."""
    given = dict(dimensions)
    combo: list[str] = []
    for d in meter.dimensions:
        value = given.pop(d.name, None)
        if value is None:
            raise PricingError(f"meter {meter.name} is priced by dimension {d.name!r} "
                               f"({', '.join(d.values)})", reason="MISSING_DIMENSION",
                               field=f"usage.dimensions.{d.name}", meter=meter.name, dimension=d.name)
        if value not in d.values:
            raise PricingError(f"dimension {d.name} of meter {meter.name} is one of {', '.join(d.values)}",
                               reason="INVALID_DIMENSION_VALUE", field=f"usage.dimensions.{d.name}",
                               meter=meter.name, dimension=d.name)
        combo.append(str(value))
    if given:
        name = min(given)
        raise PricingError(f"meter {meter.name} has no dimension {shown(name)!r}", reason="UNKNOWN_DIMENSION",
                           field="usage.dimensions", meter=meter.name, dimension=shown(name))
    return tuple(combo)


def price(card: RateCard, version: int, usage: Usage) -> Quote:
    """The price of one usage under one card (rounded up, per spend)."""
    meter = card.meters.get(usage.meter)
    if meter is not None:  # the spend path: one lookup, integer arithmetic
        unit_price = meter.by_usage.get(usage.dimensions)
        quantity = usage.quantity
        if unit_price is not None and type(quantity) is int and 0 < quantity <= MAX_QUANTITY:
            amount = rounded_up(quantity, unit_price, meter.per_units)
            if amount <= MAX_AMOUNT:
                return Quote(amount, version, unit_price, meter.per_units)
    return _refuse(card, version, usage)


def _refuse(card: RateCard, version: int, usage: Usage) -> Quote:
    """The slow path: the precise refusal of a usage the card cannot price
    (or the price of one whose dimensions were not given in sorted order)."""
    meter = meter_of(card, version, usage.meter)
    quantity = usage.quantity
    if isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
        raise PricingError(f"quantity must be a whole number of units from 1 to {MAX_QUANTITY}",
                           reason="INVALID_QUANTITY", field="usage.quantity")
    unit_price = meter.prices[combination(meter, dict(usage.dimensions))]
    amount = rounded_up(quantity, unit_price, meter.per_units)
    if amount > MAX_AMOUNT:
        raise PricingError(f"this usage costs more than {MAX_AMOUNT} millicredits, the most one spend may cost",
                           reason="INVALID_QUANTITY", field="usage.quantity")
    return Quote(amount, version, unit_price, meter.per_units)
