"""Optional OpenTelemetry tracing (BILLING_OTEL_ENABLED=true, `pip install
'flownexus-billing[otel]'`). Imported only when enabled, so the default
install does not need OpenTelemetry."""

from __future__ import annotations

from typing import Any


def server_interceptor(tracer_provider: Any = None) -> Any:
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "BILLING_OTEL_ENABLED needs the otel extra: pip install 'flownexus-billing[otel]'"
        ) from exc
    # Spans go to the global tracer provider; configure its exporter with the
    # standard OTEL_* variables or opentelemetry-instrument.
    return aio_server_interceptor(tracer_provider=tracer_provider)
