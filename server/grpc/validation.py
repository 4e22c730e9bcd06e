"""Request validation: bad input gets INVALID_ARGUMENT with a precise reason
before it reaches the ledger (protovalidate is not available offline)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from server.ledger.model import MAX_AMOUNT
from server.platform import errors, ids
from server.platform.clock import MAX_US, MIN_US

REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
OPAQUE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# Stored free text may hold tabs and newlines, never NUL or another C0/C1
# control (PostgreSQL refuses NUL in text, SQLite keeps it: both must refuse alike).
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def request_id(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("request_id is required (AIP-155)", reason="MISSING_REQUEST_ID")
    if not REQUEST_ID.match(value):
        raise errors.InvalidArgument(
            "request_id must be 1 to 128 printable ASCII characters", reason="INVALID_REQUEST_ID"
        )
    return value


def user_id(value: str, *, required: bool = False, field: str = "user_id") -> str:
    if not value:
        if required:
            raise errors.InvalidArgument(f"{field} is required", reason="INVALID_USER_ID", metadata={"field": field})
        return ""
    if not ids.is_user_id(value):
        raise errors.InvalidArgument(
            f"{field} must be {ids.USER_ID_RULE}",
            reason="INVALID_USER_ID",
            metadata={"field": field},
        )
    return value


def wallet_owner(value: str, *, required: bool = False, field: str = "user_id") -> str:
    """Where an operator names a wallet: a user's id or an org's."""
    if value and ids.is_org_id(value):
        return value
    return user_id(value, required=required, field=field)


def update_mask(paths: list[str], allowed: Sequence[str]) -> list[str]:
    """An update_mask's paths: at least one, each a field the RPC may change."""
    unknown = [p for p in paths if p not in allowed]
    if not paths or unknown:
        raise errors.InvalidArgument(
            "update_mask must name fields to change", reason="INVALID_UPDATE_MASK",
            metadata={"allowed": ",".join(allowed), "unknown": ",".join(unknown)},
        )
    return paths


def org_id(value: str, *, required: bool = False, field: str = "org_id") -> str:
    """An org's id ("org_" and 32 hex digits); empty: none (the caller's own wallet)."""
    if not value and not required:
        return ""
    if not ids.is_org_id(value):
        raise errors.InvalidArgument(
            f"{field} must be \"org_\" and 32 lowercase hex digits", reason="INVALID_ORG_ID", metadata={"field": field}
        )
    return value


def amount(value: int, *, field: str = "amount_millicredits", maximum: int = MAX_AMOUNT) -> int:
    if value <= 0 or value > maximum:
        raise errors.InvalidAmount(
            f"{field} must be between 1 and {maximum}",
            metadata={"field": field, "min": "1", "max": str(maximum), "got": str(value)},
        )
    return value


def text(value: str, *, field: str, max_len: int = 500) -> str:
    if len(value) > max_len:
        raise errors.InvalidArgument(f"{field} is longer than {max_len} characters", reason="FIELD_TOO_LONG", metadata={"field": field})
    if CONTROL_IN_TEXT.search(value):
        raise errors.InvalidArgument(f"{field} contains control characters", reason="INVALID_TEXT", metadata={"field": field})
    return value


def category(value: str) -> str:
    if value and not CATEGORY.match(value):
        raise errors.InvalidArgument(
            "category must be lowercase letters, digits, _ or -, at most 64", reason="INVALID_CATEGORY"
        )
    return value


def opaque_id(value: str, *, field: str, reason: str) -> str:
    if not OPAQUE_ID.match(value or ""):
        raise errors.InvalidArgument(f"{field} is missing or malformed", reason=reason, metadata={"field": field})
    return value


def transaction_id(value: str, *, field: str = "transaction_id") -> int:
    """A ledger transfer id (Transaction.id): a positive decimal int64."""
    # Beyond int64 no transfer has the id, and the database driver would fail
    # on it inside the writer's batch (answered as a retryable UNAVAILABLE).
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit() or not 0 < int(value) <= I64_MAX:
        raise errors.InvalidArgument(
            f"{field} is missing or malformed", reason="INVALID_TRANSACTION_ID", metadata={"field": field}
        )
    return int(value)


def metadata(values: Any) -> dict[str, str]:
    if len(values) > 16:
        raise errors.InvalidArgument("at most 16 metadata entries", reason="INVALID_METADATA")
    out = {}
    for k, v in values.items():
        if not k or len(k) > 64 or len(v) > 256:
            raise errors.InvalidArgument("metadata keys are 1-64 and values at most 256 characters", reason="INVALID_METADATA")
        if CONTROL.search(k) or CONTROL_IN_TEXT.search(v):
            raise errors.InvalidArgument(
                "metadata keys hold no control characters, values none but tab and newline",
                reason="INVALID_METADATA",
                metadata={"field": "metadata", "key": k if not CONTROL.search(k) else ""},
            )
        out[str(k)] = str(v)
    return out


def batch(items: Any, *, maximum: int) -> None:
    """A batch call as a whole: 1 to `maximum` items whose non-empty
    request_ids are distinct (two items with one id would be one request
    answered twice). An item's own fields are checked with the item."""
    if not items:
        raise errors.InvalidArgument("the batch holds no request", reason="BATCH_EMPTY")
    if len(items) > maximum:
        raise errors.InvalidArgument(
            f"at most {maximum} requests per batch", reason="BATCH_TOO_LARGE",
            metadata={"max": str(maximum), "got": str(len(items))},
        )
    seen: set[str] = set()
    for item in items:
        rid = item.request_id
        if rid in seen:
            raise errors.InvalidArgument(
                "two requests of the batch share a request_id", reason="DUPLICATE_REQUEST_ID",
                metadata={"request_id": rid[:128]},
            )
        if rid:
            seen.add(rid)


def enum(value: int, enum_type: Any, *, field: str, allow_unspecified: bool = False) -> int:
    valid = set(enum_type.values())
    if value not in valid or (value == 0 and not allow_unspecified):
        raise errors.InvalidArgument(
            f"{field} has an unknown or unspecified value {value}",
            reason="INVALID_ENUM",
            metadata={"field": field, "allowed": ",".join(n for n in enum_type.keys() if not n.endswith("UNSPECIFIED"))},
        )
    return value


def timestamp(t: Timestamp, present: bool, *, field: str) -> int | None:
    """A Timestamp field as microseconds since the epoch, or None when unset.
    Outside the type's documented range (years 1 to 9999) it is refused: such
    values overflow the microsecond arithmetic and the database's int64."""
    if not present:
        return None
    # google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
    if not (MIN_US // 1_000_000 <= t.seconds <= MAX_US // 1_000_000 and 0 <= t.nanos <= 999_999_999):
        raise errors.InvalidArgument(
            f"{field} must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            reason="INVALID_TIMESTAMP",
            metadata={"field": field, "seconds": str(t.seconds), "nanos": str(t.nanos)},
        )
    return int(t.ToMicroseconds())


def page_size(value: int) -> int:
    """AIP-158: 0 means the default, above the maximum means the maximum;
    only a negative size is refused."""
    if value < 0:
        raise errors.InvalidArgument(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            metadata={"max": str(MAX_PAGE_SIZE), "got": str(value)},
        )
    return min(value, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE


def fingerprint(method: str, request: Message, **extra: str) -> str:
    """Hash of everything a request asks for except its request_id."""
    # The request_id is taken out for the hash and put back: cheaper than a copy.
    rid = request.request_id if "request_id" in request.DESCRIPTOR.fields_by_name else ""  # type: ignore[attr-defined]
    if rid:
        request.ClearField("request_id")
    try:
        h = hashlib.sha256(method.encode())
        h.update(request.SerializeToString(deterministic=True))
    finally:
        if rid:
            request.request_id = rid  # type: ignore[attr-defined]
    for k in sorted(extra):
        h.update(f"\0{k}={extra[k]}".encode())
    return h.hexdigest()


def encode_page_token(position: Any, filters: str) -> str:
    raw = json.dumps({"p": position, "f": filters}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_page_token() -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "page_token is invalid or does not match the request's filters", reason="INVALID_PAGE_TOKEN"
    )


def _fits(value: Any, kind: type) -> bool:
    # bool is an int to Python; a forged position beyond int64 would reach the
    # database driver and fail there. Every position this service hands out
    # (a transfer id, a creation time, a row id) is positive or non-empty,
    # and a keyset query may negate it: int64's minimum has no negation. No id
    # handed out holds a control character, and PostgreSQL refuses a NUL in text.
    if kind is int:
        return type(value) is int and 0 < value <= I64_MAX
    return isinstance(value, str) and 0 < len(value) <= 255 and CONTROL.search(value) is None


def decode_page_token(token: str, filters: str, *shape: type) -> Any:
    """The position inside an opaque token: one value of `shape[0]`, or a
    list of values of `shape`'s types. Garbage, changed filters, a position
    of another shape and an integer outside int64 are refused."""
    if not token:
        return None
    try:
        if len(token) > 512:
            raise ValueError("too long")
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or data.get("f") != filters:
            raise ValueError("filters changed")
        pos = data["p"]
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        raise _bad_page_token() from None
    if len(shape) == 1:
        if not _fits(pos, shape[0]):
            raise _bad_page_token()
        return pos
    if not (isinstance(pos, list) and len(pos) == len(shape) and all(map(_fits, pos, shape))):
        raise _bad_page_token()
    return tuple(pos)


def filters_signature(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
