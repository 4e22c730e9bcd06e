"""Credits billing service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flownexus-billing")
except PackageNotFoundError:  # running from a bare checkout
    __version__ = "0.0.0"

from server import _core

# BILLING_LEDGER_CORE: the compiled ledger core, or the same modules interpreted.
_core.install()
