"""The version comes from one place: `version` in the repository's root
pyproject.toml (the service's own version)."""

import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parents[2]
setup(version=tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
