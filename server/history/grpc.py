"""HistoryService: proto in, history rules, proto out."""

from __future__ import annotations

from flownexus.billing.v1 import common_pb2, history_pb2, history_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.history.service import HistoryService, forecast
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
        )


def register(reg: Registry, service: HistoryService) -> None:
    reg.servicer(history_pb2_grpc.add_HistoryServiceServicer_to_server, HistoryServicer(service))
