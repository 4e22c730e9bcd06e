"""The compiled ledger core: which modules are compiled, and which way they run.

The modules in COMPILED are plain Python, and the only source. `make run` and
`make test` compile them with mypyc (scripts/build_core.py) into extensions
next to the .py files, which Python then imports first. BILLING_LEDGER_CORE
chooses, when the process starts:
- `auto` (default): the extensions when every one is built and none is older
  than its .py (an edited module is never shadowed by its stale build), else
  every module from its .py (compiled and interpreted modules of the core
  share native classes, so they are never mixed);
- `interpreted`: always the .py (the extensions stay on disk);
- `compiled`: the extension, and an ImportError when it is missing or older
  than its .py (`make test` runs this way, so a failed or stale build cannot
  pass unnoticed).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# The per-operation work of the ledger writer, of a batched item's gRPC side
# and of the keys' budget guard.
COMPILED = (
    "server.ledger.keys",
    "server.ledger.model",
    "server.ledger.ops",
    "server.ledger.staging",
    "server.ledger.tx",
    "server.ledger.writer",
    "server.grpc.validation",
    "server.grpc.convert",
    "server.keys.guard",
)

MODES = ("auto", "interpreted", "compiled")


def mode() -> str:
    value = os.environ.get("BILLING_LEDGER_CORE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"BILLING_LEDGER_CORE must be one of {', '.join(MODES)}, not {value!r}")
    return value


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def stale_or_missing(root: str | None = None) -> list[str]:
    """The COMPILED modules without an extension at least as new as their .py
    (`root`: the folder that holds `server/`, by default this checkout's)."""
    root = root or os.path.dirname(_package_dir())
    out = []
    for name in COMPILED:
        source = os.path.join(root, *name.split(".")) + ".py"
        built = [source[:-3] + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        times = [os.path.getmtime(b) for b in built if os.path.exists(b)]
        if not times or max(times) < os.path.getmtime(source):
            out.append(name)
    return out


def is_compiled(module: ModuleType) -> bool:
    """Whether this module was loaded from its compiled extension."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


class _CoreFinder:
    """Finds the COMPILED modules as the mode says: only the .py, or only the extension."""

    def __init__(self, want_compiled: bool) -> None:
        self.want_compiled = want_compiled

    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if name not in COMPILED or path is None:
            return None
        loaders: list[tuple[type, list[str]]]
        if self.want_compiled:
            loaders = [(importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)]
        else:
            loaders = [(importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)]
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, *loaders).find_spec(name)
            if spec is not None:
                return spec
        if self.want_compiled:
            raise ImportError(
                f"BILLING_LEDGER_CORE=compiled but {name} has no compiled extension: run `make core`", name=name
            )
        return None


class _StaleCore:
    """BILLING_LEDGER_CORE=compiled with an extension older than its .py."""

    def __init__(self, stale: list[str]) -> None:
        self.stale = stale

    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if name in self.stale:
            raise ImportError(
                f"BILLING_LEDGER_CORE=compiled but {name}'s compiled extension is older than its .py: run `make core`",
                name=name,
            )
        return None


def install() -> None:
    """Called once when `server` is imported."""
    chosen = mode()
    if any(isinstance(f, _CoreFinder) for f in sys.meta_path):
        return
    stale = stale_or_missing()
    if chosen == "auto":
        if not stale:
            return
        chosen = "interpreted"
    sys.meta_path.insert(0, _CoreFinder(chosen == "compiled"))
    built_but_old = [m for m in stale if _has_extension(m)]
    if chosen == "compiled" and built_but_old:
        sys.meta_path.insert(0, _StaleCore(built_but_old))


def _has_extension(name: str) -> bool:
    base = os.path.join(os.path.dirname(_package_dir()), *name.split("."))
    return any(os.path.exists(base + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)
