"""HistoryService: proto in, history rules, proto out."""

from __future__ import annotations

import json
import math

from flownexus.billing.v1 import common_pb2, history_pb2, history_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.history.repository import UsageRow
from server.history.service import HistoryService, UsageTotals, forecast
from server.keys.service import check_key_id
from server.platform.auth import principal
from server.registry import Registry


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(self, history: HistoryService) -> None:
        self.history = history

    async def ListTransactions(
        self, request: history_pb2.ListTransactionsRequest, context: Ctx
    ) -> history_pb2.ListTransactionsResponse:
        user = validation.user_id(request.user_id)
        size = validation.page_size(request.page_size)
        kinds = [
            convert.kind_of(validation.enum(t, common_pb2.TransactionType, field="types"))
            for t in request.types
        ]
        start = validation.timestamp(request.start_time, request.HasField("start_time"), field="start_time")
        end = validation.timestamp(request.end_time, request.HasField("end_time"), field="end_time")
        key_id = check_key_id(request.key_id) if request.key_id else ""
        org_id = validation.org_id(request.org_id)
        member = validation.user_id(request.member_id, field="member_id")
        sig = validation.filters_signature(
            user, sorted(kinds), start, end, *([key_id] if key_id else []), *([org_id] if org_id else []),
            *([f"member:{member}"] if member else []))
        before = validation.decode_page_token(request.page_token, sig, int)
        rows, resume = await self.history.history(
            principal(), user_id=user, limit=size + 1, before_id=before, kinds=kinds, start_us=start, end_us=end,
            key_id=key_id, org_id=org_id, member_id=member,
        )
        resp = history_pb2.ListTransactionsResponse(transactions=[convert.transaction(t) for t in rows[:size]])
        used = await self.history.usage_of(rows[:size])
        if used:
            for t, msg in zip(rows[:size], resp.transactions, strict=True):
                found = used.get(t.id)
                if found is not None:
                    usage_row_into(msg.usage, found, abs(t.amount))
        if len(rows) > size:
            resp.next_page_token = validation.encode_page_token(rows[size - 1].id, sig)
        elif resume is not None:  # a short (even empty) page: the rest lies past its bound (AIP-158)
            resp.next_page_token = validation.encode_page_token(resume, sig)
        return resp

    async def GetSpendingReport(
        self, request: history_pb2.GetSpendingReportRequest, context: Ctx
    ) -> history_pb2.GetSpendingReportResponse:
        who = principal()
        org_id = validation.org_id(request.org_id)
        key_id = check_key_id(request.key_id) if request.key_id else ""
        member = validation.user_id(request.member_id, field="member_id")
        state, rows, by_key, start, end = await self.history.spending_report(
            who,
            validation.user_id(request.user_id),
            validation.timestamp(request.start_time, request.HasField("start_time"), field="start_time"),
            validation.timestamp(request.end_time, request.HasField("end_time"), field="end_time"),
            key_id, org_id, member,
        )
        by_member = await self.history.spending_by_member(who, org_id, start, end, key_id, member) if org_id else []
        meters = await self.history.spending_by_meter(
            who, validation.user_id(request.user_id), org_id, start, end, key_id, member)
        total = sum(r[1] for r in rows)
        burn, days_left = forecast(total, start, end, self.history.clock.now_us(), state.credits)
        return history_pb2.GetSpendingReportResponse(
            categories=[history_pb2.CategorySpend(category=c, spent_millicredits=s, operations=n) for c, s, n in rows],
            total_spent_millicredits=total,
            burn_rate_millicredits_per_day=burn,
            credits_millicredits=state.credits,
            days_left=days_left,
            start_time=convert.ts(start),
            end_time=convert.ts(end),
            keys=[history_pb2.KeySpend(key_id=k, spent_millicredits=s, operations=n) for k, s, n in by_key],
            members=[history_pb2.MemberSpend(member_id=m, spent_millicredits=s, operations=n) for m, s, n in by_member],
            meters=[
                history_pb2.MeterSpend(
                    meter=m.meter, quantity=m.quantity, spent_millicredits=m.spent, operations=m.operations,
                    average_millicredits_per_unit=ratio(m.spent, m.quantity),
                    average_millicredits_per_operation=ratio(m.spent, m.operations),
                    dimensions=[_dimension(name, value, d) for (name, value), d in sorted(m.dimensions.items())],
                )
                for m in meters
            ],
        )


def ratio(numerator: int, denominator: int) -> history_pb2.Ratio:
    """An exact average, reduced (no float, no rounding); 0/1 over nothing."""
    if denominator <= 0:
        return history_pb2.Ratio(numerator=0, denominator=1)
    g = math.gcd(numerator, denominator)
    return history_pb2.Ratio(numerator=numerator // g, denominator=denominator // g)


def _dimension(name: str, value: str, d: UsageTotals) -> history_pb2.DimensionSpend:
    return history_pb2.DimensionSpend(
        dimension=name, value=value, quantity=d.quantity, spent_millicredits=d.spent, operations=d.operations,
        average_millicredits_per_unit=ratio(d.spent, d.quantity),
        average_millicredits_per_operation=ratio(d.spent, d.operations),
    )


def usage_row_into(msg: common_pb2.PricedUsage, row: UsageRow, amount: int) -> None:
    """A transfer_usage row (history/repository.py's usage_of) as the API shows it."""
    meter, quantity, dims, version, unit_price, per_units, priced_at_us = row
    msg.meter = meter
    msg.quantity = quantity
    msg.dimensions.update(json.loads(dims))
    msg.rate_card_version = version
    msg.unit_price_millicredits = unit_price
    msg.per_units = per_units
    msg.amount_millicredits = amount
    msg.priced_at.FromMicroseconds(priced_at_us)


def register(reg: Registry, service: HistoryService) -> None:
    reg.servicer(history_pb2_grpc.add_HistoryServiceServicer_to_server, HistoryServicer(service))
