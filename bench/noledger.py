"""The billing server with SpendBatch's ledger work taken out, for `make bench`'s
"SpendBatch(100), no ledger" row: `python -m bench.noledger serve` (the same
arguments and `BILLING_*` settings as `python -m server serve`).

Every SpendBatch goes through the real gRPC stack, interceptor, validation,
fingerprints, idempotency keys and Spend operations, and gets back a real
response of one result per item; only the usage domain's hand-over to the
ledger writer (`spend_batch`) is replaced by a canned result per item, made
at once (the writer may be compiled, and a compiled class cannot be patched). So the
row is the floor under a batched item, as ListTiers is under every RPC: what the gRPC side of
the server costs per item, and how many items per second it could carry with
a ledger that cost nothing. Nothing is written for these items: the row's
server serves no other load, and its database is thrown away.

Never a way to run the service: it exists for the benchmark only.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Any

from server.__main__ import main as server_main
from server.ledger.model import TransferView
from server.ledger.ops import Spend, SpendResult
from server.platform import errors
from server.usage.service import UsageService

_ids = itertools.count(1)


async def _canned(self: UsageService, items: Sequence[Spend | errors.DomainError]) -> list[Any]:
    out: list[Any] = []
    now = self.writer.clock.now_us()
    for op in items:
        if not isinstance(op, Spend):
            out.append(op)  # refused before the ledger, as spend_batch leaves it
            continue
        view = TransferView(
            next(_ids), "spend", -op.amount, 0, op.description or f"Usage: {op.category or 'other'}", op.category,
            "", now, dict(op.metadata),
        )
        out.append(SpendResult(view, 0))
    return out


def main() -> int:
    UsageService.spend_batch = _canned  # type: ignore[method-assign]
    sys.argv[0] = "server"
    return server_main()


if __name__ == "__main__":
    sys.exit(main())
