"""The seed's units at the MCP edge, the API's inside, converted exactly.

- Credits are JSON numbers of whole credits: millicredits / 1000, exact to
  3 decimals (12.345). Money is USD: cents / 100 (19.99).
- Amounts coming in are refused (invalid_amount) when they do not convert
  exactly: a fraction of a cent or of a millicredit is never rounded away.
- Dates are ISO 8601 in UTC; enums are lowercase words.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

MILLI = 1000
INT64_MAX = 2**63 - 1
CENTS = 100
# A decimal written as a string: "50", "12.5", "-3.25" (agents sometimes quote numbers).
_DECIMAL = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")


class Refusal(Exception):
    """A call the adapter refuses before (or instead of) calling the API; it
    becomes a tool result with isError and this structured body."""

    def __init__(self, error: str, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.metadata = dict(metadata or {})


def _number(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Refusal("invalid_argument", f"{field} must be a number", {"field": field})
    if isinstance(value, float) and not math.isfinite(value):
        raise Refusal("invalid_amount", f"{field} must be a finite number", {"field": field})
    if isinstance(value, str) and not _DECIMAL.match(value.strip()):
        raise Refusal("invalid_argument", f"{field} must be a number", {"field": field})
    try:
        # str() of a float is its shortest round-trip form: 10.1 -> "10.1", exactly what was sent.
        return Decimal(value.strip() if isinstance(value, str) else str(value))
    except InvalidOperation:  # pragma: no cover - the pattern above admits only decimals
        raise Refusal("invalid_argument", f"{field} must be a number", {"field": field}) from None


def _scaled(value: Any, field: str, scale: int, unit: str, what: str) -> int:
    exact = _number(value, field) * scale
    if exact != exact.to_integral_value():
        raise Refusal(
            "invalid_amount",
            f"{field} must be a whole number of {what}: {value} {unit} is not (nothing is rounded)",
            {"field": field, "got": str(value)},
        )
    if abs(exact) > INT64_MAX:
        raise Refusal("invalid_amount", f"{field} is far too large", {"field": field, "got": str(value)})
    return int(exact)


def cents_of(usd: Any, field: str = "amount") -> int:
    """USD in, US cents out; a fraction of a cent is refused."""
    return _scaled(usd, field, CENTS, "USD", "cents")


def millicredits_of(credits: Any, field: str) -> int:
    """Credits in, millicredits out; more than 3 decimals is refused."""
    return _scaled(credits, field, MILLI, "credits", "millicredits (3 decimals)")


def _exact(units: int, scale: int) -> int | float:
    if units % scale == 0:
        return units // scale
    value = units / scale
    # A binary float prints as its shortest round-trip decimal; check that this
    # decimal is the exact amount (true below ~10^15 units) rather than trust it.
    if Decimal(repr(value)) != Decimal(units) / scale:
        raise ValueError(f"{units} / {scale} has no exact JSON number")
    return value


def credits(millicredits: int) -> int | float:
    """Millicredits in, whole credits out as a JSON number (12345 -> 12.345)."""
    return _exact(int(millicredits), MILLI)


def usd(cents: int) -> int | float:
    """US cents in, USD out as a JSON number (1999 -> 19.99)."""
    return _exact(int(cents), CENTS)


def iso(ts: Timestamp | None) -> str | None:
    """ISO 8601 in UTC (`2031-03-14T09:26:53.123456Z`); None when unset."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return str(ts.ToJsonString())


def enum_word(name: str, prefix: str) -> str:
    """`TIER_PRO` -> `pro`, `PAYMENT_STATUS_PARTIALLY_REFUNDED` -> `partially_refunded`."""
    return name.removeprefix(prefix).lower()


# ---- error metadata ---------------------------------------------------------------------

# API field names as the MCP tools call them.
FIELDS = {
    "amount_cents": "amount",
    "amount_millicredits": "amount",
    "threshold_millicredits": "threshold",
    "monthly_credits_millicredits": "monthly_credits",
    "page_size": "limit",
    "page_token": "cursor",
}


def _int(value: str) -> int | None:
    return int(value) if re.fullmatch(r"-?\d{1,19}", value) else None


def error_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """ErrorInfo metadata in the tools' units: `*_millicredits` become credits
    and `*_cents` USD, under the name without the suffix (shortfall_millicredits
    -> shortfall); bare min/max/got follow the unit of the `field` they are
    about; field names are the tools' argument names. Other values stay strings."""
    field = metadata.get("field", "")
    bare = credits if field.endswith("_millicredits") else usd if field.endswith("_cents") else None
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        n = _int(value)
        if key == "field":
            out[key] = FIELDS.get(value, value)
        elif key.endswith("_millicredits") and n is not None:
            out[key.removesuffix("_millicredits")] = credits(n)
        elif key.endswith("_cents") and n is not None:
            out[key.removesuffix("_cents")] = usd(n)
        elif key in ("min", "max", "got") and bare is not None and n is not None:
            out[key] = bare(n)
        else:
            out[key] = value
    return out
