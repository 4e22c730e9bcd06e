"""Usage rules: who may spend for whom, revenue share, hold lifetimes. Every
operation is applied by the ledger writer in a group-commit batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from server.keys.service import KeysService
from server.ledger.ops import (
    Capture,
    HoldResult,
    Idempotency,
    Metered,
    RefundResult,
    RefundUsage,
    Release,
    Reserve,
    RevenueShare,
    Spend,
    SpendResult,
    UsageRecord,
)
from server.ledger.repository import LedgerReader
from server.ledger.writer import LedgerWriter
from server.orgs.models import Access, AccessOf, Right
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.config import Settings
from server.platform.ratelimit import ByRole
from server.pricing.service import Usage
from server.usage import metering
from server.usage.metering import Quoter, metered


class UsageService:
    def __init__(
        self, writer: LedgerWriter, reader: LedgerReader, settings: Settings, org_access: AccessOf,
        mutations: ByRole | None = None, pricing: Quoter | None = None,
    ) -> None:
        self.writer = writer
        # The rate card a request's usage is priced from (PricingService).
        self.pricing = pricing
        # A Spend's usage made a Metered without a Python call per request.
        self._spend_metered = metering.spend_metering(pricing) if pricing is not None else self._metered
        # A request's Usage message read and checked for form, by pricing (which
        # knows the names its rate card versions price).
        self.usage_of: Callable[[Any], Usage] = pricing.usage_from_proto if pricing is not None else _no_pricing
        self.org_access = org_access
        self.reader = reader
        self.settings = settings
        # The per-caller bucket every mutating RPC draws from: the interceptor
        # takes one token per call that has a request_id; a SpendBatch (whose
        # request_ids are its items') takes one per item.
        self.mutations = mutations

    def admit_batch(self, principal: Principal, items: int) -> None:
        if self.mutations is not None:
            self.mutations.check(principal, "SpendBatch", items)

    def _share(self, principal: Principal, user_id: str, app_id: str, publisher: str) -> RevenueShare | None:
        if not app_id and not publisher:
            return None
        if not app_id or not publisher:
            raise errors.InvalidArgument(
                "app_id and publisher_user_id go together", reason="INVALID_REVENUE_SHARE"
            )
        if publisher == user_id:
            raise errors.InvalidArgument("a publisher cannot earn from their own spend", reason="SELF_REVENUE_SHARE")
        # A revenue share turns the spender's credits into the publisher's lasting
        # earned credits: only a caller that runs the app (a platform service) or
        # an operator vouches that the spend happened on that app.
        if not principal.privileged:
            raise errors.PermissionDenied(
                "a revenue share needs a service or admin token: a user token cannot name a publisher",
                reason="REVENUE_SHARE_NOT_ALLOWED",
                metadata={"role": principal.role.value},
            )
        return RevenueShare(app_id, publisher, self.settings.revenue_share_percent)

    async def org_spender(self, principal: Principal, user_id: str, org_id: str) -> Access:
        """The org wallet a Spend names and the member spending, after the
        org's say (a member, or a service naming one); asked only when a
        request names an org."""
        return await self.org_access(principal, org_id, Right.SPEND, user_id)

    async def spend(self, op: Spend) -> SpendResult:
        """Apply one Spend (built by `spend_op`) in the writer's group commit."""
        result: SpendResult = await self.writer.submit(op)
        return result

    def spend_op(
        self,
        principal: Principal,
        *,
        user_id: str,
        amount: int,
        request_id: str,
        fingerprint: str,
        category: str,
        description: str,
        metadata: dict[str, str],
        app_id: str,
        publisher_user_id: str,
        key_id: str = "",
        org: Access | None = None,
        usage: Usage | None = None,
    ) -> Spend:
        """The Spend operation of one request, after the rules a Spend is
        refused by before the ledger (who may spend for whom, revenue share).
        A SpendBatch item is the same request as a unary Spend: same op, same
        idempotency key (method "Spend"). `org`: an org's wallet, from `org_spender`."""
        user = org.wallet_owner if org else principal.resolve_user(user_id)
        return Spend(
            user_id=user,
            amount=amount,
            category=category,
            description=description,
            metadata=metadata,
            share=self._share(principal, user, app_id, publisher_user_id),
            idempotency=Idempotency.of_request(principal, "Spend", request_id, fingerprint),
            charged_by=principal.scope,
            key_id=KeysService.spending_key(principal, key_id),
            member=org.member if org else principal.member,
            usage=self._spend_metered(usage) if usage is not None else None,
        )

    def _metered(self, usage: Usage, *, shared: bool = True) -> Metered:
        """`shared`: a Spend's record may be its batch's for the same usage (a
        Reserve's is its own: the ledger writes the hold into it)."""
        if self.pricing is None:
            _no_pricing(usage)
        return metered(self.pricing, usage, shared=shared)

    async def spend_batch(self, items: Sequence[Spend | errors.DomainError]) -> list[SpendResult | BaseException]:
        """Apply the ops of a SpendBatch together; an entry that is already an
        error (refused before the ledger) stays in its place. The ops join the
        writer's group commit in order, each succeeding or failing on its own."""
        ops = [item for item in items if isinstance(item, Spend)]
        done = iter(await self.writer.submit_many(ops) if ops else ())
        return [item if isinstance(item, errors.DomainError) else next(done) for item in items]

    async def reserve(
        self,
        principal: Principal,
        *,
        user_id: str,
        amount: int,
        ttl_seconds: float,
        request_id: str,
        fingerprint: str,
        category: str,
        description: str,
        key_id: str = "",
        org_id: str = "",
        usage: Usage | None = None,
    ) -> HoldResult:
        org = await self.org_spender(principal, user_id, org_id) if org_id else None
        user = org.wallet_owner if org else principal.resolve_user(user_id)
        if ttl_seconds < 0 or ttl_seconds > self.settings.max_hold_ttl_seconds:
            raise errors.InvalidArgument(
                f"ttl must be between 1s and {self.settings.max_hold_ttl_seconds}s", reason="INVALID_TTL"
            )
        ttl = ttl_seconds or self.settings.default_hold_ttl_seconds
        op = Reserve(
            user_id=user,
            amount=amount,
            ttl_us=int(ttl * 1_000_000),
            category=category,
            description=description,
            idempotency=Idempotency.of_request(principal, "Reserve", request_id, fingerprint),
            key_id=KeysService.spending_key(principal, key_id),
            member=org.member if org else principal.member,
            usage=self._metered(usage, shared=False) if usage is not None else None,
        )
        result: HoldResult = await self.writer.submit(op)
        return result

    async def capture(
        self,
        principal: Principal,
        *,
        hold_id: str,
        amount: int,
        request_id: str,
        fingerprint: str,
        description: str,
        app_id: str,
        publisher_user_id: str,
        org_id: str = "",
        quantity: int = 0,
    ) -> tuple[HoldResult, UsageRecord | None]:
        """The capture, and the usage the hold was reserved for (None: by amount)."""
        owner = await self._hold_owner(principal, org_id)
        hold, found = await self.reader.hold_and_usage(hold_id)
        if hold is None or (owner and hold["user_id"] != owner):
            raise errors.NotFound("hold not found", reason="HOLD_NOT_FOUND")
        held = metering.stored(found) if found is not None else None
        priced = None
        if held is not None:
            # A hold by usage is settled by its final quantity, at the price agreed at Reserve.
            if amount:
                raise errors.InvalidArgument(
                    "the hold was reserved by usage: capture it with quantity, not amount_millicredits",
                    reason="USAGE_HOLD_NEEDS_QUANTITY", metadata={"hold_id": hold_id, "meter": held.meter},
                )
            if self.pricing is None:
                raise errors.FailedPrecondition("this server prices no usage", reason="PRICING_UNAVAILABLE")
            priced = metering.capture_price(self.pricing, held, quantity)
            amount = priced.amount if priced is not None else 0
        elif quantity:
            raise errors.InvalidArgument(
                "the hold was reserved by amount: capture it with amount_millicredits, not quantity",
                reason="AMOUNT_HOLD_NEEDS_AMOUNT", metadata={"hold_id": hold_id},
            )
        op = Capture(
            hold_id=hold_id,
            amount=amount,
            description=description,
            share=self._share(principal, hold["user_id"], app_id, publisher_user_id),
            owner=owner,
            idempotency=Idempotency.of_request(principal, "Capture", request_id, fingerprint),
            charged_by=principal.scope,
            through_key=principal.key_id or None,
            usage=priced,
        )
        result: HoldResult = await self.writer.submit(op)
        return result, held

    async def _hold_owner(self, principal: Principal, org_id: str) -> str | None:
        """Whose holds the caller may settle: any (a service or admin), its own,
        or an org's that it may spend from."""
        if principal.privileged:
            return None
        if org_id:
            return (await self.org_access(principal, org_id, Right.SPEND, "")).wallet_owner
        return principal.subject

    async def release(
        self, principal: Principal, *, hold_id: str, request_id: str, fingerprint: str, org_id: str = ""
    ) -> HoldResult:
        owner = await self._hold_owner(principal, org_id)
        op = Release(
            hold_id=hold_id, owner=owner, through_key=principal.key_id or None,
            idempotency=Idempotency.of_request(principal, "Release", request_id, fingerprint),
        )
        result: HoldResult = await self.writer.submit(op)
        return result

    async def refund(
        self, principal: Principal, *, transaction_id: int, amount: int, reason: str, request_id: str, fingerprint: str
    ) -> RefundResult:
        """Service principals refund their own charges; admins any charge."""
        principal.require(Role.SERVICE, Role.ADMIN, what="RefundUsage")
        op = RefundUsage(
            transfer_id=transaction_id,
            amount=amount,
            reason=reason,
            window_us=self.settings.refund_window_days * 86_400_000_000,
            caller=None if principal.role == Role.ADMIN else principal.scope,
            idempotency=Idempotency.of_request(principal, "RefundUsage", request_id, fingerprint),
        )
        result: RefundResult = await self.writer.submit(op)
        return result


def _no_pricing(usage: Any) -> NoReturn:
    raise errors.FailedPrecondition("this server prices no usage", reason="PRICING_UNAVAILABLE")
