"""STOW-RS to a DICOMweb destination (``protocol = "dicomweb"``): one POST per batch, one outcome per object.

The request is ``POST <url>/studies`` with ``Content-Type: multipart/related; type="application/dicom"``, one
``application/dicom`` part per object holding its file as stored (no transcoding: a DICOMweb origin server takes
any transfer syntax in a Part 10 file) and ``Accept: application/dicom+json``. Its ``Content-Length`` is worked
out from the files' sizes before the first byte goes out and the files are streamed after the headers, so the
body is never chunked (Orthanc and other servers refuse or silently drop chunked uploads) and a batch of large
originals is not held in memory. Authentication: ``auth = "bearer"`` (the token file's first line) or ``"basic"``
(``username`` and the password file's first line), read at every send so that a rotated secret is taken at once;
``https://`` checks the server against ``tls_ca_file`` (else the system's CAs) and presents ``tls_cert_file``
when configured (mutual TLS). Timeouts: ``[results] connect_timeout_s`` to connect, ``dimse_timeout_s`` for each
read and write after.

The answer, as PS3.18 section 10.5 defines it (:func:`read_response`, pure):

==================  ==========================================================================================
200 OK              every object ``sent`` (the instances the body lists in Failed SOP Sequence excepted)
202 Accepted        per instance: in Referenced SOP Sequence (0008,1199) ``sent``; in Failed SOP Sequence
                    (0008,1198) ``rejected`` with its Failure Reason (0008,1197); in neither: ``retry``
409 Conflict        none stored: per instance ``rejected`` with its Failure Reason (or the HTTP status)
400, 413, 415       the request was refused as built: ``rejected``. A batch of several is then sent again one
                    object per request, so that only the object the server refuses is rejected
401, 403            ``retry``: the credentials or the server's permissions are wrong, which an operator fixes
                    (after ``max_attempts`` the deliveries are dead-lettered; ``btt-edge results resend``)
any other, network  ``retry`` (404 and 405 too: a wrong ``url`` is a configuration an operator fixes)
==================  ==========================================================================================

A secret file that cannot be read, or TLS that cannot be set up, is ``retry`` with the reason logged. Nothing the
server or the network does raises.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

from edge.config import DestinationConfig
from edge.multipart import closing, content_type, new_boundary, parse_media_type, part_head
from edge.results import http as http_destination
from edge.results.scu import Outcome, Outgoing
from runtime.logs import event

__all__ = ["StowSender", "read_response"]

log = logging.getLogger("edge.results")

_CHUNK = 1 << 20
_MAX_RESPONSE_BYTES = 16 << 20
"""The most of a response body that is read (a STOW-RS answer is a few hundred bytes per instance)."""
_REFUSED_AS_BUILT = frozenset({400, 413, 415})
_REFERENCED, _FAILED = "00081199", "00081198"
_SOP_INSTANCE, _FAILURE_REASON, _WARNING_REASON = "00081155", "00081197", "00081196"
_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported or study UID mismatch",
}
"""Failure Reasons PS3.18 and PS3.4 name (any other value is reported by its number)."""


def _reason(code: int) -> str:
    return f"failure reason 0x{code:04X}" + (f" ({_REASONS[code]})" if code in _REASONS else "")


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _by_instance(dataset: dict[str, Any], tag: str, code_tag: str) -> dict[str, int | None]:
    """SOP Instance UID -> its Failure (or Warning) Reason, for the items of one sequence of the answer."""
    found: dict[str, int | None] = {}
    for item in _items(dataset, tag):
        uid, code = _first(item, _SOP_INSTANCE), _first(item, code_tag)
        if isinstance(uid, str):
            found[uid] = code if isinstance(code, int) and not isinstance(code, bool) else None
    return found


def _dicom_json(body: bytes, media_type: str) -> dict[str, Any] | None:
    """The answer's DICOM JSON dataset, or None when it has none we can read (empty, XML, HTML, garbage)."""
    if not body.strip() or "xml" in media_type or "html" in media_type:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, list) and len(value) == 1:  # some servers wrap the dataset in an array
        value = value[0]
    return value if isinstance(value, dict) else None


def _http(status: int, reason: str, body: bytes) -> str:
    text = " ".join(body[:300].decode("utf-8", "replace").split()) if body and b"\x00" not in body[:300] else ""
    return f"HTTP {status} {reason}".rstrip() + (f": {text}" if text else "")


def read_response(
    status: int, reason: str, content_type_header: str, body: bytes, items: Sequence[Outgoing]
) -> list[Outcome]:
    """One outcome per object of ``items`` from a STOW-RS answer (see the table in the module's docstring)."""
    media_type, _ = parse_media_type(content_type_header)
    http = _http(status, reason, body if media_type.startswith("text/") or not media_type else b"")
    if status in (200, 202, 409):
        dataset = _dicom_json(body, media_type) or {}
        failed = _by_instance(dataset, _FAILED, _FAILURE_REASON)
        referenced = _by_instance(dataset, _REFERENCED, _WARNING_REASON)
        outcomes = []
        for item in items:
            uid = item.object_uid
            if uid in failed:
                code = failed[uid]
                why = _reason(code) if code is not None else "listed as failed, without a reason"
                outcomes.append(Outcome(uid, "rejected", code, f"HTTP {status}: {why}"))
            elif uid in referenced or status == 200:
                warning = referenced.get(uid)
                detail = f"warning reason 0x{warning:04X}" if warning else ""
                outcomes.append(Outcome(uid, "sent", warning or 0, detail))
            elif status == 409:
                outcomes.append(Outcome(uid, "rejected", None, f"{http} (none stored; no reason for this instance)"))
            else:
                outcomes.append(Outcome(uid, "retry", None, f"{http}: the answer does not mention this instance"))
        return outcomes
    result: Literal["rejected", "retry"] = "rejected" if status in _REFUSED_AS_BUILT else "retry"
    return [Outcome(item.object_uid, result, None, http) for item in items]


@dataclass(frozen=True)
class _Answer:
    status: int | None
    """The HTTP status, or None when there was no answer (the outcomes say why)."""
    outcomes: list[Outcome]


class StowSender:
    """The DICOMweb :class:`~edge.results.scu.Sender`: STOW-RS, one request per batch."""

    def __init__(self, *, connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s

    def send(
        self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
    ) -> list[Outcome]:
        """POST ``items`` in one request; one :class:`Outcome` per item, in order (none once ``stopping()``)."""
        if not items or stopping():
            return []
        answer = self._post(destination, items)
        if answer.status not in _REFUSED_AS_BUILT or len(items) == 1:
            return answer.outcomes
        # refused as a whole: find the object it refuses by sending each alone
        outcomes: list[Outcome] = []
        for item in items:
            if stopping():
                break
            outcomes += self._post(destination, [item]).outcomes
        return outcomes

    def _post(self, destination: DestinationConfig, items: Sequence[Outgoing]) -> _Answer:
        outcomes: dict[str, Outcome] = {}
        files: list[tuple[Outgoing, BinaryIO, int]] = []
        try:
            for item in items:
                try:
                    fh = item.path.open("rb")
                except OSError as exc:
                    outcomes[item.object_uid] = Outcome(item.object_uid, "rejected", None,
                                                        f"cannot read {item.path.name}: {exc.strerror}")  # fmt: skip
                    continue
                files.append((item, fh, os.fstat(fh.fileno()).st_size))
            if files:
                answer = self._request(destination, files)
                outcomes.update((o.object_uid, o) for o in answer.outcomes)
            else:
                answer = _Answer(None, [])
        finally:
            for _, opened, _ in files:
                opened.close()
        return _Answer(answer.status, [outcomes[i.object_uid] for i in items])

    def _request(self, destination: DestinationConfig, files: list[tuple[Outgoing, BinaryIO, int]]) -> _Answer:
        sent = [item for item, _, _ in files]

        def retry(why: str) -> _Answer:
            event(log, "destination unavailable", level=logging.WARNING, destination=destination.name, reason=why,
                  objects=len(sent))  # fmt: skip
            return _Answer(None, [Outcome(i.object_uid, "retry", None, why) for i in sent])

        boundary = new_boundary()
        head = part_head(boundary)
        tail = closing(boundary)
        # part by part: the head, the file, and (before the next head, or in the closing) the CRLF ending it
        length = sum(len(head) + size for _, _, size in files) + 2 * (len(files) - 1) + len(tail)
        try:
            authorization = http_destination.authorization(destination)
            conn = http_destination.connection(destination, self.connect_timeout_s)
        except http_destination.SetupError as exc:
            return retry(str(exc))
        path = (urlsplit(destination.url).path.rstrip("/") or "") + "/studies"
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout_s)
            conn.putrequest("POST", path, skip_accept_encoding=True)
            conn.putheader("Content-Type", content_type(boundary))
            conn.putheader("Content-Length", str(length))
            conn.putheader("Accept", "application/dicom+json")
            if authorization:
                conn.putheader("Authorization", authorization)
            conn.endheaders()
            for n, (item, fh, size) in enumerate(files):
                conn.send((b"\r\n" if n else b"") + head)
                left = size
                while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
                    conn.send(chunk)
                    left -= len(chunk)
                if left:  # the file shrank under us: the request cannot be completed as announced
                    return retry(f"{item.path.name} changed while it was being sent")
            conn.send(tail)
            response = conn.getresponse()
            body = response.read(_MAX_RESPONSE_BYTES)
            status, reason = response.status, response.reason
            media_type = response.getheader("Content-Type", "") or ""
        except ssl.SSLError as exc:
            return retry(f"TLS failed: {exc}")
        except (OSError, http.client.HTTPException) as exc:
            return retry(f"cannot reach {destination.url}: {exc}")
        finally:
            conn.close()
        outcomes = read_response(status, reason, media_type, body, sent)
        if status in (401, 403):
            event(log, "destination refused our credentials", level=logging.WARNING, destination=destination.name,
                  status=status, auth=destination.auth)  # fmt: skip
        elif status >= 300 and status not in (409, *_REFUSED_AS_BUILT):
            event(log, "destination unavailable", level=logging.WARNING, destination=destination.name,
                  reason=_http(status, reason, b""), objects=len(sent))  # fmt: skip
        return _Answer(status, outcomes)
