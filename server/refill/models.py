"""What other domains see of auto-refill."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RefillStatus:
    """Auto-refill as CheckBalance reports it."""

    enabled: bool = False
    threshold: int = 0
    paused_reason: str = ""
