"""Helpers to run docs/operations.md and grpcurl from tests (asyncio
subprocesses: the server under test runs in the same event loop)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GRPCURL = str(VENV_BIN / "grpcurl")
RUNBOOK = ROOT / "docs" / "operations.md"

_BLOCK = re.compile(r"<!-- runbook: ([\w-]+) -->\s*```sh\n(.*?)```", re.S)


def runbook_blocks(path: Path = RUNBOOK) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, body in _BLOCK.findall(path.read_text()):
        assert name not in blocks, f"duplicate runbook block {name}"
        blocks[name] = body.strip()
    return blocks


def section_shell_blocks(path: Path, heading: str) -> list[str]:
    """The ```sh blocks of one section of a Markdown file: from the heading
    (e.g. "### A first call") to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = path.read_text().splitlines()
    assert heading in lines, f"{path.name} lacks {heading!r}"
    body: list[str] = []
    for line in lines[lines.index(heading) + 1:]:
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        body.append(line)
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", "\n".join(body), re.S)]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_stream(self) -> list[Any]:
        """grpcurl prints one pretty JSON object per streamed message."""
        decoder, items, pos, text = json.JSONDecoder(), [], 0, self.out.strip()
        while pos < len(text):
            item, end = decoder.raw_decode(text, pos)
            items.append(item)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return items


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "generated"), str(ROOT / "clients/python/src")])
    env.update(extra)
    return env


async def run_shell(script: str, env: dict[str, str], timeout: float = 30) -> Result:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script,
        env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Result(proc.returncode or 0, out.decode(), err.decode())


async def run_exec(args: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env or base_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Result(proc.returncode or 0, out.decode(), err.decode())


def error_info_of(text: str) -> dict[str, Any]:
    """The ErrorInfo that grpcurl prints under `Details:`."""
    m = re.search(r'(\{"@type":"type.googleapis.com/google.rpc.ErrorInfo".*\})', text)
    assert m, f"no ErrorInfo in grpcurl output:\n{text}"
    return dict(json.loads(m.group(1)))
