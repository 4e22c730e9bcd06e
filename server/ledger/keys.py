"""Every key the service builds, in one place: idempotency keys, transfer keys,
grant keys and Stripe idempotency keys.

A key is a tag followed by its parts, each length-prefixed (`tag|3:abc|1:7`),
so no two different tuples give the same key and keys of different tags never
meet: a key derived from a request (its revenue share, its settlement) can
never equal another request's key, whatever characters the caller put in a
subject or a request_id. Transfer keys written before this encoding all
start with `word:`; these all start with `word|`, so the two never collide
either. Request records of the older encoding were moved by migration 0014.
"""

from __future__ import annotations

import hashlib
import re
import uuid

# The column is String(320); longer keys are shortened to a hash of the whole.
MAX_KEY = 300
# Stripe accepts idempotency keys of up to 255 characters.
MAX_STRIPE_KEY = 255


def encode(tag: str, *parts: object, limit: int = MAX_KEY) -> str:
    out = [tag]
    for part in parts:
        s = part if type(part) is str else str(part)
        out.append(f"|{len(s)}:{s}")
    key = "".join(out)
    if len(key) <= limit:
        return key
    return f"{tag}#{hashlib.sha256(key.encode()).hexdigest()}"


# ---- requests -------------------------------------------------------------------------


def idempotency(role: str, subject: str, method: str, request_id: str) -> str:
    """A request_id is scoped to its caller (role and subject) and its method."""
    return encode("idem", role, subject, method, request_id)


def request_transfer(idempotency_key: str) -> str:
    """The transfer a request makes (Spend, Reserve, Capture, Release, Award)."""
    return encode("request", idempotency_key)


def revenue_share(transfer_key: str) -> str:
    """The publisher's share paid with the transfer of this key."""
    return encode("share", transfer_key)


def hold_settlement(transfer_key: str) -> str:
    """A Capture's return of the whole hold before the captured part is spent."""
    return encode("settle", transfer_key)


def unrequested(kind: str) -> str:
    """A transfer no request_id names (in-process callers): unique by construction."""
    return encode(kind, uuid.uuid4().hex)


# ---- holds -------------------------------------------------------------------------------


def hold(hold_id: str) -> str:
    return encode("hold", hold_id)


def hold_capture(hold_id: str) -> str:
    return encode("capture", hold_id)


def hold_release(hold_id: str) -> str:
    return encode("release", hold_id)


def hold_expiry(hold_id: str) -> str:
    return encode("expire", hold_id)


# ---- grants and their corrections --------------------------------------------------------


def award(user_id: str, source: str, source_ref: str) -> str:
    """One award per user, source and source_ref, whoever sends it."""
    return encode("award", user_id, source, source_ref)


def allowance(user_id: str, period_start_us: int) -> str:
    """The calendar allowance of one period (free, Enterprise)."""
    return encode("allowance", user_id, period_start_us)


def allowance_upgrade(user_id: str, period_start_us: int) -> str:
    """The prorated Enterprise allowance of the month of the upgrade."""
    return encode("allowance-upgrade", user_id, period_start_us)


def allowance_expiry(user_id: str, expires_at_us: int, n: int) -> str:
    """The n-th expiry of one allowance lot (a hold returned after its end expires again)."""
    return encode("allowance-expiry", user_id, expires_at_us, n)


def reversal(transfer_id: int) -> str:
    """The one reversal of a transfer, whoever asks and with whatever request_id."""
    return encode("reversal", transfer_id)


def lot_expiry(user_id: str, kind: str, expires_at_us: int, n: int) -> str:
    """The n-th expiry of a promotional (earned) lot with an expiry."""
    return encode("lot-expiry", user_id, kind, expires_at_us, n)


# The keys below are made of ids that this service or Stripe made (`pay_…`,
# `rfa_…`, `in_…`, `dp_…`: letters, digits and `_`), so `word:id` is already
# unambiguous, and it never equals a `word|…` key. They keep the form that
# committed rows have: a webhook redelivered across an upgrade still finds
# its grant and is not credited twice.


def purchase_grant(payment_id: str) -> str:
    """The credits of one payment (purchase or auto-refill), granted once."""
    return f"grant:{_server_id(payment_id)}"


def refund_clawback(payment_id: str, refunded_cents: int) -> str:
    """Keyed by the cumulative refunded amount: each new refund claws back once."""
    return f"refund:{_server_id(payment_id)}:{int(refunded_cents)}"


def dispute_clawback(dispute_id: str) -> str:
    return f"dispute:{_server_id(dispute_id)}"


def dispute_restore(dispute_id: str) -> str:
    return f"dispute-restore:{_server_id(dispute_id)}"


def allowance_invoice(invoice_id: str) -> str:
    """The Pro allowance of one paid subscription invoice."""
    return f"allowance:invoice:{_server_id(invoice_id)}"


def invoice_payment(invoice_id: str) -> str:
    """The payment row of one subscription invoice (`pro_` + the invoice id):
    every event of the invoice names the same row. Its grant is the invoice's
    allowance, `allowance_invoice(invoice_id)` (server/ledger/verify.py)."""
    return f"pro_{_server_id(invoice_id)}"



# Ids made by this service or by Stripe: ASCII letters, digits and `_`.
_SERVER_ID = re.compile(r"[A-Za-z0-9_]+")


def is_server_id(value: object) -> bool:
    return isinstance(value, str) and _SERVER_ID.fullmatch(value) is not None


def _server_id(value: str) -> str:
    if not is_server_id(value):
        raise ValueError(f"not an id made by this service or Stripe: {value!r}")
    return value


# ---- Stripe idempotency keys ------------------------------------------------------------


def stripe(tag: str, *parts: object) -> str:
    """A Stripe idempotency key: the same call for the same parts is one Stripe object."""
    return encode(f"fn-{tag}", *parts, limit=MAX_STRIPE_KEY)


def stripe_customer(user_id: str) -> str:
    """One Stripe customer per user, whoever creates it first."""
    return stripe("customer", user_id)


def stripe_refill_charge(payment_id: str) -> str:
    """An auto-refill charge is keyed by its attempt's payment id, unchanged: an
    attempt retried after a restart or an upgrade must send the same key."""
    return payment_id


def refill_attempt(job_id: str, attempt: int) -> str:
    """The payment id of one auto-refill attempt (`rfa_` + job + attempt number)."""
    return f"rfa_{job_id}_{attempt}"


# ---- events ---------------------------------------------------------------------------


def event_once(kind: str, *parts: object) -> str:
    """An event a worker emits once per subject: a lot's expiry, a day's forecast."""
    return encode("event", kind, *parts)


# ---- billing portal ---------------------------------------------------------------------


def portal_link(idempotency_key: str) -> str:
    """What a portal link's token is derived from (an HMAC under the server's
    secret): a repeat of CreatePortalSession returns the same link."""
    return encode("portal-link", idempotency_key)


def portal_csrf(cookie_hash: str) -> str:
    """What a portal session's form token is derived from."""
    return encode("portal-csrf", cookie_hash)


# ---- organisations ------------------------------------------------------------------------


def new_org_id() -> str:
    """An org's id, which is also its wallet's owner id (`org_` + 32 hex digits)."""
    return f"org_{uuid.uuid4().hex}"


def org_member(org_id: str, user_id: str) -> str:
    """The primary key of one user's membership of one org."""
    return encode("member", org_id, user_id)
