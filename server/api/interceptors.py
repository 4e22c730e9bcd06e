"""Server interceptors: error mapping (domain error -> status + ErrorInfo, in
this one place), metrics, and bearer-token authentication."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server import errors
from server.auth import TokenCache, current_principal
from server.logs import new_request_id, request_id_var
from server.metrics import METRICS

log = logging.getLogger("server.api")

ERROR_DOMAIN = "billing.flownexus.dev"
BILLING_PREFIX = "/flownexus.billing.v1."

_GRPC_CODES = {c.name: c for c in grpc.StatusCode}


def _status_details(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    return status.SerializeToString()


async def abort(context: grpc.aio.ServicerContext, exc: errors.DomainError) -> None:
    code = _GRPC_CODES[exc.code.value]
    trailer = (("grpc-status-details-bin", _status_details(code, exc.message, exc.reason, exc.metadata)),)
    await context.abort(code, exc.message, trailing_metadata=trailer)


Behaviour = Callable[..., Any]
Around = Callable[[str, grpc.aio.ServicerContext, Callable[[], Any]], Awaitable[Any]]


def _wrap(handler: grpc.RpcMethodHandler, method: str, around: Any) -> grpc.RpcMethodHandler:
    """Rebuild a handler whose behaviour runs inside `around` (unary or streaming)."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(method, context):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(method, context):
                async for item in inner_stream(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler  # client streaming is not used by this API


class _ErrorScope:
    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        self.request_id_token: Any = None

    async def __aenter__(self) -> None:
        # Every log record of this call carries its request id (server/logs.py).
        rid = ""
        for key, val in self.context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(val, str):
                rid = val[:128]
                break
        self.request_id_token = request_id_var.set(rid or new_request_id())
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        code = "OK"
        try:
            if exc is None:
                return False
            if isinstance(exc, errors.DomainError):
                code = exc.code.value
                log.info("rpc refused", extra={"method": self.method, "reason": exc.reason})
                await abort(self.context, exc)
            if isinstance(exc, grpc.aio.AbortError | GeneratorExit):
                code = "ABORTED"
                return False
            if isinstance(exc, BaseException) and not isinstance(exc, Exception):
                code = "CANCELLED"
                return False
            code = "INTERNAL"
            log.exception("unexpected error in %s", self.method, exc_info=exc)
            await abort(self.context, errors.DomainError("internal error", reason="INTERNAL"))
            return False
        finally:
            METRICS.observe_rpc(self.method, code, time.perf_counter() - self.started)
            if self.request_id_token is not None:
                try:
                    request_id_var.reset(self.request_id_token)
                except ValueError:  # a stream finalised in another context
                    pass


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(BILLING_PREFIX):
            return handler
        return _wrap(handler, details.method, _ErrorScope)


class _AuthScope:
    def __init__(self, principal_or_error: Any) -> None:
        self.value = principal_or_error
        self.token: Any = None

    def __call__(self, method: str, context: grpc.aio.ServicerContext) -> _AuthScope:
        return self

    async def __aenter__(self) -> None:
        if isinstance(self.value, errors.DomainError):
            raise self.value
        self.token = current_principal.set(self.value)

    async def __aexit__(self, *exc: Any) -> bool:
        if self.token is not None:
            current_principal.reset(self.token)
        return False


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every billing RPC needs a bearer token; health and reflection do not."""

    def __init__(self, secret: str, issuer: str) -> None:
        self.tokens = TokenCache(secret, issuer)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(BILLING_PREFIX):
            return handler
        return _wrap(handler, details.method, _AuthScope(self._authenticate(details)))

    def _authenticate(self, details: grpc.HandlerCallDetails) -> Any:
        value = ""
        for key, val in details.invocation_metadata or ():
            if key == "authorization":
                value = val if isinstance(val, str) else ""
                break
        if not value:
            return errors.Unauthenticated("missing bearer token in 'authorization' metadata", reason="MISSING_TOKEN")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return errors.Unauthenticated("authorization must be 'Bearer <token>'", reason="INVALID_TOKEN")
        try:
            return self.tokens.principal(token.strip())
        except errors.DomainError as exc:
            return exc
