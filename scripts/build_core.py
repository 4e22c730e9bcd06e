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

import ast
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server._core import COMPILED  # noqa: E402


def _source(module: str) -> str:
    return module.replace(".", "/") + ".py"


def awaits_while_handling(path: Path) -> list[str]:
    """Where a compiled coroutine would await while it handles an exception:
    in an except or finally block, or in an `async with` (whose exit awaits
    in one). mypyc's coroutines then lose count of the exception they saved:
    with an outer handler of the same task that leaves by `continue` (the
    writer's retry loop), an exception is freed while a future still holds
    it, and the process crashes later. Take the failure out of the handler
    first, then await (server/ledger/writer.py `_apply_once`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.AsyncWith):
            found.append(f"{path}:{node.lineno}: async with")
        if isinstance(node, ast.Try | ast.TryStar):
            for block in [*node.handlers, *node.finalbody]:
                found += [f"{path}:{n.lineno}: await in an except or finally block"
                          for n in ast.walk(block) if isinstance(n, ast.Await)]
    return found


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
    unsafe = [line for m in COMPILED for line in awaits_while_handling(ROOT / _source(m))]
    if unsafe:
        sys.exit("not compiled (see awaits_while_handling in scripts/build_core.py):\n" + "\n".join(unsafe))
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
