"""What the HTTP destinations (``dicomweb``, ``fhir``) share: their credentials and their connection.

Secrets are read from their files at every batch, so a rotated token or password is picked up without a restart;
``https://`` URLs check the server against ``tls_ca_file`` (else the system CAs) and present ``tls_cert_file`` /
``tls_key_file`` when given. What cannot be set up (a missing secret file, a bad certificate) is a
:class:`SetupError`, which a sender records as ``retry`` for every object with its reason: an operator fixes it.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from urllib.parse import urlsplit

from edge.config import DestinationConfig

__all__ = ["SetupError", "authorization", "connection"]


class SetupError(Exception):
    """The request cannot be made (a secret file, TLS); every object is ``retry`` with this reason."""


def _first_line(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SetupError(f"cannot read results.destinations.{key} {path}: {why}") from exc
    if not line:
        raise SetupError(f"results.destinations.{key} {path} is empty")
    return line


def authorization(destination: DestinationConfig) -> str | None:
    """The ``Authorization`` header value of ``destination`` (None for ``auth = "none"``)."""
    if destination.auth == "bearer":
        return f"Bearer {_first_line(destination.token_file, 'token_file')}"
    if destination.auth == "basic":
        password = _first_line(destination.password_file, "password_file")
        pair = f"{destination.username}:{password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"
    return None


def connection(destination: DestinationConfig, timeout_s: float) -> http.client.HTTPConnection:
    """A (not yet connected) connection to ``destination.url``'s host, TLS for ``https://``."""
    parts = urlsplit(destination.url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        context = ssl.create_default_context(cafile=destination.tls_ca_file or None)
        if destination.tls_cert_file:
            context.load_cert_chain(destination.tls_cert_file, destination.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"TLS setup failed: {exc}") from exc
    return http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
