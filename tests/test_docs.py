"""The README and the pages under docs/ document every BILLING_* setting the service reads."""

from __future__ import annotations

from pathlib import Path

from server.platform.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_every_setting_is_documented() -> None:
    missing = [
        f"BILLING_{name.upper()}" for name in Settings.model_fields if f"`BILLING_{name.upper()}`" not in README
    ]
    assert not missing, f"undocumented settings: {missing}"
