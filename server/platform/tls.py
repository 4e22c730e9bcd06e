"""TLS and optional mTLS for the gRPC listener (BILLING_TLS_CERT, BILLING_TLS_KEY,
BILLING_TLS_CLIENT_CA)."""

from __future__ import annotations

from pathlib import Path

import grpc

from server.platform.config import Settings


class TlsConfigError(ValueError):
    pass


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None when TLS is off. A half-configured TLS setup is an error, never a
    silent fallback to plaintext."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise TlsConfigError("BILLING_TLS_CERT and BILLING_TLS_KEY must be set together (and for BILLING_TLS_CLIENT_CA)")
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        client_ca = Path(ca).read_bytes() if ca else None
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS files: {exc}") from None
    # With a client CA, a client without a certificate signed by it is refused
    # during the handshake.
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)
