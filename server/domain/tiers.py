"""The tier catalogue and what the ledger needs from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.config import Settings
from server.ledger.tx import TierPolicy


@dataclass(frozen=True)
class TierSpec:
    name: str
    display_name: str
    monthly_millicredits: int
    price_cents: int
    custom_price: bool = False
    unlimited: bool = False
    features: tuple[str, ...] = field(default_factory=tuple)


def catalogue(settings: Settings) -> dict[str, TierSpec]:
    return {
        "free": TierSpec("free", "Free", settings.free_monthly_credits * 1000, 0,
                         features=("Basic features", "Community support")),
        "pro": TierSpec("pro", "Pro", settings.pro_monthly_credits * 1000, settings.pro_price_cents,
                        features=("Priority access", "Email support")),
        "enterprise": TierSpec("enterprise", "Enterprise", 0, 0, custom_price=True, unlimited=True,
                               features=("Dedicated resources", "SLA", "Unlimited usage")),
    }


def tier_policy(settings: Settings) -> TierPolicy:
    cat = catalogue(settings)
    # Pro renews through paid invoices, not the calendar.
    return TierPolicy({"free": cat["free"].monthly_millicredits, "pro": None, "enterprise": 0})
