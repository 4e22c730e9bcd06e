"""Domain objects to protobuf messages and back (no rules here)."""

from __future__ import annotations

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


def tier_pb(name: str) -> int:
    return common_pb2.Tier.Value(f"TIER_{name.upper()}")


def tier_name(value: int) -> str:
    return common_pb2.Tier.Name(value).removeprefix("TIER_").lower()


def kind_pb(kind: str) -> int:
    return common_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{kind.upper()}")


def kind_of(value: int) -> Kind:
    return Kind(common_pb2.TransactionType.Name(value).removeprefix("TRANSACTION_TYPE_").lower())


def source_name(value: int) -> str:
    return common_pb2.EarningSource.Name(value).removeprefix("EARNING_SOURCE_").lower()


def transaction(t: TransferView) -> common_pb2.Transaction:
    return common_pb2.Transaction(
        id=str(t.id),
        date=ts(t.created_at_us),
        amount_millicredits=t.amount,
        type=kind_pb(t.kind),  # type: ignore[arg-type]
        description=t.description,
        balance_after_millicredits=t.balance_after,
        category=t.category,
        metadata=t.metadata,
        key_id=t.key_id,
    )


def lot(row: dict) -> common_pb2.CreditLot:  # type: ignore[type-arg]
    return common_pb2.CreditLot(
        id=str(row["id"]),
        kind=common_pb2.LotKind.Value(f"LOT_KIND_{LotKind(row['kind']).value.upper()}"),  # type: ignore[arg-type]
        remaining_millicredits=row["remaining"],
        expires_at=ts(row["expires_at_us"]),
    )


def hold(h: HoldView) -> usage_pb2.Hold:
    return usage_pb2.Hold(
        id=h.id,
        user_id=h.user_id,
        amount_millicredits=h.amount,
        status=usage_pb2.HoldStatus.Value(f"HOLD_STATUS_{h.status.upper()}"),  # type: ignore[arg-type]
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
        tier=tier_pb(state.tier),  # type: ignore[arg-type]
        lots=[lot(r) for r in state.lots],
        unlimited_overdraft=state.unlimited_overdraft,
    )
