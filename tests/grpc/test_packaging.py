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


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    for req in requirements:
        m = re.match(rf"{re.escape(name)}\s*>=\s*([\d.]+)", req)
        if m:
            return tuple(int(x) for x in m.group(1).split("."))
    raise AssertionError(f"no floor for {name} in {requirements}")


def test_declared_floors_cover_the_generated_stubs() -> None:
    """The committed stubs refuse older runtimes at import: *_pb2.py checks
    protobuf, *_pb2_grpc.py checks grpcio. Both distributions must declare at
    least those versions (make client-min-versions installs exactly the floors)."""
    gen = ROOT / "generated/flownexus/billing/v1"
    protobuf = {tuple(int(x) for x in m.groups()) for f in gen.glob("*_pb2.py")
                for m in [re.search(r"Domain.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", f.read_text())] if m}
    grpc = {tuple(int(x) for x in m.group(1).split(".")) for f in gen.glob("*_pb2_grpc.py")
            for m in [re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", f.read_text())] if m}
    assert len(protobuf) == 1 and len(grpc) == 1, (protobuf, grpc)
    for pyproject in (ROOT / "pyproject.toml", ROOT / "clients/python/pyproject.toml"):
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        assert _floor(deps, "protobuf") >= next(iter(protobuf)), pyproject
        assert _floor(deps, "grpcio") >= next(iter(grpc)), pyproject


def test_generators_are_pinned() -> None:
    """`make generate` is reproducible: the generators are pinned exactly."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    for name in ("grpcio-tools", "mypy-protobuf"):
        assert any(re.fullmatch(rf"{name}==[\d.]+", req) for req in dev), (name, dev)
    assert "make client-min-versions" in (ROOT / ".ci/run").read_text()
