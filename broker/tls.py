"""TLS for MQTT clients: a context from CA, certificate and key files."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_tls(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Verify the broker (against `ca_file`, else the system's CAs); present a client
    certificate when `cert_file` is given."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx
