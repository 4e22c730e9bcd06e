"""Scoped keys: windows, budgets and the view of a key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.platform.clock import window_bounds

__all__ = ["window_bounds"]

# A key's secret starts with this, so that the interceptor (and a leak
# scanner) tells it from a JWT at a glance.
SECRET_PREFIX = "fnk_"


class Window(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    LIFETIME = "lifetime"


WINDOWS = tuple(Window)


def secret_hash(secret: str) -> str:
    # The secret has 256 random bits: a plain SHA-256 cannot be reversed or guessed.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class BudgetLimit:
    window: Window
    limit: int


def budgets_of(row: dict[str, Any]) -> list[BudgetLimit]:
    return [BudgetLimit(Window(w), int(limit)) for w, limit in json.loads(row["budgets"] or "[]")]


def budgets_json(budgets: list[BudgetLimit]) -> str:
    return json.dumps([[str(b.window), b.limit] for b in sorted(budgets, key=lambda b: WINDOWS.index(b.window))])


@dataclass
class BudgetUse:
    window: Window
    limit: int
    used: int
    resets_at_us: int  # 0: never

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass
class KeyView:
    id: str
    user_id: str
    label: str
    categories: list[str]
    max_spend: int
    expires_at_us: int
    created_at_us: int
    revoked_at_us: int
    secret_prefix: str
    budgets: list[BudgetUse] = field(default_factory=list)
