"""Domain objects to protobuf messages and back (no rules here)."""

from __future__ import annotations

from typing import Any, cast

from flownexus.billing.v1 import balance_pb2, common_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from server.ledger.model import HoldView, Kind, LotKind, TransferView
from server.ledger.repository import WalletState


def ts(us: int | None) -> Timestamp | None:
    if not us:
        return None
    t = Timestamp()
    t.FromMicroseconds(us)
    return t


# The generated enum wrappers' Value() is typed int; message fields take the enum type.
def tier_pb(name: str) -> common_pb2.Tier:
    return cast(common_pb2.Tier, common_pb2.Tier.Value(f"TIER_{name.upper()}"))


def tier_name(value: int) -> str:
    return common_pb2.Tier.Name(value).removeprefix("TIER_").lower()


def kind_pb(kind: str) -> common_pb2.TransactionType:
    return cast(common_pb2.TransactionType, common_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{kind.upper()}"))


def kind_of(value: int) -> Kind:
    return Kind(common_pb2.TransactionType.Name(value).removeprefix("TRANSACTION_TYPE_").lower())


def source_name(value: int) -> str:
    return common_pb2.EarningSource.Name(value).removeprefix("EARNING_SOURCE_").lower()


def transaction(t: TransferView) -> common_pb2.Transaction:
    return common_pb2.Transaction(
        id=str(t.id),
        date=ts(t.created_at_us),
        amount_millicredits=t.amount,
        type=kind_pb(t.kind),
        description=t.description,
        balance_after_millicredits=t.balance_after,
        category=t.category,
        metadata=t.metadata,
        key_id=t.key_id,
        member_id=t.member_id,
    )


def spend_result_into(out: usage_pb2.SpendResponse, t: TransferView, credits: int) -> common_pb2.Transaction:
    """A SpendResponse written in place (a SpendBatch item): no message built
    and then copied into the batch's response, as `add(response=...)` does.
    Returns its transaction (for a priced item's usage: no second lookup)."""
    out.credits_millicredits = credits
    tr = out.transaction
    tr.id = str(t.id)
    if t.created_at_us:
        tr.date.FromMicroseconds(t.created_at_us)
    tr.amount_millicredits = t.amount
    tr.type = kind_pb(t.kind)
    tr.description = t.description
    tr.balance_after_millicredits = t.balance_after
    tr.category = t.category
    if t.metadata:
        tr.metadata.update(t.metadata)
    tr.key_id = t.key_id
    return tr


def lot(row: dict[str, Any]) -> common_pb2.CreditLot:
    return common_pb2.CreditLot(
        id=str(row["id"]),
        kind=cast(common_pb2.LotKind, common_pb2.LotKind.Value(f"LOT_KIND_{LotKind(row['kind']).value.upper()}")),
        remaining_millicredits=row["remaining"],
        expires_at=ts(row["expires_at_us"]),
    )


def hold(h: HoldView) -> usage_pb2.Hold:
    return usage_pb2.Hold(
        id=h.id,
        user_id=h.user_id,
        amount_millicredits=h.amount,
        status=cast(usage_pb2.HoldStatus, usage_pb2.HoldStatus.Value(f"HOLD_STATUS_{h.status.upper()}")),
        expires_at=ts(h.expires_at_us),
        captured_millicredits=h.captured,
        category=h.category,
    )


def balance(state: WalletState) -> balance_pb2.GetBalanceResponse:
    return balance_pb2.GetBalanceResponse(
        user_id=state.user_id,
        credits_millicredits=state.credits,
        pending_millicredits=state.pending,
        earned_total_millicredits=state.earned_total,
        spent_total_millicredits=state.spent_total,
        tier=tier_pb(state.tier),
        lots=[lot(r) for r in state.lots],
        unlimited_overdraft=state.unlimited_overdraft,
    )
