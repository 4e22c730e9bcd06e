"""UsageService: proto in, usage rules, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from flownexus.billing.v1 import common_pb2, usage_pb2, usage_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.grpc.interceptors import batch_item_error
from server.ledger.ops import Spend, SpendResult, UsageRecord
from server.orgs.models import Access
from server.platform import errors
from server.platform.auth import principal
from server.platform.fairshare import WORK_PER_ITEM, pace
from server.pricing.service import Usage
from server.registry import Registry
from server.usage.metering import usage_into
from server.usage.service import UsageService

# Items per SpendBatch call (Flexprice's limit; Lago takes 100).
MAX_SPEND_BATCH = 1000
# Items checked, queued or answered between two turns of the event loop: a
# batch of 1,000 is 10-15 ms of Python on each side of the ledger, which
# every other caller would otherwise wait for in one piece.
ITEMS_PER_PART = 100


# Usage messages the unary Spend keeps to copy: the Spends of one ledger
# batch share a record (and its message), a new batch makes new records.
MAX_SHOWN_KEPT = 8


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, usage: UsageService) -> None:
        self.usage = usage
        self.usage_of = usage.usage_of
        self._shown: dict[int, tuple[UsageRecord, common_pb2.PricedUsage]] = {}

    async def Spend(self, request: usage_pb2.SpendRequest, context: Ctx) -> usage_pb2.SpendResponse:
        who = principal()
        fields = _spend_fields(request, self.usage_of)
        if request.org_id:
            fields["org"] = await self.usage.org_spender(
                who, fields["user_id"], validation.org_id(request.org_id, required=True))
        result = await self.usage.spend(self.usage.spend_op(who, **fields))
        return _spend_response(result, self._shown)

    async def SpendBatch(self, request: usage_pb2.SpendBatchRequest, context: Ctx) -> usage_pb2.SpendBatchResponse:
        items = request.requests
        validation.batch(items, maximum=MAX_SPEND_BATCH)
        who = principal()
        self.usage.admit_batch(who, len(items))
        # In parts: each is checked, charged to the caller's fair share (a
        # turn of the loop, and a wait when the caller is past its share) and
        # queued; the writer applies them in order, each item on its own.
        parts: list[asyncio.Future[list[SpendResult | BaseException]]] = []
        # An org's answer, asked once per (org, member) of the batch.
        wallets: dict[tuple[str, str], Access | errors.DomainError] = {}
        usage_of = self.usage_of
        for start in range(0, len(items), ITEMS_PER_PART):
            part = items[start:start + ITEMS_PER_PART]
            await pace(len(part) * WORK_PER_ITEM)
            ops: list[Spend | errors.DomainError] = []
            for item in part:
                # Each item is refused exactly as its unary Spend would be, on its own.
                try:
                    fields = _spend_fields(item, usage_of)
                    if item.org_id:
                        org = validation.org_id(item.org_id, required=True)
                        found = wallets.get((org, fields["user_id"]))
                        if found is None:
                            try:
                                found = await self.usage.org_spender(who, fields["user_id"], org)
                            except errors.DomainError as exc:
                                found = exc
                            wallets[(org, fields["user_id"])] = found
                        if isinstance(found, errors.DomainError):
                            raise found
                        fields["org"] = found
                    ops.append(self.usage.spend_op(who, **fields))
                except errors.DomainError as exc:
                    ops.append(exc)
            # Queued at once; a cancelled call leaves the parts queued so far to be
            # applied (a retry with the same request_ids replays them).
            parts.append(asyncio.ensure_future(self.usage.spend_batch(ops)))
        response = usage_pb2.SpendBatchResponse()
        shown: dict[int, tuple[UsageRecord, common_pb2.PricedUsage]] = {}
        for done in parts:
            results_into(response, await done, shown)
            await asyncio.sleep(0)  # a turn of the loop between parts of the answer
        return response

    async def Reserve(self, request: usage_pb2.ReserveRequest, context: Ctx) -> usage_pb2.ReserveResponse:
        ttl = request.ttl.seconds + request.ttl.nanos / 1e9 if request.HasField("ttl") else 0.0
        usage = _usage(request, self.usage_of)
        result = await self.usage.reserve(
            principal(),
            user_id=validation.user_id(request.user_id),
            amount=validation.amount(request.amount_millicredits) if usage is None else 0,
            ttl_seconds=ttl,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Reserve", request),
            category=validation.category(request.category),
            description=validation.text(request.description, field="description"),
            key_id=request.key_id,
            org_id=validation.org_id(request.org_id),
            usage=usage,
        )
        resp = usage_pb2.ReserveResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)
        if result.usage is not None:
            usage_into(resp.hold.usage, result.usage)
        return resp

    async def Capture(self, request: usage_pb2.CaptureRequest, context: Ctx) -> usage_pb2.CaptureResponse:
        if request.amount_millicredits < 0:
            validation.amount(request.amount_millicredits)
        if request.quantity < 0:
            raise errors.InvalidArgument(
                "quantity is 0 or more", reason="INVALID_QUANTITY", metadata={"field": "quantity"})
        result, held = await self.usage.capture(
            principal(),
            hold_id=validation.opaque_id(request.hold_id, field="hold_id", reason="INVALID_HOLD_ID"),
            amount=request.amount_millicredits,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Capture", request),
            description=validation.text(request.description, field="description"),
            app_id=validation.text(request.app_id, field="app_id", max_len=128),
            publisher_user_id=validation.user_id(request.publisher_user_id, field="publisher_user_id"),
            org_id=validation.org_id(request.org_id),
            quantity=request.quantity,
        )
        resp = usage_pb2.CaptureResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)
        if held is not None:
            usage_into(resp.hold.usage, held)
        if result.transaction:
            resp.transaction.CopyFrom(convert.transaction(result.transaction))
            if result.usage is not None:
                usage_into(resp.transaction.usage, result.usage)
        return resp

    async def Release(self, request: usage_pb2.ReleaseRequest, context: Ctx) -> usage_pb2.ReleaseResponse:
        result = await self.usage.release(
            principal(),
            hold_id=validation.opaque_id(request.hold_id, field="hold_id", reason="INVALID_HOLD_ID"),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("Release", request),
            org_id=validation.org_id(request.org_id),
        )
        return usage_pb2.ReleaseResponse(hold=convert.hold(result.hold), credits_millicredits=result.credits)

    async def RefundUsage(self, request: usage_pb2.RefundUsageRequest, context: Ctx) -> usage_pb2.RefundUsageResponse:
        result = await self.usage.refund(
            principal(),
            transaction_id=validation.transaction_id(request.transaction_id),
            amount=validation.amount(request.amount_millicredits),
            reason=validation.text(request.reason, field="reason"),
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("RefundUsage", request),
        )
        return usage_pb2.RefundUsageResponse(
            transaction=convert.transaction(result.transaction),
            credits_millicredits=result.credits,
            refunded_millicredits=result.refunded,
        )


def results_into(
    response: usage_pb2.SpendBatchResponse, results: list[SpendResult | BaseException],
    shown: dict[int, tuple[UsageRecord, common_pb2.PricedUsage]],
) -> None:
    """A part's results, answered in order. Items priced from the same usage in
    one ledger batch share a record: its message is written once, then copied
    (`shown`: by the record's id, the record kept so that its id is not reused)."""
    out = response.results
    for result in results:
        if isinstance(result, SpendResult):
            answer = out.add().response
            tr = convert.spend_result_into(answer, result.transaction, result.credits)
            if result.usage is not None:
                _show_usage(tr.usage, result.usage, shown)
        else:
            out.add(error=batch_item_error(result))


def _usage(
    request: usage_pb2.SpendRequest | usage_pb2.ReserveRequest, usage_of: Callable[[Any], Usage]
) -> Usage | None:
    """The request's usage, checked for form (`usage_of`: UsageService's); None: it gives an amount."""
    if not request.HasField("usage"):
        return None
    if request.amount_millicredits:
        raise errors.InvalidArgument(
            "give amount_millicredits or usage, not both", reason="AMOUNT_OR_USAGE",
            metadata={"field": "usage"},
        )
    return usage_of(request.usage)


def _spend_fields(request: usage_pb2.SpendRequest, usage_of: Callable[[Any], Usage]) -> dict[str, Any]:
    """A SpendRequest, validated: the arguments of UsageService.spend/spend_op."""
    usage = _usage(request, usage_of)
    return {
        "usage": usage,
        "user_id": validation.user_id(request.user_id),
        "amount": validation.amount(request.amount_millicredits) if usage is None else 0,
        "request_id": validation.request_id(request.request_id),
        "fingerprint": validation.fingerprint("Spend", request),
        "category": validation.category(request.category),
        "description": validation.text(request.description, field="description"),
        "metadata": validation.metadata(request.metadata),
        "app_id": validation.text(request.app_id, field="app_id", max_len=128),
        "publisher_user_id": validation.user_id(request.publisher_user_id, field="publisher_user_id"),
        "key_id": request.key_id,
    }


def _show_usage(
    target: common_pb2.PricedUsage, record: UsageRecord, shown: dict[int, tuple[UsageRecord, common_pb2.PricedUsage]],
) -> None:
    """A record's usage message, written once and then copied (a copy costs
    a fifth of setting its fields); `shown`: by the record's id, the record
    kept so that its id is not reused."""
    first = shown.get(id(record))
    if first is None:
        usage_into(target, record)
        shown[id(record)] = (record, target)
    else:
        target.CopyFrom(first[1])


def _spend_response(
    result: SpendResult, shown: dict[int, tuple[UsageRecord, common_pb2.PricedUsage]],
) -> usage_pb2.SpendResponse:
    resp = usage_pb2.SpendResponse(transaction=convert.transaction(result.transaction), credits_millicredits=result.credits)
    if result.usage is not None:
        if len(shown) >= MAX_SHOWN_KEPT and id(result.usage) not in shown:
            shown.clear()
        _show_usage(resp.transaction.usage, result.usage, shown)
    return resp


def register(reg: Registry, service: UsageService) -> None:
    reg.servicer(usage_pb2_grpc.add_UsageServiceServicer_to_server, UsageServicer(service))
