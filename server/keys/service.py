"""Key rules: who may create, read, change and revoke a key; the principal
of a key's secret; the key a spend is attributed to. Keys are written by the
ledger writer (exclusive operations under the wallet's lock), so a change or
a revocation is committed before the next spend through the key is applied."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from server.events.models import EventType
from server.events.service import emit
from server.keys import repository as repo
from server.keys.budgets import COUNTERS, roll_windows
from server.keys.models import (
    SECRET_PREFIX,
    BudgetLimit,
    BudgetUse,
    KeyView,
    Window,
    budgets_json,
    budgets_of,
    secret_hash,
    window_bounds,
)
from server.keys.repository import KeysRepository
from server.ledger.model import wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs.models import AccessOf, Right
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock
from server.platform.config import Settings
from server.platform.ids import hidden_char, is_org_id

MAX_AMOUNT = 10**15
MAX_LABEL = 100
# Categories a key may name: its row is read on each of its spends, so a key
# of 10,000 categories (a 600 KB request) would cost every spend that much.
MAX_CATEGORIES = 32
KEY_ID = re.compile(r"^key_[0-9a-f]{32}$")
# A key's created_by when a user token made it (Principal.scope).
USER_SCOPE = f"{Role.USER.value}/"


@dataclass
class KeyFields:
    """What CreateKey and UpdateKey set (None: unchanged, on update)."""

    label: str | None = None
    budgets: list[BudgetLimit] | None = None
    categories: list[str] | None = None
    max_spend: int | None = None
    expires_at_us: int | None = None


def check_label(label: str) -> str:
    if not label or len(label) > MAX_LABEL:
        raise errors.InvalidArgument(f"label must be 1 to {MAX_LABEL} characters", reason="INVALID_LABEL")
    hidden = hidden_char(label)
    if hidden:
        raise errors.InvalidArgument(
            f"label contains {hidden}, a control, bidirectional or invisible character", reason="INVALID_LABEL",
            metadata={"field": "label", "character": hidden},
        )
    return label


def check_budgets(budgets: list[BudgetLimit]) -> list[BudgetLimit]:
    if not budgets:
        raise errors.InvalidArgument("a key needs at least one budget", reason="INVALID_BUDGET")
    seen: set[Window] = set()
    for b in budgets:
        if b.window in seen:
            raise errors.InvalidArgument(
                f"two budgets for the {b.window} window", reason="INVALID_BUDGET", metadata={"window": str(b.window)}
            )
        seen.add(b.window)
        if not 0 < b.limit <= MAX_AMOUNT:
            raise errors.InvalidArgument(
                f"a budget's limit must be between 1 and {MAX_AMOUNT} millicredits", reason="INVALID_BUDGET",
                metadata={"window": str(b.window), "got": b.limit},
            )
    return budgets


def check_key_id(value: str, *, field: str = "key_id") -> str:
    if value in _WELL_FORMED:  # a set's lookup, not the regex, for every item of a batch through keys
        return value
    if not KEY_ID.match(value or ""):
        raise errors.InvalidArgument(f"{field} is missing or malformed", reason="INVALID_KEY_ID", metadata={"field": field})
    if len(_WELL_FORMED) > 100_000:
        _WELL_FORMED.clear()
    _WELL_FORMED.add(value)
    return value


# Key ids found well formed (bounded: ids a caller makes up cannot grow it without end).
_WELL_FORMED: set[str] = set()


class KeysService:
    def __init__(
        self, writer: LedgerWriter, repo: KeysRepository, clock: Clock, settings: Settings, org_access: AccessOf
    ) -> None:
        self.writer = writer
        self.org_access = org_access
        self.repo = repo
        self.clock = clock
        self.settings = settings

    # ---- the secret as a bearer token (every call: no cache) ------------------------------

    async def principal(self, secret: str) -> Principal:
        found = await self.repo.by_secret(secret_hash(secret))
        if found is None:
            raise errors.Unauthenticated("unknown key", reason="INVALID_KEY")
        key_id, user_id, revoked_at, expires_at, created_by = found
        if revoked_at:
            raise errors.Unauthenticated("the key was revoked", reason="KEY_REVOKED", metadata={"key_id": key_id})
        if expires_at and expires_at <= self.clock.now_us():
            raise errors.Unauthenticated("the key has expired", reason="KEY_EXPIRED", metadata={"key_id": key_id})
        member = ""
        if is_org_id(user_id) and str(created_by).startswith(USER_SCOPE):
            member = str(created_by)[len(USER_SCOPE):]
            # A member's key ends with their membership: removal ends their access at once.
            await self.org_access(Principal(member, Role.USER), str(user_id), Right.READ, "")
        return Principal(str(user_id), Role.USER, key_id=str(key_id), member=member)

    @staticmethod
    def spending_key(principal: Principal, key_id: str) -> str:
        """The key a Spend or Reserve is attributed to: the caller's own key, or
        the one a service (or the owner) names. The ledger checks that it is
        live and on the spending wallet, under the wallet's lock."""
        if key_id:
            check_key_id(key_id)
        if principal.key_id:
            if key_id and key_id != principal.key_id:
                raise errors.PermissionDenied(
                    "a key spends only as itself", reason="KEY_MISMATCH", metadata={"key_id": principal.key_id}
                )
            return principal.key_id
        return key_id

    # ---- the budget windows' boundary (a job on the service clock) ------------------------

    async def reset_windows(self, batch: int = 500, max_batches: int = 20) -> int:
        """Keys whose window with use has ended get their counter moved and the
        reset event at the boundary (within the job's interval), not at their next use."""
        moved = 0
        for _ in range(max_batches):
            found = await self.repo.due(self.clock.now_us(), batch)
            if not found:
                break
            ids = [k for k, _ in found]

            async def apply(tx: LedgerTx, ids: list[str] = ids) -> int:
                return await roll_windows(tx, ids)

            n: int = await self.writer.submit(Call(fn=apply, accounts={wallet_id(u) for _, u in found}))
            moved += n
            if len(found) < batch or not n:
                break
        return moved

    # ---- rules -------------------------------------------------------------------------------

    async def _may_manage(self, principal: Principal, owner: str) -> None:
        if principal.role == Role.ADMIN:
            return
        if is_org_id(owner) and not principal.key_id:
            await self.org_access(principal, owner, Right.MANAGE, "")  # an org's owners and admins
            return
        if principal.role != Role.USER or principal.subject != owner:
            raise errors.PermissionDenied(
                "only the wallet's owner or an admin manages its keys", reason="NOT_YOUR_KEY"
            )

    async def _key(self, principal: Principal, key_id: str, *, manage: bool) -> dict[str, Any]:
        key = await self.repo.key(key_id)
        if key is None:
            raise errors.NotFound("key not found", reason="KEY_NOT_FOUND")
        if principal.key_id:
            if principal.key_id != key_id:
                raise errors.PermissionDenied("a key reads only itself", reason="KEY_NOT_ALLOWED")
        elif principal.role == Role.USER and principal.subject != key["user_id"]:
            if not is_org_id(key["user_id"]):
                raise errors.NotFound("key not found", reason="KEY_NOT_FOUND")  # another wallet's: not shown
            await self.org_access(principal, key["user_id"], Right.READ, "")  # an org's: its members
        if manage:
            await self._may_manage(principal, key["user_id"])
        return key

    def _check(self, fields: KeyFields) -> None:
        if fields.label is not None:
            check_label(fields.label)
        if fields.budgets is not None:
            check_budgets(fields.budgets)
        if fields.categories is not None and len(set(fields.categories)) > MAX_CATEGORIES:
            raise errors.InvalidArgument(
                f"a key names at most {MAX_CATEGORIES} categories", reason="INVALID_CATEGORY",
                metadata={"field": "categories", "limit": MAX_CATEGORIES},
            )
        if fields.max_spend is not None and not 0 <= fields.max_spend <= MAX_AMOUNT:
            raise errors.InvalidAmount("max_spend_millicredits must be between 0 and 10^15")
        if fields.expires_at_us and fields.expires_at_us <= self.clock.now_us():
            raise errors.InvalidArgument("expires_at must be in the future", reason="INVALID_EXPIRY")

    async def create(
        self, principal: Principal, *, user_id: str, fields: KeyFields, request_id: str, fingerprint: str,
        org_id: str = "",
    ) -> tuple[KeyView, str]:
        if org_id:
            user = org_id
        else:
            user = principal.resolve_user(user_id) if principal.role == Role.USER else (user_id or principal.subject)
        await self._may_manage(principal, user)
        assert fields.label is not None and fields.budgets is not None
        self._check(fields)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        new_id = f"key_{uuid.uuid4().hex}"
        cap = self.settings.max_keys_per_wallet

        async def apply(tx: LedgerTx) -> str:
            await tx.wallet(user)  # locks the wallet: the count below cannot race
            if await repo.count_keys(tx, user) >= cap:
                raise errors.ResourceExhausted(
                    f"a wallet has at most {cap} keys", reason="TOO_MANY_KEYS", metadata={"limit": cap}
                )
            repo.insert_key(tx, {
                "id": new_id, "user_id": user, "label": fields.label, "secret_hash": secret_hash(secret),
                "secret_prefix": secret[:12], "budgets": budgets_json(fields.budgets or []),
                "categories": json.dumps(sorted(set(fields.categories or []))), "max_spend": fields.max_spend or 0,
                "expires_at_us": fields.expires_at_us or 0, "revoked_at_us": 0, "created_by": principal.scope,
                "created_at_us": tx.now_us,
            })
            emit(tx, EventType.KEY_CREATED, user, {"key_id": new_id, "label": fields.label})
            return new_id

        idem = Idempotency.of_request(principal, "CreateKey", request_id, fingerprint)
        made = await self.writer.submit(Call(fn=apply, accounts={wallet_id(user)}, idempotency=idem))
        view = await self.get(principal, str(made))
        # A repeat of the request replays the key, never the secret (only its hash is kept).
        return view, secret if made == new_id else ""

    async def get(self, principal: Principal, key_id: str) -> KeyView:
        return await self._view(await self._key(principal, key_id, manage=False))

    async def list(
        self, principal: Principal, user_id: str, limit: int, after: tuple[int, str] | None, org_id: str = ""
    ) -> list[KeyView]:
        user = (await self.org_access(principal, org_id, Right.READ, user_id)).wallet_owner if org_id \
            else principal.resolve_user(user_id)
        return [await self._view(k) for k in await self.repo.page(user, limit, after)]

    async def update(
        self, principal: Principal, key_id: str, fields: KeyFields, *, request_id: str, fingerprint: str
    ) -> KeyView:
        key = await self._key(principal, key_id, manage=True)
        self._check(fields)

        async def apply(tx: LedgerTx) -> str:
            row = await repo.locked_key(tx, key_id)
            assert row is not None
            if row["revoked_at_us"]:
                raise errors.FailedPrecondition("the key was revoked", reason="KEY_REVOKED")
            values: dict[str, Any] = {}
            if fields.label is not None:
                values["label"] = fields.label
            if fields.budgets is not None:
                values["budgets"] = budgets_json(fields.budgets)
            if fields.categories is not None:
                values["categories"] = json.dumps(sorted(set(fields.categories)))
            if fields.max_spend is not None:
                values["max_spend"] = fields.max_spend
            if fields.expires_at_us is not None:
                values["expires_at_us"] = fields.expires_at_us
            repo.update_key(tx, row, **values)
            return key_id

        idem = Idempotency.of_request(principal, "UpdateKey", request_id, fingerprint)
        await self.writer.submit(Call(fn=apply, accounts={wallet_id(key["user_id"])}, idempotency=idem))
        return await self.get(principal, key_id)

    async def revoke(self, principal: Principal, key_id: str, *, request_id: str, fingerprint: str) -> KeyView:
        key = await self._key(principal, key_id, manage=True)

        async def apply(tx: LedgerTx) -> str:
            row = await repo.locked_key(tx, key_id)
            assert row is not None
            if not row["revoked_at_us"]:
                repo.update_key(tx, row, revoked_at_us=tx.now_us)
                emit(tx, EventType.KEY_REVOKED, row["user_id"], {"key_id": key_id})
            return key_id

        idem = Idempotency.of_request(principal, "RevokeKey", request_id, fingerprint)
        await self.writer.submit(Call(fn=apply, accounts={wallet_id(key["user_id"])}, idempotency=idem))
        return await self.get(principal, key_id)

    async def _view(self, key: dict[str, Any]) -> KeyView:
        now = self.clock.now_us()
        budgets = budgets_of(key)
        used: dict[Window, int] = {Window.LIFETIME: key["lifetime_used"]}
        for w, (start_col, used_col) in COUNTERS.items():
            # A counter of an earlier window: nothing used in the current one yet.
            used[w] = key[used_col] if key[start_col] == window_bounds(w, now)[0] else 0
        return KeyView(
            id=key["id"], user_id=key["user_id"], label=key["label"], categories=json.loads(key["categories"]),
            max_spend=key["max_spend"], expires_at_us=key["expires_at_us"], created_at_us=key["created_at_us"],
            revoked_at_us=key["revoked_at_us"], secret_prefix=key["secret_prefix"],
            budgets=[
                BudgetUse(b.window, b.limit, used.get(b.window, 0), window_bounds(b.window, now)[1]) for b in budgets
            ],
        )
