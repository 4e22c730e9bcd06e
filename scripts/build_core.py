"""Build the compiled ledger core: `python scripts/build_core.py` (make does it).

The modules in server/_core.py's COMPILED are compiled with mypyc (from the
pinned `mypy`): the typed .py files are the only source, and the extensions
are written next to them (`server/ledger/tx.cpython-*.so`, plus one shared
`*__mypyc.*.so` at the top). Python imports an extension before a .py of the
same name, so the service runs compiled once this has run; `--clean` removes
them and it runs interpreted again. BILLING_LEDGER_CORE=interpreted runs the
same tree interpreted without removing anything (server/_core.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server._core import COMPILED  # noqa: E402


def _source(module: str) -> str:
    return module.replace(".", "/") + ".py"


def clean() -> None:
    # Every extension under server/, also of modules no longer in the list.
    for built in (ROOT / "server").rglob("*.so"):
        built.unlink()
    for shared in ROOT.glob("*__mypyc.*.so"):
        shared.unlink()


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    os.chdir(ROOT)
    clean()
    modules = mypycify([_source(m) for m in COMPILED], opt_level="3", debug_level="0")
    dist = Distribution({"name": "billing-core", "ext_modules": modules})
    cmd = build_ext(dist)
    cmd.inplace = True
    cmd.build_temp = str(ROOT / "build" / "core")
    cmd.ensure_finalized()
    cmd.run()
    # setuptools copies an unchanged module shim with its old time; the
    # core's freshness check (server/_core.py) compares times with the .py.
    for built in [*(ROOT / "server").rglob("*.so"), *ROOT.glob("*__mypyc.*.so")]:
        os.utime(built)


if __name__ == "__main__":
    if "--clean" in sys.argv[1:]:
        clean()
    else:
        build()
