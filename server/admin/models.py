"""Admin results and audit rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.ledger.model import TransferView


class Action(StrEnum):
    """admin_actions.action: the RPC that made the change."""

    ADJUST_BALANCE = "AdjustBalance"
    REVERSE_TRANSACTION = "ReverseTransaction"
    SET_ACCOUNT_FLAG = "SetAccountFlag"
    CLEAR_ACCOUNT_FLAG = "ClearAccountFlag"


@dataclass
class AdminResult:
    action_id: str
    user_id: str
    transactions: list[TransferView] = field(default_factory=list)
    credits: int = 0
    flagged_reason: str = ""


@dataclass
class AdminActionView:
    id: str
    actor: str
    action: str
    user_id: str
    reason: str
    request_id: str
    transfer_ids: list[int]
    created_at_us: int
    details: str


@dataclass
class AccountView:
    """GetAccount: one account's rows as the read engine saw them (one
    connection; on PostgreSQL one snapshot)."""

    user_id: str
    wallet: dict[str, Any]  # accounts row joined with users (tier, period, flagged_reason, stripe_customer_id)
    lots: list[dict[str, Any]]
    holds: list[dict[str, Any]]  # active only
    subscription: dict[str, Any] | None
    refill_jobs: list[dict[str, Any]]  # newest first
    payments: list[dict[str, Any]]  # newest first
