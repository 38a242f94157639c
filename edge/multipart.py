"""``multipart/related`` framing (RFC 2387, RFC 2046 section 5.1) as DICOMweb's STOW-RS uses it: pure, no I/O.

The sender (:mod:`edge.results.dicomweb`) frames each object with :func:`part_head` and ends the body with
:func:`closing`, so that it knows the request's length before it sends a byte (no chunked transfer encoding);
the receiver (:mod:`edge.ingest.stow`) splits a body with :func:`split_related`, which takes anything with a
``find`` (``bytes``, an ``mmap`` of the spooled request) and returns where each part's headers and content lie,
or why the body is not a whole multipart body. It never raises for what a client sent.

A body is ``[preamble] --B CRLF headers CRLF CRLF content CRLF --B ... CRLF --B-- [epilogue]``: the CRLF before
each delimiter belongs to the delimiter, not to the content.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from email.message import Message
from typing import Protocol

__all__ = [
    "Related",
    "RelatedPart",
    "closing",
    "content_type",
    "new_boundary",
    "parse_media_type",
    "part_head",
    "split_related",
]

_MAX_HEADER_BYTES = 8192
"""The most a part's headers may take; more is not a multipart body we take."""


class Buffer(Protocol):
    """What :func:`split_related` reads: ``bytes`` or an ``mmap``."""

    def find(self, sub: bytes, start: int = ..., end: int = ...) -> int: ...

    def __getitem__(self, index: slice) -> bytes: ...

    def __len__(self) -> int: ...


def new_boundary() -> str:
    """A boundary no DICOM object is going to contain by chance (128 random bits)."""
    return f"btt-{secrets.token_hex(16)}"


def content_type(boundary: str) -> str:
    """The request's ``Content-Type`` for a STOW-RS body of Part 10 objects."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def part_head(boundary: str, media_type: str = "application/dicom") -> bytes:
    """The delimiter and headers that open one part (its content follows, then the next part or :func:`closing`)."""
    return f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    """The CRLF that ends the last part's content and the close delimiter."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def parse_media_type(header: str) -> tuple[str, dict[str, str]]:
    """``(media type, parameters)`` of a ``Content-Type`` header, the type lower case (empty if there is none)."""
    message = Message()
    message["content-type"] = header
    params = {k.lower(): str(v) for k, v in message.get_params(failobj=[])[1:]}
    return (message.get_content_type() if header.strip() else ""), params


@dataclass(frozen=True)
class RelatedPart:
    """One part of a body: its headers (names lower case) and where its content lies in the body."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def media_type(self) -> str:
        """The part's media type, lower case, without parameters (RFC 2046: ``text/plain`` when absent; a STOW-RS
        part without one is taken as the request's ``type``)."""
        return parse_media_type(self.headers.get("content-type", ""))[0]


@dataclass(frozen=True)
class Related:
    """What :func:`split_related` found: the parts, or ``error`` (and no parts) for a body that is not whole."""

    parts: tuple[RelatedPart, ...] = field(default=())
    error: str = ""


def _headers(raw: bytes) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            return None
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def split_related(body: Buffer, boundary: str) -> Related:
    """The parts of a ``multipart/related`` body delimited by ``boundary``, or why it is not a whole body (no
    opening delimiter, a part's headers not ended, no close delimiter: a truncated upload)."""
    if not boundary or len(boundary) > 70:
        return Related(error="the boundary is missing or longer than 70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    size = len(body)
    if body[: len(delimiter)] == delimiter:
        at = 0
    else:
        at = body.find(b"\r\n" + delimiter)
        if at < 0:
            return Related(error="no part: the boundary does not occur in the body")
        at += 2
    parts: list[RelatedPart] = []
    while True:
        after = at + len(delimiter)
        if body[after : after + 2] == b"--":
            break  # the close delimiter
        line_end = body.find(b"\r\n", after)
        if line_end < 0:
            return Related(error="the body ends inside a delimiter line (truncated)")
        head_end = body.find(b"\r\n\r\n", line_end, min(size, line_end + _MAX_HEADER_BYTES))
        if head_end == line_end:  # a part without headers
            headers: dict[str, str] | None = {}
        elif head_end < 0:
            return Related(error=f"part {len(parts) + 1}: its headers do not end (truncated or malformed)")
        else:
            headers = _headers(body[line_end + 2 : head_end])
        if headers is None:
            return Related(error=f"part {len(parts) + 1}: a malformed header line")
        start = head_end + 4
        next_at = body.find(b"\r\n" + delimiter, start)
        if next_at < 0:
            return Related(error=f"part {len(parts) + 1}: no delimiter after its content (the body is truncated)")
        parts.append(RelatedPart(headers, start, next_at))
        at = next_at + 2
    if not parts:
        return Related(error="the body has no part")
    return Related(tuple(parts))
