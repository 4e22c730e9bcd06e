"""Bearer tokens (JWT, HS256). `sub` is the user; `role` is user, service or admin."""

from __future__ import annotations

import contextvars
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

import jwt

from server.platform import errors, ids


class Role(StrEnum):
    USER = "user"
    SERVICE = "service"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    # A scoped key's secret: the wallet owner (role user), restricted to
    # spending and reading, under the key's budgets.
    key_id: str = ""
    # A key made on an org's wallet: the member who made it (held to their budgets too).
    member: str = ""

    @property
    def privileged(self) -> bool:
        return self.role in (Role.SERVICE, Role.ADMIN)

    @property
    def own_user(self) -> str:
        """The account a call about the caller's own account acts on: a user
        token's. A principal is its role and its subject: a service or admin
        token has no wallet of its own, and its subject may equal a user's id
        (acting on that wallet "as its own" would top up or charge that user)."""
        if self.role != Role.USER:
            raise errors.PermissionDenied(
                f"this call acts on the caller's own account, which a {self.role.value} token does not have",
                reason="USER_TOKEN_REQUIRED", metadata={"role": self.role.value},
            )
        return self.subject

    def resolve_user(self, user_id: str) -> str:
        """The account a request may touch: its own, or the named one for service/admin."""
        if self.privileged:
            if not user_id:
                raise errors.InvalidArgument(
                    f"a {self.role.value} token names the user whose account it acts on (user_id)",
                    reason="USER_ID_REQUIRED", metadata={"field": "user_id", "role": self.role.value},
                )
            return user_id
        if not user_id or user_id == self.subject:
            return self.subject
        raise errors.PermissionDenied("a user token reaches only its own account", reason="NOT_YOUR_ACCOUNT")

    def require(self, *roles: Role, what: str) -> None:
        if self.role not in roles:
            raise errors.PermissionDenied(
                f"{what} needs the {' or '.join(r.value for r in roles)} role",
                reason="ROLE_REQUIRED",
                metadata={"required": ",".join(r.value for r in roles), "role": self.role.value},
            )

    @property
    def scope(self) -> str:
        """Idempotency scope: request_ids of different callers never collide."""
        if self.key_id:
            return f"key/{self.key_id}"
        return f"{self.role.value}/{self.subject}"


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")


def principal() -> Principal:
    try:
        return current_principal.get()
    except LookupError:
        raise errors.Unauthenticated("missing bearer token", reason="MISSING_TOKEN") from None


def mint_token(
    secret: str, subject: str, role: Role, *, ttl_seconds: int = 86400, issuer: str = "flownexus-billing",
    audience: str | None = None,
) -> str:
    """A token for this API, or with `audience` one for another resource (the
    MCP endpoint): this API refuses any token that carries an audience."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "role": role.value, "iat": now, "exp": now + ttl_seconds, "iss": issuer}
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenCache:
    """Verified tokens, kept until they expire: callers reuse one token for
    many calls, and HMAC verification is a measurable part of a Spend."""

    def __init__(self, secret: str, issuer: str, size: int = 10_000) -> None:
        self.secret = secret
        self.issuer = issuer
        self.size = size
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def principal(self, token: str) -> Principal:
        hit = self._cache.get(token)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        claims_exp: list[float] = []
        found = decode_token(self.secret, token, issuer=self.issuer, exp_out=claims_exp)
        self._cache[token] = (found, claims_exp[0])
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return found


def decode_token(
    secret: str, token: str, *, issuer: str = "flownexus-billing", exp_out: list[float] | None = None
) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=issuer,
            # `iat` ahead of our clock is the issuer's clock skew, not a reason to
            # refuse: `exp` bounds a token's life.
            options={"require": ["sub", "exp", "role"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise errors.Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
    except jwt.InvalidAudienceError:
        # No audience is passed, so PyJWT refuses every token that has one: a
        # token minted for the MCP endpoint (`token --audience`) is not for us.
        raise errors.Unauthenticated("the token was issued for another audience", reason="WRONG_AUDIENCE") from None
    except jwt.InvalidSignatureError:
        # Well-formed, but signed with another key: most often a token minted
        # with another BILLING_JWT_SECRET (or another checkout's dev secret).
        # Say so, and nothing about the secret itself.
        raise errors.Unauthenticated(
            "the token's signature does not match this server's secret", reason="INVALID_SIGNATURE"
        ) from None
    except jwt.PyJWTError:
        raise errors.Unauthenticated("invalid token", reason="INVALID_TOKEN") from None
    sub, role = claims.get("sub"), claims.get("role")
    # isinstance first: a forged list or object role must not reach the set lookup
    if not isinstance(role, str) or role not in {r.value for r in Role}:
        raise errors.Unauthenticated("invalid token claims", reason="INVALID_TOKEN")
    # The subject follows the grammar of user ids whatever the role: a wallet
    # no operator can name (GetAccount, SetAccountFlag answer INVALID_USER_ID)
    # must never be made, and control characters or a lone surrogate would
    # break PostgreSQL text and log lines.
    if not isinstance(sub, str) or not ids.is_user_id(sub):
        raise errors.Unauthenticated(f"the token's subject must be {ids.USER_ID_RULE}", reason="INVALID_SUBJECT")
    if exp_out is not None:
        exp_out.append(float(claims["exp"]))
    return Principal(sub, Role(role))
