"""README.md and the pages under docs/ as a newcomer reads them: the shell
blocks of "A first call" run as written (bash -euo pipefail) from a checkout
whose `.venv` has the project installed, against a live server, and the
blocks meant to be pasted into a fresh checkout name the venv's binaries."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.harness import JWT_SECRET, Running
from tests.runbook_tools import ROOT, VENV_BIN, base_env, run_shell, section_shell_blocks

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The sections whose shell blocks a reader pastes into a checkout as they are.
CHECKOUT_SECTIONS = [
    (README, "### A first call"),
    (DOCS / "payments.md", "## Buying credits"),
    (DOCS / "payments.md", "## Try it with Stripe test mode"),
    (DOCS / "operations.md", "## From a checkout (grpcurl)"),
    (DOCS / "api.md", "## Client package"),
    (DOCS / "operations.md", "## TLS"),
]


def _checkout_with_venv(tmp: Path) -> Path:
    """A directory like a fresh clone after `make run`: the Makefile, and a
    `.venv` (the test's own, linked, never written) with its stamp."""
    work = tmp / "clone"
    venv = work / ".venv"
    venv.mkdir(parents=True)
    real = VENV_BIN.parent
    for name in ("bin", "lib", "pyvenv.cfg"):
        (venv / name).symlink_to(real / name)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    (venv / ".installed-run").touch()
    return work


def test_readme_commands_use_the_venv() -> None:
    blocks = [(path, b) for path, h in CHECKOUT_SECTIONS for b in section_shell_blocks(path, h)]
    assert len(blocks) >= 6, blocks
    for path, block in blocks:
        for line in block.splitlines():
            word = line.split()[0] if line.split() else ""
            assert word not in {"grpcurl", "pip", "python", "source"}, f"{path.name}: {line!r} (use .venv/bin/...)"
    for path in (README, *DOCS.glob("*.md")):
        assert "```sh\nsource .venv/bin/activate" not in path.read_text(), path.name


async def test_a_first_call_runs_as_written(sqlite_server: Running, tmp_path: Path) -> None:
    blocks = section_shell_blocks(README, "### A first call")
    assert len(blocks) == 1, blocks
    addr = sqlite_server.target
    script = blocks[0].replace("localhost:50051", addr)
    assert "localhost:50051" in blocks[0] and ".venv/bin/grpcurl" in script
    work = _checkout_with_venv(tmp_path)
    env = base_env(BILLING_JWT_SECRET=JWT_SECRET, BILLING_VAR_DIR=str(tmp_path / "var"))
    env["PATH"] = "/usr/bin:/bin"  # nothing of the venv on PATH: the commands name .venv/bin themselves
    r = await run_shell(f"cd {work}\n{script}", env, timeout=60)
    assert r.rc == 0, r.out + r.err
    assert '"creditsMillicredits"' in r.out or '"credits_millicredits"' in r.out, r.out
    assert '"transaction"' in r.out, r.out
    assert "flownexus.billing.v1.UsageService" in r.out, r.out
