"""Portal rules: who may open a portal for which wallet, single-use links,
browser sessions bound to one wallet, and their form tokens.

A link's token is an HMAC under the server's secret of the request's
idempotency key (a repeat returns the same link); only SHA-256 hashes of the
link token and of the session cookie are stored. The session is a user
Principal for its one wallet: every page calls the domains' public services
with it, so the portal follows exactly the API's rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from server.db.engine import Database
from server.ledger import keys
from server.ledger.model import wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock
from server.platform.config import Settings
from server.portal import repository as repo
from server.portal.models import PortalLink, PortalSession

MAX_RETURN_URL = 2048
TOKEN = 43  # 32 random or HMAC bytes, urlsafe base64 without padding


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    return len(token) == TOKEN and all(c.isalnum() or c in "-_" for c in token)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_return_url(url: str, *, allow_http_loopback: bool) -> str:
    """https anywhere; http only on a loopback host, and only when allowed."""
    if not url:
        return ""
    bad = errors.InvalidArgument(
        "return_url must be an absolute https URL"
        + (" (or http on a loopback host)" if allow_http_loopback else ""),
        reason="INVALID_RETURN_URL",
    )
    if len(url) > MAX_RETURN_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise bad
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise bad from None
    if not host or parts.username or parts.password:
        raise bad
    if parts.scheme == "https" or (parts.scheme == "http" and allow_http_loopback and _loopback(host)):
        return url
    raise bad


class PortalService:
    def __init__(self, settings: Settings, db: Database, writer: LedgerWriter, clock: Clock) -> None:
        self.settings = settings
        self.db = db
        self.writer = writer
        self.clock = clock
        self._secret = settings.effective_jwt_secret.encode()

    def _mac(self, what: str) -> str:
        return _b64(hmac.new(self._secret, what.encode(), hashlib.sha256).digest())

    # ---- CreatePortalSession -------------------------------------------------------------

    async def create_session(
        self, principal: Principal, *, user_id: str, org_id: str, return_url: str, request_id: str, fingerprint: str
    ) -> PortalLink:
        if org_id:
            raise errors.InvalidArgument(
                "organisation portals are not available yet: leave org_id empty", reason="ORG_PORTAL_UNSUPPORTED"
            )
        user = principal.resolve_user(user_id)
        back = check_return_url(return_url, allow_http_loopback=self.settings.portal_allow_http_loopback)
        idem = Idempotency.of_request(principal, "CreatePortalSession", request_id, fingerprint)
        token = self._mac(keys.portal_link(idem.key))
        link_id = digest(token)
        now = self.clock.now_us()
        expires = now + self.settings.portal_link_ttl_seconds * 1_000_000

        async def apply(tx: LedgerTx) -> None:
            if await repo.link(tx, link_id) is None:
                repo.add_link(tx, {
                    "id": link_id, "user_id": user, "return_url": back, "created_at_us": now,
                    "link_expires_at_us": expires, "opened_at_us": 0, "cookie_hash": None,
                    "session_expires_at_us": 0,
                })

        await self.writer.submit(Call(fn=apply, accounts={wallet_id(user)}, idempotency=idem))
        row = await repo.read_link(self.db.reader, link_id)
        assert row is not None
        base = self.settings.public_base_url.rstrip("/")
        return PortalLink(f"{base}/portal/open/{token}", row["link_expires_at_us"], user)

    # ---- the browser ------------------------------------------------------------------------

    async def open(self, token: str) -> tuple[str, PortalSession] | None:
        """Spend a link: a new session cookie, or None when the link is unknown,
        expired or already used (the three look alike)."""
        if not well_formed(token):
            return None
        link_id = digest(token)
        cookie = _b64(secrets.token_bytes(32))
        cookie_hash = digest(cookie)
        now = self.clock.now_us()
        ends = now + self.settings.portal_session_ttl_seconds * 1_000_000
        opened: list[PortalSession] = []

        async def apply(tx: LedgerTx) -> None:
            row = await repo.link(tx, link_id)
            if row is None or row["opened_at_us"] or row["link_expires_at_us"] <= now:
                return
            repo.open_link(tx, row, now_us=now, cookie_hash=cookie_hash, session_expires_at_us=ends)
            opened.append(PortalSession(cookie_hash, row["user_id"], row["return_url"], ends))

        await self.writer.submit(Call(fn=apply))
        return (cookie, opened[0]) if opened else None

    async def session(self, cookie: str) -> PortalSession | None:
        if not well_formed(cookie):
            return None
        row = await repo.by_cookie(self.db.reader, digest(cookie))
        if row is None or row["session_expires_at_us"] <= self.clock.now_us():
            return None
        return PortalSession(row["cookie_hash"], row["user_id"], row["return_url"], row["session_expires_at_us"])

    @staticmethod
    def principal(session: PortalSession) -> Principal:
        """A session acts as its user, with a user's rights and nothing more."""
        return Principal(session.user_id, Role.USER)

    def csrf_token(self, session: PortalSession) -> str:
        return self._mac(keys.portal_csrf(session.cookie_hash))

    def csrf_ok(self, session: PortalSession, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session).encode(), token.encode())
