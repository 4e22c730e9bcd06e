"""Earnings as a user sees them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UserStats:
    """GetUserStats: every amount in millicredits."""

    credits_earned: int
    credits_spent: int
    apps_published: int
    challenges_completed: int
    app_revenue: int
