"""Portal vocabulary: a portal link and the browser session it opens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PortalRow = dict[str, Any]  # a row of portal_sessions

COOKIE = "portal_session"
# Over https the cookie takes the __Host- prefix: Secure, Path=/, no Domain.
SECURE_COOKIE = "__Host-portal_session"


@dataclass(frozen=True)
class PortalLink:
    """What CreatePortalSession answers."""

    url: str
    expires_at_us: int
    user_id: str


@dataclass(frozen=True)
class PortalSession:
    """An open browser session: one wallet, until `expires_at_us`."""

    cookie_hash: str
    user_id: str
    return_url: str
    expires_at_us: int
