"""Organisations: roles, rights and the views of an org and a member."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from server.keys.models import BudgetUse
from server.platform.auth import Principal


class OrgRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class Right(StrEnum):
    """What a principal asks to do with an org's wallet."""

    READ = "read"  # balance, history, reports, payments
    SPEND = "spend"  # Spend, SpendBatch, Reserve, Capture, Release
    MANAGE = "manage"  # buy, auto-refill, tier, members, org keys


# The roles that hold each right.
ROLES_WITH = {
    Right.READ: frozenset(OrgRole),
    Right.SPEND: frozenset(OrgRole),
    Right.MANAGE: frozenset({OrgRole.OWNER, OrgRole.ADMIN}),
}


@dataclass
class OrgView:
    id: str
    name: str
    created_by: str
    created_at_us: int
    role: str  # the caller's role; "" for an operator who is not a member


@dataclass
class MemberView:
    org_id: str
    user_id: str
    role: str
    added_at_us: int
    budgets: list[BudgetUse]


@dataclass(frozen=True)
class Access:
    """A principal's access to an org's wallet: the wallet's owner id (the
    org's id) and the member acting ("" for an operator)."""

    wallet_owner: str
    member: str


# OrgsService.wallet_of, as the domains that act on a wallet are handed it:
# (principal, user_id, org_id, right) -> the owner id of the wallet to act on.
WalletOf = Callable[[Principal, str, str, Right], Awaitable[str]]


# OrgsService.access, as the domains that spend are handed it:
# (principal, org_id, right, user_id) -> the wallet and the member acting.
AccessOf = Callable[[Principal, str, Right, str], Awaitable[Access]]
