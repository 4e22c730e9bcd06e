"""Org rules: who may create, read and manage an org and its members; and the
one question other domains ask about an org's wallet (`access`: may this
principal act on that wallet with that right). Membership changes are
written by the ledger writer under the org wallet's lock, so the owner count
cannot race, and a removal is committed before the member's next call."""

from __future__ import annotations

from typing import Any

from server.keys.budgets import COUNTERS
from server.keys.models import (
    BudgetLimit,
    BudgetUse,
    Window,
    budgets_json,
    budgets_of,
    window_bounds,
)
from server.keys.service import check_budgets
from server.ledger import keys
from server.ledger.model import BalanceEvent, wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs import repository as repo
from server.orgs.budgets import roll_windows
from server.orgs.models import ROLES_WITH, Access, MemberView, OrgRole, OrgView, Right
from server.orgs.repository import OrgsRepository
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock
from server.platform.config import Settings
from server.platform.ids import hidden_char

MAX_NAME = 100
MANAGERS = ROLES_WITH[Right.MANAGE]


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME:
        raise errors.InvalidArgument(f"name must be 1 to {MAX_NAME} characters", reason="INVALID_ORG_NAME",
                                     metadata={"field": "name"})
    hidden = hidden_char(name)
    if hidden:
        raise errors.InvalidArgument(
            f"name contains {hidden}, a control, bidirectional or invisible character", reason="INVALID_ORG_NAME",
            metadata={"field": "name", "character": hidden},
        )
    return name


def org_not_found(org_id: str) -> errors.DomainError:
    return errors.NotFound("org not found", reason="ORG_NOT_FOUND", metadata={"org_id": org_id})


def not_member(org_id: str) -> errors.DomainError:
    return errors.PermissionDenied(
        "the caller is not a member of this org", reason="NOT_ORG_MEMBER", metadata={"org_id": org_id}
    )


def role_required(org_id: str, needed: frozenset[OrgRole], role: str) -> errors.DomainError:
    return errors.PermissionDenied(
        f"this needs the org role {' or '.join(sorted(needed))}", reason="ORG_ROLE_REQUIRED",
        metadata={"org_id": org_id, "required": ",".join(sorted(needed)), "role": role},
    )


def member_view(row: dict[str, Any], now_us: int) -> MemberView:
    used: dict[Window, int] = {Window.LIFETIME: row["lifetime_used"]}
    for w, (start_col, used_col) in COUNTERS.items():
        # A counter of an earlier window: nothing used in the current one yet.
        used[w] = row[used_col] if row[start_col] == window_bounds(w, now_us)[0] else 0
    return MemberView(
        org_id=row["org_id"], user_id=row["user_id"], role=row["role"], added_at_us=row["added_at_us"],
        budgets=[
            BudgetUse(b.window, b.limit, used.get(b.window, 0), window_bounds(b.window, now_us)[1])
            for b in budgets_of(row)
        ],
    )


class OrgsService:
    def __init__(self, writer: LedgerWriter, repo: OrgsRepository, clock: Clock, settings: Settings) -> None:
        self.writer = writer
        self.repo = repo
        self.clock = clock
        self.settings = settings

    # ---- the member budgets' window boundary (a job on the service clock) ---------------------

    async def reset_windows(self, batch: int = 500, max_batches: int = 20) -> int:
        """Members whose window with use has ended get their counter moved and the
        reset event at the boundary (within the job's interval), as keys do."""
        moved = 0
        for _ in range(max_batches):
            now = self.clock.now_us()
            current = [(s, u, window_bounds(w, now)[0]) for w, (s, u) in COUNTERS.items()]
            found = await self.repo.windows_ended(current, batch)
            if not found:
                break

            async def apply(tx: LedgerTx, found: list[tuple[str, str]] = found) -> int:
                return await roll_windows(tx, found)

            n: int = await self.writer.submit(Call(fn=apply, accounts={wallet_id(o) for o, _ in found}))
            moved += n
            if len(found) < batch or not n:
                break
        return moved

    # ---- the public question of other domains ----------------------------------------------

    async def access(self, principal: Principal, org_id: str, right: Right, user_id: str = "") -> Access:
        """May `principal` act on the org's wallet with `right`? A user token acts
        as itself; a service token for the member it names (`user_id`, spending
        and reading only); an admin token on any org. One indexed read."""
        if principal.key_id:
            # A key's principal is its wallet's owner: a key made on the org's wallet.
            if principal.subject == org_id and right != Right.MANAGE:
                return Access(org_id, principal.member)
            raise errors.PermissionDenied(
                "a key acts only on the wallet it was made on", reason="KEY_NOT_ALLOWED", metadata={"org_id": org_id}
            )
        if principal.role == Role.ADMIN:
            if await self.repo.org(org_id) is None:
                raise org_not_found(org_id)
            return Access(org_id, user_id)
        if principal.role == Role.SERVICE:
            if right == Right.MANAGE:
                principal.require(Role.USER, Role.ADMIN, what="managing an org's wallet")
            if right == Right.READ and not user_id:
                # A service reads any wallet, as it reads any user's.
                if await self.repo.org(org_id) is None:
                    raise org_not_found(org_id)
                return Access(org_id, "")
            if not user_id:
                raise errors.InvalidArgument(
                    "a service token names the member it acts for (user_id) with org_id",
                    reason="USER_ID_REQUIRED", metadata={"field": "user_id", "role": principal.role.value},
                )
            member = user_id
        else:
            if user_id and user_id != principal.subject:
                raise errors.PermissionDenied("a user token acts only as itself", reason="NOT_YOUR_ACCOUNT")
            member = principal.subject
        role = await self.repo.role(org_id, member)
        if not role:
            if await self.repo.org(org_id) is None:
                raise org_not_found(org_id)
            raise not_member(org_id)
        if role not in ROLES_WITH[right]:
            raise role_required(org_id, ROLES_WITH[right], role)
        return Access(org_id, member)

    async def wallet_of(self, principal: Principal, user_id: str, org_id: str, right: Right) -> str:
        """The owner id of the wallet a request acts on: without an org, the
        user's own (as before, no read); with one, the org's after `access`."""
        if not org_id:
            return principal.resolve_user(user_id)
        return (await self.access(principal, org_id, right, user_id=user_id)).wallet_owner

    # ---- orgs ------------------------------------------------------------------------------

    async def create(
        self, principal: Principal, *, name: str, owner_user_id: str, request_id: str, fingerprint: str
    ) -> OrgView:
        check_name(name)
        if principal.role == Role.ADMIN:
            if not owner_user_id:
                raise errors.InvalidArgument(
                    "an admin token names the org's first owner (owner_user_id)", reason="USER_ID_REQUIRED",
                    metadata={"field": "owner_user_id", "role": principal.role.value},
                )
            owner = owner_user_id
        else:
            owner = principal.own_user
            if owner_user_id and owner_user_id != owner:
                raise errors.PermissionDenied("a user token creates orgs it owns", reason="NOT_YOUR_ACCOUNT")
        new_id = keys.new_org_id()
        cap = self.settings.max_orgs_per_user

        async def apply(tx: LedgerTx) -> str:
            await tx.wallet(owner)  # locks the creator's wallet: the count below cannot race
            if await repo.count_orgs_created(tx, owner) >= cap:
                raise errors.ResourceExhausted(
                    f"a user creates at most {cap} orgs", reason="TOO_MANY_ORGS", metadata={"limit": cap}
                )
            repo.insert_org(tx, {"id": new_id, "name": name, "created_by": owner, "created_at_us": tx.now_us})
            await tx.wallet(new_id)  # the org's own wallet
            repo.insert_member(tx, new_id, owner, OrgRole.OWNER)
            return new_id

        idem = Idempotency.of_request(principal, "CreateOrg", request_id, fingerprint)
        made = await self.writer.submit(
            Call(fn=apply, accounts={wallet_id(owner), wallet_id(new_id)}, idempotency=idem)
        )
        return await self.get(principal, str(made))

    async def get(self, principal: Principal, org_id: str) -> OrgView:
        org = await self.repo.org(org_id)
        if org is None:
            raise org_not_found(org_id)
        role = ""
        if principal.role == Role.USER and not principal.key_id:
            role = await self.repo.role(org_id, principal.subject)
            if not role:
                raise not_member(org_id)
        elif principal.role != Role.ADMIN:
            principal.require(Role.USER, Role.ADMIN, what="GetOrg")
        return OrgView(org["id"], org["name"], org["created_by"], org["created_at_us"], role)

    async def list_for(
        self, principal: Principal, user_id: str, limit: int, after: tuple[int, str] | None
    ) -> list[tuple[OrgView, int]]:
        """The user's orgs with the position of each (its membership's added_at_us)."""
        user = principal.resolve_user(user_id)
        return [
            (OrgView(r["id"], r["name"], r["created_by"], r["created_at_us"], r["role"]), r["added_at_us"])
            for r in await self.repo.orgs_of(user, limit, after)
        ]

    # ---- members ---------------------------------------------------------------------------

    async def members(
        self, principal: Principal, org_id: str, limit: int, after: tuple[int, str] | None
    ) -> list[MemberView]:
        await self.get(principal, org_id)  # its members and admins only
        now = self.clock.now_us()
        return [member_view(r, now) for r in await self.repo.members(org_id, limit, after)]

    async def _caller_role(self, tx: LedgerTx, principal: Principal, org_id: str) -> str:
        """The caller's role under the org wallet's lock ("owner" for an admin token)."""
        if await repo.locked_org(tx, org_id) is None:
            raise org_not_found(org_id)
        if principal.role == Role.ADMIN:
            return OrgRole.OWNER
        row = await repo.locked_member(tx, org_id, principal.subject)
        if row is None or row["removed_at_us"]:
            raise not_member(org_id)
        return str(row["role"])

    async def _change(
        self, principal: Principal, method: str, org_id: str, request_id: str, fingerprint: str,
        fn: Any,
    ) -> MemberView:
        principal.require(Role.USER, Role.ADMIN, what=method)

        async def apply(tx: LedgerTx) -> str:
            caller = await self._caller_role(tx, principal, org_id)
            row = await fn(tx, caller)
            return str(row["user_id"])

        idem = Idempotency.of_request(principal, method, request_id, fingerprint)
        user = await self.writer.submit(Call(fn=apply, accounts={wallet_id(org_id)}, idempotency=idem))
        row = await self.repo.member(org_id, str(user))
        assert row is not None
        return member_view(row, self.clock.now_us())

    async def add_member(
        self, principal: Principal, *, org_id: str, user_id: str, role: OrgRole, budgets: list[BudgetLimit],
        request_id: str, fingerprint: str,
    ) -> MemberView:
        if budgets:
            check_budgets(budgets)

        async def add(tx: LedgerTx, caller: str) -> dict[str, Any]:
            _may_manage(org_id, caller, role)
            row = await repo.locked_member(tx, org_id, user_id)
            if row is None:
                return repo.insert_member(tx, org_id, user_id, role, budgets_json(budgets))
            if not row["removed_at_us"]:
                raise errors.DomainError(
                    "the user is already a member of this org", reason="MEMBER_EXISTS",
                    code=errors.Code.ALREADY_EXISTS, metadata={"org_id": org_id, "user_id": user_id, "role": row["role"]},
                )
            repo.update_member(
                tx, row, role=str(role), added_at_us=tx.now_us, removed_at_us=0, budgets=budgets_json(budgets)
            )
            return row

        return await self._change(principal, "AddMember", org_id, request_id, fingerprint, add)

    async def update_member(
        self, principal: Principal, *, org_id: str, user_id: str, role: OrgRole | None,
        budgets: list[BudgetLimit] | None, request_id: str, fingerprint: str,
    ) -> MemberView:
        """Change a member's role and/or budgets (None: unchanged); new
        budgets hold from the next spend, counting the use already made."""
        if budgets:
            check_budgets(budgets)

        async def update(tx: LedgerTx, caller: str) -> dict[str, Any]:
            row = await _live_member(tx, org_id, user_id)
            _may_manage(org_id, caller, role or row["role"], row["role"])
            values: dict[str, Any] = {}
            if role is not None:
                if row["role"] == OrgRole.OWNER and role != OrgRole.OWNER:
                    await _not_last_owner(tx, org_id, user_id)
                values["role"] = str(role)
            if budgets is not None:
                values["budgets"] = budgets_json(budgets)
            repo.update_member(tx, row, **values)
            return row

        return await self._change(principal, "UpdateMember", org_id, request_id, fingerprint, update)

    async def remove_member(
        self, principal: Principal, *, org_id: str, user_id: str, request_id: str, fingerprint: str
    ) -> MemberView:
        leaving = principal.role == Role.USER and user_id == principal.subject

        async def remove(tx: LedgerTx, caller: str) -> dict[str, Any]:
            row = await _live_member(tx, org_id, user_id)
            if not leaving:  # anyone may leave; removing another takes a manager
                _may_manage(org_id, caller, row["role"])
            if row["role"] == OrgRole.OWNER:
                await _not_last_owner(tx, org_id, user_id)
            repo.update_member(tx, row, removed_at_us=tx.now_us)
            # Ends the member's open WatchBalance streams on the org's wallet, after the commit.
            tx.notify(BalanceEvent(user_id=org_id, kind="member_removed", member=user_id))
            return row

        return await self._change(principal, "RemoveMember", org_id, request_id, fingerprint, remove)


def _may_manage(org_id: str, caller: str, *touched: str) -> None:
    """Owners and admins manage members; only an owner makes, changes or removes an owner."""
    if caller not in MANAGERS:
        raise role_required(org_id, MANAGERS, caller)
    if OrgRole.OWNER in touched and caller != OrgRole.OWNER:
        raise role_required(org_id, frozenset({OrgRole.OWNER}), caller)


async def _live_member(tx: LedgerTx, org_id: str, user_id: str) -> dict[str, Any]:
    row = await repo.locked_member(tx, org_id, user_id)
    if row is None or row["removed_at_us"]:
        raise errors.NotFound(
            "the user is not a member of this org", reason="MEMBER_NOT_FOUND",
            metadata={"org_id": org_id, "user_id": user_id},
        )
    return row


async def _not_last_owner(tx: LedgerTx, org_id: str, user_id: str) -> None:
    if [o for o in await repo.owners(tx, org_id) if o != user_id]:
        return
    raise errors.FailedPrecondition(
        "an org keeps at least one owner: add or promote another owner first", reason="LAST_OWNER",
        metadata={"org_id": org_id, "user_id": user_id},
    )
