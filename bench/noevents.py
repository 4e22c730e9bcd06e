"""The billing server without the events outbox, for `make bench`'s "Spend ...,
no outbox" rows: `python -m bench.noevents serve` (the same arguments and
`BILLING_*` settings as `python -m server serve`).

Only the events domain's ledger extension is taken out (its balance-alert
check and its event rows in every batch); everything else is the real
server. The Spend rows divided by these are the outbox's cost on Spend.

Never a way to run the service: it exists for the benchmark only.
"""

from __future__ import annotations

import sys
from typing import Any

from server.__main__ import main as server_main
from server.events.service import EventsService
from server.ledger.tx import LedgerTx


async def _nothing(self: EventsService, tx: LedgerTx, ops: list[Any]) -> None:
    return None


def main() -> int:
    EventsService.before_flush = _nothing  # type: ignore[method-assign]
    sys.argv[0] = "server"
    return server_main()


if __name__ == "__main__":
    sys.exit(main())
