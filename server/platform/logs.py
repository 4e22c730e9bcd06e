"""Structured JSON logs (one object per line)."""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import sys
import time
import uuid

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# The id of the RPC being served (from `x-request-id` metadata, or generated),
# set by the error interceptor for the whole call.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


_PREFIX = uuid.uuid4().hex[:12]
_counter = itertools.count(1)


def new_request_id() -> str:
    # A per-process random prefix plus a counter: unique, and far cheaper
    # than a uuid4 on every call of the hot path.
    return f"{_PREFIX}-{next(_counter):x}"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current RPC's request id (None outside
    RPCs) and, when an OpenTelemetry span is active, its `trace_id` and
    `span_id` (W3C hex, as exporters print them without the 0x)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        # Only if something already imported OpenTelemetry (BILLING_OTEL_ENABLED
        # or opentelemetry-instrument): the default install does not have it.
        trace = sys.modules.get("opentelemetry.trace")
        if trace is not None and not hasattr(record, "trace_id"):
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | None) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
