"""How amounts read in text shown to people (messages, pages, descriptions):
integer arithmetic only, never a float near an amount."""

from __future__ import annotations


def credits_text(millicredits: int) -> str:
    """Millicredits as credits: `1,234.5`, `-2`, `0.001` (no trailing zeros)."""
    whole, frac = divmod(abs(millicredits), 1000)
    sign = "-" if millicredits < 0 else ""
    return f"{sign}{whole:,}" + (f".{frac:03d}".rstrip("0") if frac else "")
