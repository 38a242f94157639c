"""Frames on the serial line: COBS-encoded, CRC-32 protected, 0x00-delimited. Pure: bytes in, frames out.

A frame's body, before COBS encoding (big-endian)::

    offset  size  field
    0       1     frame format, always 1 (the layout below is frozen; message versions evolve instead)
    1       1     kind: 1 DATA, 2 ACK, 3 NAK
    2       1     session: DATA: the sender's session (new, random, each time it opens the port);
                  ACK/NAK: the session of the DATA frame they answer
    3       2     sequence number (DATA: its own; ACK: the one acknowledged; NAK: the one expected)
    5       n     payload (DATA only, at most MAX_PAYLOAD bytes; one message, see messages.py)
    5+n     4     CRC-32 (IEEE 802.3, as zlib.crc32) of bytes 0 .. 5+n

On the wire: ``0x00 COBS(body) 0x00``. COBS removes every zero byte from the body, so 0x00 only ever
delimits, and a receiver that joins mid-stream or loses bytes to noise resynchronises at the next 0x00.
:class:`FrameDecoder` takes arbitrary chunks (split or merged frames alike) and returns the good frames;
a garbled frame is dropped and counted by reason, never raised.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

from firmware_bridge.errors import CrcMismatch, FramingError

__all__ = [
    "FRAME_FORMAT",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "cobs_decode",
    "cobs_encode",
    "decode_frame",
    "encode_frame",
]

FRAME_FORMAT = 1
MAX_PAYLOAD = 1024
_HEADER = struct.Struct(">BBBH")
_CRC = struct.Struct(">I")
_MIN_BODY = _HEADER.size + _CRC.size
_MAX_BODY = _MIN_BODY + MAX_PAYLOAD
MAX_ENCODED = _MAX_BODY + _MAX_BODY // 254 + 1
"""The longest COBS encoding of a valid body; longer runs without a delimiter are noise."""


class FrameKind(enum.IntEnum):
    """What a frame is for."""

    DATA = 1
    ACK = 2
    NAK = 3


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: FrameKind
    session: int
    seq: int
    payload: bytes = b""


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: ``data`` without any 0x00 byte, at most 1 byte in 254 longer."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Invert :func:`cobs_encode`; :class:`FramingError` if ``data`` is not a valid encoding."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("COBS: zero byte inside a frame", "cobs")
        end = i + code
        if end > n:
            raise FramingError("COBS: block runs past the end of the frame", "cobs")
        block = data[i + 1 : end]
        if 0 in block:
            raise FramingError("COBS: zero byte inside a frame", "cobs")
        out += block
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    """The bytes to write for ``frame``, delimiters included."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise FramingError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    if frame.kind is not FrameKind.DATA and frame.payload:
        raise FramingError(f"a {frame.kind.name} frame carries no payload")
    body = _HEADER.pack(FRAME_FORMAT, frame.kind, frame.session & 0xFF, frame.seq & 0xFFFF) + frame.payload
    body += _CRC.pack(zlib.crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """Decode the COBS bytes between two delimiters; :class:`FramingError` (or :class:`CrcMismatch`) if bad."""
    if len(encoded) > MAX_ENCODED:
        raise FramingError(f"frame of {len(encoded)} encoded bytes exceeds {MAX_ENCODED}", "oversize")
    body = cobs_decode(encoded)
    if len(body) < _MIN_BODY:
        raise FramingError(f"frame of {len(body)} bytes is shorter than {_MIN_BODY}", "short")
    (crc,) = _CRC.unpack_from(body, len(body) - _CRC.size)
    if zlib.crc32(body[: -_CRC.size]) != crc:
        raise CrcMismatch
    fmt, kind, session, seq = _HEADER.unpack_from(body)
    if fmt != FRAME_FORMAT:
        raise FramingError(f"frame format {fmt} is not {FRAME_FORMAT}")
    try:
        frame_kind = FrameKind(kind)
    except ValueError:
        raise FramingError(f"frame kind {kind} is unknown") from None
    payload = body[_HEADER.size : -_CRC.size]
    if frame_kind is not FrameKind.DATA and payload:
        raise FramingError(f"a {frame_kind.name} frame carries no payload")
    return Frame(frame_kind, session, seq, payload)


class FrameDecoder:
    """Streaming decoder: feed it whatever the port returned, get back the complete valid frames.

    Garbled frames are dropped and counted in :attr:`drops` by reason (``crc``, ``cobs``, ``short``,
    ``oversize``, ``format``); :attr:`dropped` is their total. Nothing here raises on bad input.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.drops: Counter[str] = Counter()

    @property
    def dropped(self) -> int:
        """How many garbled frames were dropped so far."""
        return sum(self.drops.values())

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened); the counters stay."""
        self._buffer.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the frames it completed, in order."""
        frames: list[Frame] = []
        for chunk_end, piece in _split_keep(data):
            if self._discarding:
                if chunk_end:
                    self._discarding = False
                continue
            self._buffer += piece
            if len(self._buffer) > MAX_ENCODED:
                self.drops["oversize"] += 1
                self._buffer.clear()
                self._discarding = not chunk_end
                continue
            if chunk_end:
                encoded = bytes(self._buffer)
                self._buffer.clear()
                if encoded:
                    frame = self._decode(encoded)
                    if frame is not None:
                        frames.append(frame)
        return frames

    def _decode(self, encoded: bytes) -> Frame | None:
        try:
            return decode_frame(encoded)
        except FramingError as exc:
            self.drops[exc.reason] += 1
            return None


def _split_keep(data: bytes) -> list[tuple[bool, bytes]]:
    """Split ``data`` at 0x00: ``(ends_with_delimiter, piece)`` pairs."""
    parts = data.split(b"\x00")
    return [(i < len(parts) - 1, part) for i, part in enumerate(parts)]
