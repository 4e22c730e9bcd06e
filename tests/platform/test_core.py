"""The compiled ledger core runs the way BILLING_LEDGER_CORE says: `make test`
sets `compiled` (every listed module from its extension, or an ImportError),
`make test-interpreted` sets `interpreted` (every one from its .py)."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server import _core

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json
from server import _core
loaded = {m: importlib.import_module(m) for m in _core.COMPILED}
assert all(mod.__name__ == m and mod.__spec__.name == m for m, mod in loaded.items())
print(json.dumps({m: _core.is_compiled(mod) for m, mod in loaded.items()}))
"""


def _built() -> bool:
    """Whether every listed module has its extension on disk."""
    for module in _core.COMPILED:
        src = ROOT / (module.replace(".", "/") + ".py")
        if not list(src.parent.glob(f"{src.stem}.*.so")):
            return False
    return True


def _loaded(mode: str) -> dict[str, bool]:
    env = {**os.environ, "BILLING_LEDGER_CORE": mode}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout))


def test_this_run_loads_the_core_its_mode_says() -> None:
    mode = _core.mode()
    loaded = {m: _core.is_compiled(importlib.import_module(m)) for m in _core.COMPILED}
    if mode == "compiled":
        assert all(loaded.values()), loaded
    elif mode == "interpreted":
        assert not any(loaded.values()), loaded
    else:
        assert set(loaded.values()) == {_built()}, loaded


def test_a_served_process_follows_the_mode() -> None:
    """A process started now (as the suite's servers are) loads what the mode says."""
    assert not any(_loaded("interpreted").values())
    if _built():
        assert all(_loaded("compiled").values())
        assert all(_loaded("auto").values())
    else:
        assert not any(_loaded("auto").values())
        env = {**os.environ, "BILLING_LEDGER_CORE": "compiled"}
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "no compiled extension" in out.stderr


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_LEDGER_CORE", "fast")
    with pytest.raises(ValueError, match="BILLING_LEDGER_CORE"):
        _core.mode()


def test_a_build_older_than_its_source_is_stale(tmp_path: Path) -> None:
    """An edited module is never shadowed by its old build: `auto` then runs
    every module interpreted, `compiled` refuses to start (`make core`)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for module in _core.COMPILED:
        src = tmp_path / (module.replace(".", "/") + ".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("")
        built = src.with_name(src.stem + suffix)
        built.write_bytes(b"")
        os.utime(src, (1_000_000, 1_000_000))
        os.utime(built, (2_000_000, 2_000_000))
    assert _core.stale_or_missing(str(tmp_path)) == []
    edited = tmp_path / (_core.COMPILED[0].replace(".", "/") + ".py")
    os.utime(edited, (3_000_000, 3_000_000))
    assert _core.stale_or_missing(str(tmp_path)) == [_core.COMPILED[0]]
    edited.with_name(edited.stem + suffix).unlink()
    assert _core.stale_or_missing(str(tmp_path)) == [_core.COMPILED[0]]
