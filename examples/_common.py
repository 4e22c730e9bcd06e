"""What every example shares: where the server is and whose token to use.

BILLING_GRPC_TARGET  the server (default localhost:50051, what `make run` serves)
BILLING_TOKEN        a bearer token; when unset, one is minted for BILLING_USER
                     (default "alice") with `python -m server token` from the
                     repository (development only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flownexus_billing_client import BillingClient

CREDIT = 1000  # millicredits per credit


def credits(millicredits: int) -> str:
    return f"{millicredits / CREDIT:,.3f}".rstrip("0").rstrip(".")


def token() -> str:
    if os.environ.get("BILLING_TOKEN"):
        return os.environ["BILLING_TOKEN"]
    user = os.environ.get("BILLING_USER", "alice")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "server", "token", "--user", user, "--role", "user"],
        cwd=root, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def client() -> BillingClient:
    return BillingClient(os.environ.get("BILLING_GRPC_TARGET", "localhost:50051"), token())


def unavailable(feature: str, exc: Exception) -> None:
    print(f"{feature} is not available yet (UNIMPLEMENTED): {exc}")
