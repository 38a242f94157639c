"""FHIR delivery: each Bundle (kind ``fhir``) is POSTed to the destination's base URL as a transaction.

One request per Bundle, ``Content-Type: application/fhir+json``, over ``http.client`` (no other HTTP library):
``https://`` URLs use TLS with the server's certificate checked against ``tls_ca_file`` (else the system CAs) and
the client certificate ``tls_cert_file`` / ``tls_key_file`` when given; ``auth = "bearer"`` sends the token in
``token_file``, ``auth = "basic"`` the ``username`` and the password in ``password_file`` (both read at each
batch, so a rotated secret is picked up without a restart).

Outcomes (:class:`~edge.results.scu.Outcome`, ``status`` the HTTP status):

- ``sent``: a 2xx answer whose transaction-response Bundle has a 2xx status for every entry (or no Bundle at all).
- ``rejected`` (recorded, not retried; ``btt-edge results resend``): any other 4xx, with the diagnostics of the
  OperationOutcome the server sent; a 2xx whose response Bundle shows an entry that failed; a redirect; a file we
  cannot read or an object that is not a Bundle.
- ``retry`` (backed off by the queue): 408, 429 and 5xx, and no answer (unreachable, refused, TLS failure, timed
  out). After a failure to connect the rest of the batch is not tried; it is retried with it.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from edge.config import DestinationConfig
from edge.results import http as http_destination
from edge.results.scu import Outcome, Outgoing
from runtime.logs import event

__all__ = ["FhirSender", "outcome_of"]

log = logging.getLogger("edge.results")

_MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""More of an answer than this is not read (a transaction-response of a few dozen entries is a few kB)."""
_RETRY_STATUSES = frozenset({408, 429})


class _Unavailable(Exception):
    """No answer from the destination (connect, TLS, timeout): the batch stops here."""


def _headers(destination: DestinationConfig) -> dict[str, str]:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    value = http_destination.authorization(destination)
    if value is not None:
        headers["Authorization"] = value
    return headers


def _diagnostics(doc: Any) -> str:
    """The text of an OperationOutcome: each issue's severity, code and diagnostics (or details.text)."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in doc.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else "") or ""
        texts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}".strip())
    return "; ".join(texts)


def _failed_entries(doc: Any) -> list[str]:
    """The entries of a transaction-response Bundle whose status is not 2xx, each with its outcome's text."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return []
    failed = []
    for i, item in enumerate(doc.get("entry") or []):
        response = item.get("response") if isinstance(item, dict) else None
        status = str(response.get("status", "")) if isinstance(response, dict) else ""
        if not status.startswith("2"):
            outcome = _diagnostics(response.get("outcome")) if isinstance(response, dict) else ""
            failed.append(f"entry {i}: {status or 'no status'}" + (f" ({outcome})" if outcome else ""))
    return failed


def outcome_of(object_uid: str, status: int, body: bytes, location: str = "") -> Outcome:
    """What an HTTP answer to a transaction means for the Bundle (pure: the status and body in)."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if 200 <= status < 300:
        failed = _failed_entries(doc)
        if failed:
            return Outcome(object_uid, "rejected", status, "transaction partly failed: " + "; ".join(failed))
        return Outcome(object_uid, "sent", status, "")
    text = _diagnostics(doc) or body[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {status}" + (f": {text}" if text else "")
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome(object_uid, "retry", status, detail)
    if 300 <= status < 400:
        return Outcome(object_uid, "rejected", status, f"HTTP {status}: redirect to {location or '?'} not followed")
    return Outcome(object_uid, "rejected", status, detail)


class FhirSender:
    """The ``fhir`` protocol's :class:`~edge.results.scu.Sender`."""

    def __init__(self, *, connect_timeout_s: float = 10.0, timeout_s: float = 60.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s

    def send(
        self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
    ) -> list[Outcome]:
        """POST each Bundle in ``items``; one :class:`Outcome` per item tried, in order."""
        if not items:
            return []
        try:
            headers = _headers(destination)
            http_destination.connection(destination, self.connect_timeout_s)  # the TLS files are readable
        except http_destination.SetupError as exc:
            return [Outcome(i.object_uid, "retry", None, str(exc)) for i in items]
        outcomes: list[Outcome] = []
        for item in items:
            if stopping():
                break
            if outcomes and outcomes[-1].result == "retry" and outcomes[-1].status is None:
                outcomes.append(Outcome(item.object_uid, "retry", None, outcomes[-1].detail))
                continue
            try:
                outcomes.append(self._post(destination, item, headers))
            except _Unavailable as exc:
                event(log, "destination unavailable", level=logging.WARNING, destination=destination.name,
                      reason=str(exc), objects=len(items) - len(outcomes))  # fmt: skip
                outcomes.append(Outcome(item.object_uid, "retry", None, str(exc)))
        return outcomes

    def _post(self, destination: DestinationConfig, item: Outgoing, headers: dict[str, str]) -> Outcome:
        try:
            body = item.path.read_bytes()
            if json.loads(body).get("resourceType") != "Bundle":
                raise ValueError("not a FHIR Bundle")
        except (OSError, ValueError, AttributeError) as exc:
            return Outcome(item.object_uid, "rejected", None, f"cannot send {item.path.name}: {exc}")
        parts = urlsplit(destination.url)
        try:
            connection = http_destination.connection(destination, self.connect_timeout_s)
        except http_destination.SetupError as exc:
            return Outcome(item.object_uid, "retry", None, str(exc))
        try:
            try:
                connection.connect()
            except (OSError, ssl.SSLError) as exc:
                raise _Unavailable(f"cannot connect to {destination.url}: {exc}") from exc
            if connection.sock is not None:
                connection.sock.settimeout(self.timeout_s)
            try:
                connection.request("POST", parts.path.rstrip("/") or "/", body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read(_MAX_ANSWER_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                return Outcome(item.object_uid, "retry", None, f"no answer from {destination.url}: {exc}")
            return outcome_of(item.object_uid, response.status, answer, response.getheader("Location") or "")
        finally:
            connection.close()
