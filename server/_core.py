"""The compiled ledger core: which modules are compiled, and which way they run.

The modules in COMPILED are plain Python, and the only source. `make run` and
`make test` compile them with Cython (scripts/build_core.py) into extensions
next to the .py files, which Python then imports first. BILLING_LEDGER_CORE
chooses, when the process starts:
- `auto` (default): the extension when it is built, else the .py;
- `interpreted`: always the .py (the extensions stay on disk);
- `compiled`: the extension, and an ImportError when it is missing
  (`make test` runs this way, so a failed build cannot pass unnoticed).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# The per-operation work of the ledger writer and of a batched item's gRPC side.
COMPILED = (
    "server.ledger.keys",
    "server.ledger.model",
    "server.ledger.staging",
    "server.ledger.tx",
    "server.grpc.validation",
    "server.grpc.convert",
)

MODES = ("auto", "interpreted", "compiled")


def mode() -> str:
    value = os.environ.get("BILLING_LEDGER_CORE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"BILLING_LEDGER_CORE must be one of {', '.join(MODES)}, not {value!r}")
    return value


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


def install() -> None:
    """Called once when `server` is imported."""
    chosen = mode()
    if chosen == "auto" or any(isinstance(f, _CoreFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _CoreFinder(chosen == "compiled"))
