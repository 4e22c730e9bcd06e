"""Packaging hygiene: `buf breaking` against the committed proto image (and
that it does catch a break), one version for the service and the client."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import server
from tests.runbook_tools import ROOT, VENV_BIN, run_exec

BUF = str(VENV_BIN / "buf")


def _image() -> Path:
    m = re.search(r"^PROTO_IMAGE := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile lacks PROTO_IMAGE"
    image = ROOT / "protos" / m.group(1)
    assert image.is_file(), image
    return image


async def test_protos_are_compatible_with_the_released_image() -> None:
    r = await run_exec([BUF, "breaking", str(ROOT / "protos"), "--against", str(_image())])
    assert r.rc == 0, r.out + r.err


async def test_buf_breaking_catches_a_renamed_field(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos, ignore=shutil.ignore_patterns("images"))
    usage = protos / "flownexus/billing/v1/usage.proto"
    text = usage.read_text()
    assert "int64 amount_millicredits = " in text
    usage.write_text(text.replace("int64 amount_millicredits = ", "int64 amount_credits = ", 1))
    r = await run_exec([BUF, "breaking", str(protos), "--against", str(_image())])
    assert r.rc != 0
    assert "amount_millicredits" in r.out + r.err


def test_one_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert server.__version__ == version
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    assert "version" not in client and client["dynamic"] == ["version"]  # setup.py reads the root's
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()
