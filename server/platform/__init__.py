"""Cross-cutting code every domain uses: settings, auth, domain errors, the
clock, logs, metrics, rate limits, TLS and tracing."""
