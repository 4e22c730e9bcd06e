"""The documentation (README.md and the pages under docs/) documents every
BILLING_* setting the service reads, every relative link in it resolves (the
file exists and, for a `#fragment` into a Markdown page, so does the heading),
and docs/development.md maps every domain to its test folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.platform.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(p.read_text() for p in PAGES)
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_setting_is_documented() -> None:
    missing = [
        f"BILLING_{name.upper()}" for name in Settings.model_fields if f"`BILLING_{name.upper()}`" not in DOCS
    ]
    assert not missing, f"undocumented settings: {missing}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", _FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: and the like
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_link_check_sees_links_and_headings() -> None:
    readme = ROOT / "README.md"
    assert "a-first-call" in anchors(readme)
    assert "several-serving-processes-on-one-host-serve---workers-n" in anchors(ROOT / "docs" / "operations.md")
    assert "docs/development.md" in _LINK.findall(readme.read_text())


def test_every_test_module_is_in_a_domain_folder() -> None:
    tests = ROOT / "tests"
    assert not sorted(p.name for p in tests.glob("test_*.py")), "test modules go into tests/<domain>/"
    folders = sorted({p.parent for p in tests.glob("*/test_*.py")})
    assert len(folders) >= 10, folders
    for folder in folders:
        assert (folder / "__init__.py").exists(), f"{folder.name} lacks __init__.py"
    # The map in docs/development.md names the folders of server/'s domains.
    development = (ROOT / "docs" / "development.md").read_text()
    domains = [d.name for d in (ROOT / "server").iterdir() if (d / "service.py").exists()]
    assert len(domains) >= 8, domains
    assert not [d for d in domains if f"`tests/{d}/`" not in development], "docs/development.md lacks a domain's tests"
