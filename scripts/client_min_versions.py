"""`make client-min-versions`: the client wheel works with the oldest versions
its metadata allows.

Builds the client wheel, creates a fresh virtual environment in a temporary
directory, installs the wheel with every dependency pinned to its declared
floor (`pkg>=X` in the wheel's Requires-Dist becomes `pkg==X`), then calls a
real server (this checkout's, run by the interpreter running this script)
from that environment: GetBalance, then a Spend that must be refused with
InsufficientCredits, then two spends through a UsageRecorder (one SpendBatch). Fails when a floor is too low for the generated stubs
(they check protobuf and grpcio at import) or when the floors conflict.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import asyncio, sys
from importlib.metadata import version
import google.protobuf, grpc
from flownexus.billing.v1 import balance_pb2, usage_pb2
from flownexus_billing_client import BillingClient, InsufficientCredits, UsageRecorder

def norm(v: str) -> tuple[int, ...]:
    parts = [int(x) for x in v.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)

pins = dict(arg.split("==") for arg in sys.argv[3:])
for name in pins:
    assert norm(version(name)) == norm(pins[name]), (name, version(name), pins[name])

async def main() -> None:
    async with BillingClient(sys.argv[1], sys.argv[2]) as billing:
        r = await billing.balance.GetBalance(balance_pb2.GetBalanceRequest())
        assert r.user_id == "min-versions", r
        try:
            await billing.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=10**9))
        except InsufficientCredits:
            pass
        else:
            raise AssertionError("Spend beyond the balance was accepted")
        # The recorder: two single spends in one SpendBatch, each with its own answer.
        async with UsageRecorder(billing, max_batch=2, flush_interval_ms=5) as recorder:
            ok = await recorder.spend(usage_pb2.SpendRequest(amount_millicredits=1))
            short = await recorder.spend(usage_pb2.SpendRequest(amount_millicredits=10**9))
        assert (await ok).transaction.amount_millicredits == -1
        try:
            await short
        except InsufficientCredits:
            pass
        else:
            raise AssertionError("a recorded spend beyond the balance was accepted")
    print("client works with", ", ".join(f"{k}=={v}" for k, v in sorted(pins.items())))

asyncio.run(main())
"""


def floors(wheel: Path) -> list[str]:
    """`name==floor` for each unconditional requirement of the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    pins = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if ";" in req:  # an extra or a marker: not what a plain install needs
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*\(?([^)]*)\)?$", req)
        assert m, req
        name, spec = m.group(1), m.group(2)
        low = re.search(r">=\s*([\w.]+)", spec)
        assert low, f"{name} declares no floor ({req!r}): every dependency needs one"
        pins.append(f"{name}=={low.group(1)}")
    assert pins, "the wheel declares no dependencies"
    return pins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="client-min-") as tmp_s:
        tmp = Path(tmp_s)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "-w", str(tmp / "dist"), str(ROOT / "clients/python")],
            check=True,
        )
        wheel = next((tmp / "dist").glob("flownexus_billing_client-*.whl"))
        pins = floors(wheel)
        print("pinned to the declared floors:", " ".join(pins))
        venv.create(tmp / "venv", with_pip=True)
        py = str(tmp / "venv" / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        str(wheel), *pins], check=True)
        subprocess.run([py, "-m", "pip", "check"], check=True)

        port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        env.update(
            BILLING_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/billing.db",
            BILLING_VAR_DIR=str(tmp / "var"),
            BILLING_GRPC_PORT=str(port),
            BILLING_HTTP_PORT=str(http_port),
            BILLING_JWT_SECRET="client-min-versions-" + "x" * 32,
            BILLING_LOG_LEVEL="WARNING",
        )
        token = subprocess.run(
            [sys.executable, "-m", "server", "token", "--user", "min-versions"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()
        server = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)
            # Run from the temp dir, so nothing of the checkout is importable.
            subprocess.run([py, "-I", "-c", PROBE, f"127.0.0.1:{port}", token, *pins],
                           check=True, cwd=tmp)
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
