"""Domain errors. Each carries a stable reason; the API layer maps them to gRPC
status plus google.rpc.ErrorInfo in one place (server/grpc/interceptors.py)."""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    ABORTED = "ABORTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class DomainError(Exception):
    code = Code.INTERNAL
    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        code: Code | None = None,
        metadata: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        if code:
            self.code = code
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}


class InvalidArgument(DomainError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class InvalidAmount(InvalidArgument):
    reason = "INVALID_AMOUNT"


class FailedPrecondition(DomainError):
    code = Code.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class InsufficientCredits(FailedPrecondition):
    reason = "INSUFFICIENT_CREDITS"


class NotFound(DomainError):
    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class PermissionDenied(DomainError):
    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = Code.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class RequestIdReused(DomainError):
    code = Code.FAILED_PRECONDITION
    reason = "REQUEST_ID_REUSED"


class ResourceExhausted(DomainError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"



class DeadlineExceeded(DomainError):
    code = Code.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class RequestIdExpired(DomainError):
    code = Code.FAILED_PRECONDITION
    reason = "REQUEST_ID_EXPIRED"


class Unavailable(DomainError):
    code = Code.UNAVAILABLE
    reason = "UNAVAILABLE"
