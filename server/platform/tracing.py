"""Optional OpenTelemetry tracing (BILLING_OTEL_ENABLED=true, `pip install
'flownexus-billing[otel]'`). Imported only when enabled, so the default
install does not need OpenTelemetry."""

from __future__ import annotations

from typing import Any


def server_interceptor(tracer_provider: Any = None) -> Any | None:
    """The OpenTelemetry grpc.aio server interceptor, or None when
    `opentelemetry-instrument` already instruments every grpc.aio server (its
    patched `grpc.aio.server` adds the same interceptor: one span per call,
    not two)."""
    try:
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorServer,
            aio_server_interceptor,
        )
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "BILLING_OTEL_ENABLED needs the otel extra: pip install 'flownexus-billing[otel]'"
        ) from exc
    if GrpcAioInstrumentorServer().is_instrumented_by_opentelemetry:  # a singleton
        return None
    # Spans go to the global tracer provider; configure its exporter with the
    # standard OTEL_* variables under opentelemetry-instrument (docs/operations.md).
    return aio_server_interceptor(tracer_provider=tracer_provider)
