"""Tokens over HTTP: the MCP server is an OAuth 2.0 resource server.

- In: it accepts only bearer tokens issued for it, that is with an `aud`
  claim equal to its resource URL (`python -m server token --audience URL`).
  A token for the gRPC API (no audience) is refused, and the gRPC API refuses
  these (it refuses any token with an audience).
- Out: it never forwards the caller's token. For each verified caller it
  calls the API with a token of its own, minted with the API's secret for the
  caller's subject and role, short-lived, never outliving the caller's token,
  and marked with the actor claim (RFC 8693 `act`) naming this server. The API
  therefore applies its own role rules and its own idempotency scope
  (role/subject) to exactly the principal the MCP caller is.
- A scoped key's secret (`fnk_...`, KeysService) is a credential of the API
  itself, for one agent: it is accepted as it is and passed on to the API,
  which looks it up on every call (a revoked key is refused at once) and holds
  it to the key's rights and budgets.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt
from mcp.server.auth.provider import AccessToken

ROLES = ("user", "service", "admin")
SUBJECT = re.compile(r"^.{1,128}$", re.S)
ACTOR = "flow-nexus-mcp"
# The prefix of a scoped key's secret (KeysService.CreateKey).
KEY_SECRET_PREFIX = "fnk_"


@dataclass(frozen=True)
class Caller:
    subject: str
    role: str
    expires_at: int
    key_secret: str = ""  # a scoped key: the API is called with it


class McpTokenVerifier:
    """The SDK's TokenVerifier: HS256, our issuer, our audience, sub/role/exp."""

    def __init__(self, secret: str, issuer: str, audience: str) -> None:
        self.secret = secret
        self.issuer = issuer
        self.audience = audience

    def caller(self, token: str) -> Caller | None:
        if token.startswith(KEY_SECRET_PREFIX) and len(token) > len(KEY_SECRET_PREFIX):
            return Caller("key", "key", 0, key_secret=token)  # checked by the API on every call
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                audience=self.audience,
                # `iat` ahead of our clock is the issuer's skew; `exp` bounds the token.
                options={"require": ["sub", "exp", "role", "aud"], "verify_iat": False},
            )
        except jwt.PyJWTError:
            return None
        sub, role = claims.get("sub"), claims.get("role")
        if not isinstance(sub, str) or not SUBJECT.match(sub) or not isinstance(role, str) or role not in ROLES:
            return None
        return Caller(sub, role, int(claims["exp"]))

    async def verify_token(self, token: str) -> AccessToken | None:
        who = self.caller(token)
        if who is None:
            return None
        return AccessToken(
            token=token,
            client_id=who.subject,
            scopes=[],
            expires_at=who.expires_at or None,
            resource=self.audience,
            subject=who.subject,
            claims={"iss": self.issuer, "role": who.role},
        )


class ApiTokens:
    """Tokens for the gRPC API on a caller's behalf, cached until shortly before they expire."""

    def __init__(self, secret: str, issuer: str, ttl_seconds: int = 300) -> None:
        self.secret = secret
        self.issuer = issuer
        self.ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[str, int]] = {}

    def for_caller(self, who: Caller) -> str:
        now = int(time.time())
        key = (who.subject, who.role)
        hit = self._cache.get(key)
        if hit is not None and now + 30 < hit[1] <= who.expires_at:
            return hit[0]
        exp = min(now + self.ttl, who.expires_at)
        claims = {"sub": who.subject, "role": who.role, "iat": now, "exp": exp, "iss": self.issuer, "act": {"sub": ACTOR}}
        token = jwt.encode(claims, self.secret, algorithm="HS256")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (token, exp)
        return token
