"""One Stripe customer per user, for purchases, auto-refill and tiers alike."""

from __future__ import annotations

from server.db.engine import Database
from server.ledger.model import wallet_id
from server.ledger.ops import Call
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.payments import repository as repo
from server.payments.gateway import StripeGateway


class StripeCustomers:
    def __init__(self, gateway: StripeGateway, db: Database, writer: LedgerWriter) -> None:
        self.gateway = gateway
        self.db = db
        self.writer = writer

    async def known(self, user_id: str) -> str | None:
        """The user's Stripe customer id, if one was recorded."""
        async with self.db.reader.connect() as conn:
            return await repo.customer_id(conn, user_id)

    async def get_or_create(self, user_id: str) -> str:
        """The user's customer, created once: every caller sends the same Stripe
        idempotency key for a user, so concurrent first purchases, upgrades
        and card setups name one customer, and the first id recorded wins."""
        existing = await self.known(user_id)
        if existing:
            return existing
        created = await self.gateway.create_customer(user_id)
        cid = str(created["id"])

        async def save(tx: LedgerTx) -> str:
            await tx.wallet(user_id)
            current = tx.user(user_id)["stripe_customer_id"]
            if current:
                return str(current)
            tx.set_user(user_id, stripe_customer_id=cid)
            return cid

        result: str = await self.writer.submit(Call(fn=save, accounts={wallet_id(user_id)}))
        return result
