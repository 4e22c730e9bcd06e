"""Typed exceptions for the billing service's ErrorInfo reasons."""

from __future__ import annotations

import grpc
from flownexus.billing.v1 import common_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class BillingError(Exception):
    """Any error from the billing service. `reason` is the stable
    UPPER_SNAKE_CASE ErrorInfo reason; `metadata` its details."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict[str, str] | None = None) -> None:
        super().__init__(f"{reason or code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InsufficientCredits(BillingError):
    @property
    def balance_millicredits(self) -> int:
        return int(self.metadata.get("balance_millicredits", 0))

    @property
    def shortfall_millicredits(self) -> int:
        return int(self.metadata.get("shortfall_millicredits", 0))


class BudgetExceeded(BillingError):
    """A scoped key's budget refused the spend (not the wallet's balance): the
    ErrorInfo names the window, the limit, the amount used and `resets_at`."""

    @property
    def window(self) -> str:
        return self.metadata.get("window", "")

    @property
    def resets_at(self) -> str:
        return self.metadata.get("resets_at", "")


class InvalidArgument(BillingError):
    pass


class InvalidAmount(InvalidArgument):
    pass


class PaymentFailed(BillingError):
    pass


class AutoRefillFailed(BillingError):
    pass


class TierUpgradeFailed(BillingError):
    pass


class RequestIdReused(BillingError):
    pass


class NotFound(BillingError):
    pass


class PermissionDenied(BillingError):
    pass


class Unauthenticated(BillingError):
    pass


class Unavailable(BillingError):
    pass


class NotImplementedYet(BillingError):
    """The RPC exists in the API but the server does not implement it yet."""


BY_REASON: dict[str, type[BillingError]] = {
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "BUDGET_EXCEEDED": BudgetExceeded,
    "INVALID_AMOUNT": InvalidAmount,
    "PAYMENT_FAILED": PaymentFailed,
    "AUTO_REFILL_FAILED": AutoRefillFailed,
    "TIER_UPGRADE_FAILED": TierUpgradeFailed,
    "REQUEST_ID_REUSED": RequestIdReused,
    "NOT_IMPLEMENTED": NotImplementedYet,
}

BY_CODE: dict[grpc.StatusCode, type[BillingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: NotImplementedYet,
}


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # a status that disagrees with its details
        return None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def from_rpc_error(exc: grpc.aio.AioRpcError) -> BillingError:
    """The typed exception for a failed call: by reason, then by status code,
    else BillingError."""
    info = error_info(exc)
    reason = info.reason if info else ""
    cls = BY_REASON.get(reason) or BY_CODE.get(exc.code()) or BillingError
    return cls(exc.code(), exc.details() or "", reason, dict(info.metadata) if info else {})


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def from_item_error(error: common_pb2.BatchItemError) -> BillingError:
    """The typed exception for one refused item of a batch call (SpendBatch):
    the same class a unary call failing with that status and ErrorInfo gives."""
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    cls = BY_REASON.get(error.reason) or BY_CODE.get(code) or BillingError
    return cls(code, error.message, error.reason, dict(error.metadata))
