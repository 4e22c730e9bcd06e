"""The server interceptor: error mapping (domain error -> status + ErrorInfo, in
this one place), metrics, bearer-token authentication and rate limits."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from flownexus.billing.v1 import common_pb2
from google.protobuf import any_pb2, descriptor_pool, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.platform import errors
from server.platform.auth import Principal, TokenCache, current_principal
from server.platform.deadline import call_deadline
from server.platform.fairshare import FairShare, Turns, call_turns, call_work
from server.platform.logs import new_request_id, request_id_var
from server.platform.metrics import METRICS, RpcMetrics
from server.platform.ratelimit import ByRole, InFlight, PerCaller, RateLimiter

log = logging.getLogger("server.grpc")
# One line per billing RPC: INFO for every status but OK, DEBUG for OK (the hot path).
access_log = logging.getLogger("server.grpc.access")

ERROR_DOMAIN = "billing.flownexus.dev"
BILLING_PREFIX = "/flownexus.billing.v1."

_GRPC_CODES = {c.name: c for c in grpc.StatusCode}

# What a scoped key's secret may call: spend from its wallet, read its own
# key, and read the wallet's balance and history. Anything else is refused here.
KEY_METHODS = frozenset({
    "UsageService/Spend", "UsageService/SpendBatch", "UsageService/Reserve", "UsageService/Capture",
    "UsageService/Release", "BalanceService/CheckBalance", "BalanceService/GetBalance",
    "BalanceService/WatchBalance", "HistoryService/ListTransactions", "HistoryService/GetSpendingReport",
    "KeysService/GetKey",
})
KeyLookup = Callable[[str], Awaitable[Principal]]


# google.rpc.RetryInfo on UNAVAILABLE when the error names no delay of its own.
UNAVAILABLE_RETRY_DELAY_MS = 1000


def retry_delay_ms(exc: errors.DomainError) -> int | None:
    """How long a client should wait before retrying, or None when retrying
    the same call cannot help: the error's own `retry_after_ms` (RATE_LIMITED,
    TOO_MANY_CONCURRENT_RPCS), else a default for UNAVAILABLE."""
    after = exc.metadata.get("retry_after_ms")
    if after is not None and after.isdigit():
        return int(after)
    if exc.code is errors.Code.UNAVAILABLE:
        return UNAVAILABLE_RETRY_DELAY_MS
    return None


def _status_details(code: grpc.StatusCode, exc: errors.DomainError) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata)
    details = [any_pb2.Any()]
    details[0].Pack(info)
    delay = retry_delay_ms(exc)
    if delay is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=delay // 1000, nanos=delay % 1000 * 1_000_000))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=exc.message, details=details)
    return status.SerializeToString()


def batch_item_error(exc: BaseException) -> common_pb2.BatchItemError:
    """One item of a batch call refused: the code, message and ErrorInfo the
    unary call would have reported in its status (the same mapping as abort)."""
    if not isinstance(exc, errors.DomainError):
        log.error("unexpected error in a batch item", exc_info=exc)
        exc = errors.DomainError("internal error", reason="INTERNAL")
    code = _GRPC_CODES[exc.code.value]
    METRICS.refused(exc.reason)
    return common_pb2.BatchItemError(
        code=getattr(code_pb2, code.name), message=exc.message, reason=exc.reason, domain=ERROR_DOMAIN,
        metadata=exc.metadata,
    )


async def abort(context: grpc.aio.ServicerContext, exc: errors.DomainError) -> None:
    code = _GRPC_CODES[exc.code.value]
    trailer: tuple[tuple[str, str | bytes], ...] = (("grpc-status-details-bin", _status_details(code, exc)),)
    rid = request_id_var.get()
    if rid:  # abort's trailer replaces the one set at the start of the call
        trailer = (*trailer, ("x-request-id", rid))
    await context.abort(code, exc.message, trailing_metadata=trailer)


def is_mutating(method: str) -> bool:
    """A mutating RPC is one whose request takes a request_id (every one does,
    and no read does; tests/platform/test_limits.py checks the list)."""
    name = method.lstrip("/").replace("/", ".")
    try:
        found = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return False
    return "request_id" in found.input_type.fields_by_name


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Everything a billing RPC goes through, in one interceptor: request id,
    bearer-token authentication, the concurrency and per-caller rate limits,
    the mapping of domain errors to status + ErrorInfo, and metrics.

    One interceptor rather than a chain: each layer of a grpc.aio chain costs
    a coroutine and a handler rebuilt per call, measurable on Spend. The
    wrapped handler is built once per method; everything per call reads the
    call's own context.
    """

    def __init__(
        self,
        secret: str,
        issuer: str,
        limits: dict[str, RateLimiter],
        max_in_flight: int,
        *,
        mutations: ByRole | None = None,
        streams: PerCaller | None = None,
        calls: PerCaller | None = None,
        keys: KeyLookup | None = None,
        key_prefix: str = "",
        fair: FairShare | None = None,
    ) -> None:
        self.tokens = TokenCache(secret, issuer)
        # Scoped keys' secrets: looked up on every call (revocation is seen at once).
        self.keys = keys
        self.key_prefix = key_prefix
        self.limits = limits
        self.inflight = InFlight(max_in_flight)
        # Each caller's share: its streams, its unary calls in progress, its mutations per second.
        self.mutations = mutations
        self.streams = streams
        self.calls = calls
        # Each caller's turns of the event loop among the unary calls (server/platform/fairshare.py).
        self.fair = fair
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._handlers.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or not details.method.startswith(BILLING_PREFIX):
            return handler
        wrapped = self._wrap(handler, details.method)
        self._handlers[details.method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        limiter = self.limits.get(method)
        mutations = self.mutations if is_mutating(method) else None
        what = method.rsplit("/", 1)[-1]
        key_allowed = method.removeprefix(BILLING_PREFIX) in KEY_METHODS
        enter, leave, fair = self._enter, self._leave, self.fair
        if handler.unary_unary:
            inner = handler.unary_unary
            unary_metrics = METRICS.rpc(method, "unary")

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Call(unary_metrics)
                try:
                    secret = enter(call, context, limiter, mutations, self.calls, what)
                    if secret is not None:
                        await self._enter_key(call, context, secret, limiter, mutations, self.calls, what, key_allowed)
                    if fair is not None and not fair.exempt(current_principal.get()):
                        turns, waiting = fair.take(current_principal.get())
                        if waiting is not None:
                            await fair.wait(turns, waiting)
                        call.turns, call.fair = turns, fair
                        call.tokens.append(call_work.set(call.work))
                        call.tokens.append(call_turns.set((fair, turns)))
                    response = await inner(request, context)
                except BaseException as exc:
                    await leave(call, method, context, exc)
                    raise
                call.done("OK")
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            stream_metrics = METRICS.rpc(method, "server_stream")

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = _Call(stream_metrics)
                try:
                    secret = enter(call, context, limiter, mutations, self.streams, what)
                    if secret is not None:
                        await self._enter_key(call, context, secret, limiter, mutations, self.streams, what, key_allowed)
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:
                    await leave(call, method, context, exc)
                    raise
                call.done("OK")

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler  # client streaming is not used by this API

    def _enter(
        self,
        call: _Call,
        context: grpc.aio.ServicerContext,
        limiter: RateLimiter | None,
        mutations: ByRole | None,
        share: PerCaller | None,
        what: str,
    ) -> str | None:
        """Authenticate and admit the call; a key's secret is returned instead,
        for `_enter_key` to look up (a read) and admit."""
        rid = value = ""
        for key, val in context.invocation_metadata() or ():
            if key == "authorization":
                value = val if isinstance(val, str) else ""
            elif key == "x-request-id" and isinstance(val, str):
                rid = val[:128]
        # Every log record of this call carries its request id (server/logs.py),
        # and the caller gets it back in the trailing metadata.
        rid = call.request_id = rid or new_request_id()
        call.tokens.append(request_id_var.set(rid))
        context.set_trailing_metadata((("x-request-id", rid),))
        found = self._authenticate(value)
        if isinstance(found, str):
            return found
        self._admit(call, context, found, limiter, mutations, share, what)
        return None

    async def _enter_key(
        self,
        call: _Call,
        context: grpc.aio.ServicerContext,
        secret: str,
        limiter: RateLimiter | None,
        mutations: ByRole | None,
        share: PerCaller | None,
        what: str,
        allowed: bool,
    ) -> None:
        assert self.keys is not None
        who = await self.keys(secret)
        if not allowed:
            raise errors.PermissionDenied(
                f"a key may spend, read its own key and read its wallet's balance and history; not {what}",
                reason="KEY_NOT_ALLOWED", metadata={"method": what, "key_id": who.key_id},
            )
        self._admit(call, context, who, limiter, mutations, share, what)

    def _admit(
        self,
        call: _Call,
        context: grpc.aio.ServicerContext,
        who: Principal,
        limiter: RateLimiter | None,
        mutations: ByRole | None,
        share: PerCaller | None,
        what: str,
    ) -> None:
        call.tokens.append(current_principal.set(who))
        left = context.time_remaining()
        if left is not None:  # the ledger writer and Stripe calls respect it (server/platform/deadline.py)
            call.tokens.append(call_deadline.set(time.monotonic() + left))
        self.inflight.enter()
        call.inflight = self.inflight
        # Before the servicer runs: a refused call allocates nothing (no watch queue, no ledger op).
        if share is not None:
            call.share, call.share_key = share, share.enter(who)
        if mutations is not None:
            mutations.check(who, what)
        if limiter is not None:
            limiter.check(who.scope, what)

    def _authenticate(self, value: str) -> Principal | str:
        """The JWT's principal, or a key's secret (looked up by `_enter_key`)."""
        if not value:
            raise errors.Unauthenticated("missing bearer token in 'authorization' metadata", reason="MISSING_TOKEN")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("authorization must be 'Bearer <token>'", reason="INVALID_TOKEN")
        token = token.strip()
        if self.keys is not None and token.startswith(self.key_prefix):
            return token
        return self.tokens.principal(token)

    async def _leave(self, call: _Call, method: str, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        code = "INTERNAL"
        try:
            if isinstance(exc, errors.DomainError):
                code = exc.code.value
                call.reason = exc.reason
                METRICS.refused(exc.reason)
                call.access(code)  # before the status leaves: the line is there when the caller has it
                await abort(context, exc)
            elif isinstance(exc, grpc.aio.AbortError | GeneratorExit):
                code = "ABORTED"
            elif not isinstance(exc, Exception):
                code = "CANCELLED"
            else:
                log.exception("unexpected error in %s", method, exc_info=exc)
                call.reason = "INTERNAL"
                call.access(code)
                await abort(context, errors.DomainError("internal error", reason="INTERNAL"))
        finally:
            call.done(code)


class _Call:
    """What one call has taken and must give back: context variables set, and
    its place among the calls in flight."""

    __slots__ = (
        "fair", "inflight", "logged", "metrics", "reason", "request_id", "share", "share_key", "started", "tokens",
        "turns", "work",
    )

    def __init__(self, metrics: RpcMetrics) -> None:
        self.started = time.perf_counter()
        self.tokens: list[Any] = []
        self.inflight: InFlight | None = None
        self.share: PerCaller | None = None
        self.share_key = ""
        self.fair: FairShare | None = None
        self.turns: Turns | None = None
        self.work = [0]
        self.metrics = metrics
        self.reason = ""
        self.request_id = ""
        self.logged = False
        metrics.started.inc()

    def access(self, code: str) -> None:
        """The call's access-log line, once."""
        if self.logged:
            return
        self.logged = True
        level = logging.DEBUG if code == "OK" else logging.INFO
        if access_log.isEnabledFor(level):
            who = current_principal.get(None)
            access_log.log(level, "rpc", extra={
                "method": self.metrics.method,
                "code": code,
                "reason": self.reason,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
                "caller": f"{who.role.value}:{who.subject}" if who is not None else "",
                "request_id": self.request_id or None,
            })

    def done(self, code: str) -> None:
        seconds = time.perf_counter() - self.started
        self.access(code)
        if self.inflight is not None:
            self.inflight.exit()
            self.inflight = None
        if self.share is not None:
            self.share.exit(self.share_key)
            self.share = None
        if self.fair is not None and self.turns is not None:
            self.fair.leave(self.turns, self.work[0])
            self.fair = None
        for token in reversed(self.tokens):
            try:
                token.var.reset(token)
            except ValueError:  # a stream finalised in another context
                pass
        self.metrics.done(code, seconds)
