"""Canonical encoding: the bytes that get hashed and signed.

We use the JSON Canonicalization Scheme (RFC 8785, "JCS") restricted to the subset our structures need:
objects with ASCII keys, arrays, strings, booleans, null and integers in the I-JSON safe range
``[-(2**53 - 1), 2**53 - 1]``. Floats are refused (money is integer minor units, time is integer
milliseconds). On that subset JCS is exactly ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8: keys sort by code point (the same as JCS's UTF-16 order for ASCII),
integers print as themselves, and string escaping matches ECMAScript's ``JSON.stringify``.

Why JSON and not deterministic CBOR/COSE: receipts are read by technicians and auditors, exported as JSON,
stored by the relay as JSON, and every language has a JCS implementation; the signed bytes are re-derived from
the parsed object as TUF does, so the export stays plain readable JSON.

:func:`canonical_bytes` validates then encodes (signers use it). :func:`encode_unchecked` skips the walk: a
verifier may use it on parsed input because a value outside the subset yields bytes no signer produced, so the
signature check fails. :func:`decode` parses strictly (no duplicate keys, no floats, no NaN).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from protocol.errors import EncodingError

__all__ = [
    "MAX_NESTING",
    "MAX_SAFE_INTEGER",
    "canonical_bytes",
    "decode",
    "encode_unchecked",
    "nests_deeper_than",
    "quote_string",
    "sha256_hex",
    "signing_message",
]

MAX_SAFE_INTEGER = 2**53 - 1
MAX_NESTING = 200
"""The deepest nesting :func:`decode` parses; past it the document is refused before the parser sees it."""
_SIGNING_PREFIX = b"BTT-EDGE-SIG/1\x00"

if c_make_encoder is not None:  # CPython's C encoder, built once: the verifier's hot path
    _c_encoder = c_make_encoder(None, None, encode_basestring, None, ":", ",", True, False, False)

    def encode_unchecked(value: Any) -> bytes:
        """Canonical bytes of ``value`` without validating it (see the module docstring)."""
        return "".join(_c_encoder(value, 0)).encode("utf-8")

else:  # pragma: no cover - Python builds without the _json accelerator

    def encode_unchecked(value: Any) -> bytes:
        """Canonical bytes of ``value`` without validating it (see the module docstring)."""
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


quote_string: Callable[[str], str] = encode_basestring
"""A string as a canonical JSON string literal (quotes and JCS escapes), the encoder's own routine."""


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EncodingError(f"{path}: integer {value} is outside the safe range ±(2**53 - 1)")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodingError(f"{path}: string is not valid Unicode (lone surrogate)") from exc
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise EncodingError(f"{path}: object key {key!r} must be an ASCII string")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    raise EncodingError(f"{path}: {type(value).__name__} has no canonical encoding (floats are not allowed)")


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``; :class:`EncodingError` outside the subset."""
    _check(value, "$")
    return encode_unchecked(value)


def _no_float(text: str) -> Any:
    raise EncodingError(f"number {text} is not an integer")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EncodingError(f"duplicate object key {key!r}")
        out[key] = value
    return out


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _STEP[_open], _STEP[_close] = 1, -1


def nests_deeper_than(data: bytes | str, limit: int) -> bool:
    """Whether the JSON text opens more than ``limit`` arrays and objects inside one another (brackets in strings
    do not count), without parsing it.

    Parse untrusted JSON only after this says no. The C parser recurses once per level and relies on the
    interpreter's recursion limit to stop, and libraries raise that limit on import (``py_ecc``, which
    ``eth_account`` imports, sets 100000): past a few ten thousand levels the process then dies of a stack overflow
    instead of raising :class:`RecursionError`. Linear in the text, and fast when it has few brackets.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    skeleton = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0) > limit


def decode(data: bytes | str) -> Any:
    """Parse JSON strictly: duplicate keys, floats, NaN and Infinity raise :class:`EncodingError`."""
    if nests_deeper_than(data, MAX_NESTING):
        raise EncodingError(f"not valid JSON: nested deeper than {MAX_NESTING}")
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_float)
    except (ValueError, RecursionError) as exc:
        raise EncodingError(f"not valid JSON: {exc}") from exc


def signing_message(kind: str, body: bytes) -> bytes:
    """Domain-separated bytes to sign: a fixed prefix, the structure's type, NUL, its canonical bytes.

    A signature over one type (a receipt) can never be replayed as another (a settlement or a certificate).
    """
    return _SIGNING_PREFIX + kind.encode("ascii") + b"\x00" + body


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
