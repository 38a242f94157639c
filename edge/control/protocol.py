"""The control protocol: one JSON object per line, a request and then its response, over the Unix socket.

A request names a method and its parameters; the response carries the same ``id`` and either ``result`` or the
``error`` message::

    -> {"id": 7, "method": "studies", "params": {"limit": 20}}
    <- {"id": 7, "ok": true, "result": [...]}
    <- {"id": 7, "ok": false, "error": "unknown method 'foo'"}

An error with ``id`` 0 is about the connection rather than a request (a line that is not a request, every
connection busy); request ids start at 1.

Pure: bytes in, values out or :class:`~edge.errors.ControlError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edge.errors import ControlError

__all__ = ["MAX_LINE_BYTES", "MAX_REQUEST_BYTES", "Request", "Response", "decode_request", "decode_response", "encode"]

MAX_LINE_BYTES = 4 * 1024 * 1024
"""Longest response line (a page of the log view)."""
MAX_REQUEST_BYTES = 64 * 1024
"""Longest request line (a method and a few parameters): what the server buffers for a connection at most."""


@dataclass(frozen=True)
class Request:
    """A call of ``method`` with ``params``; ``id`` pairs it with its response."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "params": self.params}


@dataclass(frozen=True)
class Response:
    """The answer to request ``id``: ``result`` when ``ok``, else the ``error`` message for the technician."""

    id: int
    ok: bool
    result: Any = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.ok:
            return {"id": self.id, "ok": True, "result": self.result}
        return {"id": self.id, "ok": False, "error": self.error}


def encode(message: Request | Response) -> bytes:
    """One line of compact JSON, newline-terminated."""
    line = json.dumps(message.to_json(), separators=(",", ":"), default=str).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ControlError(f"message of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit")
    return line


def _object(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE_BYTES:
        raise ControlError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"not a JSON line: {exc}") from exc
    if not isinstance(doc, dict):
        raise ControlError("a control message must be a JSON object")
    if not isinstance(doc.get("id"), int) or isinstance(doc.get("id"), bool):
        raise ControlError("a control message needs an integer 'id'")
    return doc


def decode_request(line: bytes) -> Request:
    """The request on ``line``."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ControlError(f"request line of {len(line)} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")
    doc = _object(line)
    method, params = doc.get("method"), doc.get("params", {})
    if not isinstance(method, str) or not method:
        raise ControlError("a request needs a 'method' string")
    if not isinstance(params, dict):
        raise ControlError("'params' must be an object")
    return Request(doc["id"], method, params)


def decode_response(line: bytes) -> Response:
    """The response on ``line``."""
    doc = _object(line)
    ok = doc.get("ok")
    if not isinstance(ok, bool):
        raise ControlError("a response needs a boolean 'ok'")
    if ok:
        return Response(doc["id"], True, doc.get("result"))
    return Response(doc["id"], False, error=str(doc.get("error", "")))
