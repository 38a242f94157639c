"""Messages carried in DATA frames, and their encoding. Pure: bytes in, messages out (or a MessageError).

A payload is one message: a type byte, then fields as tag-length-value triples (``tag u8, length u8,
value``). Integers are big-endian two's complement in 1 to 8 bytes, decimals are integers in fixed units
(``scale`` below), strings UTF-8, lists of codes 2 bytes each. A decoder skips tags it does not know, so a
newer peer may add fields without breaking an older one; a new message type is :class:`UnknownMessage`
to an older peer, which skips it. Incompatible changes raise the protocol version, negotiated by
:class:`Hello` (:func:`negotiate`).

Nothing here commands an exposure: the protocol has no such message. The unit reports; the agent asks.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from firmware_bridge.errors import MessageError, UnknownMessage, UnsupportedVersion

__all__ = [
    "MESSAGE_TYPES",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "Capability",
    "ClockSync",
    "ExposureCompleted",
    "ExposureLogEnd",
    "ExposureStarted",
    "GetExposureLog",
    "GetIdentity",
    "GetStatus",
    "Heartbeat",
    "Hello",
    "Identify",
    "Message",
    "Status",
    "decode_message",
    "encode_message",
    "negotiate",
]

PROTOCOL_VERSION = 1
"""The newest protocol version this code speaks."""
MIN_PROTOCOL_VERSION = 1
"""The oldest protocol version this code still speaks."""


class Capability(enum.IntFlag):
    """Optional features a side announces in :class:`Hello`."""

    EXPOSURE_LOG = 1
    """Answers :class:`GetExposureLog` (the agent resynchronises after a gap)."""
    CLOCK_SYNC = 2
    """Answers :class:`ClockSync` with its own clock."""
    DOSE_AREA_PRODUCT = 4
    """Reports the dose-area product of each exposure."""
    HEAT_UNITS = 8
    """Reports tube heat (percent of capacity) in :class:`Status`."""
    DICOM_SEND = 16
    """Sends each image to the agent with DICOM C-STORE after the exposure."""


def _f(tag: int, default: Any = dataclasses.MISSING, scale: int = 1) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"tag": tag, "scale": scale})
    return field(default=default, metadata={"tag": tag, "scale": scale})


@dataclass(frozen=True)
class Message:
    """Base of every message; ``TYPE`` is its type byte on the wire."""

    TYPE: ClassVar[int] = 0


@dataclass(frozen=True)
class Hello(Message):
    """Handshake, sent first by each side after the port opens; answered once with ``reply=True``.

    ``nonce`` identifies the sender's session: a new nonce means the peer restarted, so its sequence
    numbers start over.
    """

    TYPE: ClassVar[int] = 0x01
    max_version: int = _f(1)
    min_version: int = _f(2)
    capabilities: int = _f(3, 0)
    nonce: int = _f(4, 0)
    reply: bool = _f(5, False)


@dataclass(frozen=True)
class Identify(Message):
    """The unit: who made it, which model, its serial number (as in its DICOM DeviceSerialNumber), firmware."""

    TYPE: ClassVar[int] = 0x02
    model: str = _f(1)
    serial: str = _f(2)
    firmware: str = _f(3)
    manufacturer: str = _f(4, "")


@dataclass(frozen=True)
class GetIdentity(Message):
    """Agent request: send :class:`Identify`."""

    TYPE: ClassVar[int] = 0x03


@dataclass(frozen=True)
class Status(Message):
    """The unit's state: ``ready``, ``busy`` (exposing), ``fault`` or ``standby``; tube heat; active fault codes."""

    TYPE: ClassVar[int] = 0x04
    state: str = _f(1)
    heat_pct: int = _f(2, 0)
    tube_temp_c: float = _f(3, 0.0, scale=10)
    faults: tuple[int, ...] = _f(4, ())
    unit_time_ms: int = _f(5, 0)


@dataclass(frozen=True)
class GetStatus(Message):
    """Agent request: send :class:`Status`."""

    TYPE: ClassVar[int] = 0x05


@dataclass(frozen=True)
class ExposureStarted(Message):
    """The unit began an exposure (informational; the agent never commands or blocks one)."""

    TYPE: ClassVar[int] = 0x06
    exposure_id: int = _f(1)
    program: str = _f(2)
    kvp: float = _f(3, 0.0, scale=10)
    ma: float = _f(4, 0.0, scale=10)
    started_ms: int = _f(5, 0)


@dataclass(frozen=True)
class ExposureCompleted(Message):
    """An exposure finished: the billable use. ``exposure_id`` increases by one per exposure, per unit.

    ``program`` is ``panoramic``, ``ceph``, ``intraoral`` or ``cbct``; ``dap_mgy_cm2`` the dose-area
    product; ``started_ms`` the unit's clock (Unix milliseconds, UTC) when it began; ``aborted`` if the
    operator released the button early (still an exposure, still reported).
    """

    TYPE: ClassVar[int] = 0x07
    exposure_id: int = _f(1)
    program: str = _f(2)
    kvp: float = _f(3, 0.0, scale=10)
    ma: float = _f(4, 0.0, scale=10)
    time_ms: int = _f(5, 0)
    dap_mgy_cm2: float = _f(6, 0.0, scale=1000)
    started_ms: int = _f(7, 0)
    aborted: bool = _f(8, False)


@dataclass(frozen=True)
class Heartbeat(Message):
    """Sent by the unit every second or so; silence means the link is down."""

    TYPE: ClassVar[int] = 0x08
    unit_time_ms: int = _f(1, 0)
    uptime_s: int = _f(2, 0)


@dataclass(frozen=True)
class ClockSync(Message):
    """Agent sends its clock (``unit_time_ms`` 0); the unit answers with both, so the agent knows the offset."""

    TYPE: ClassVar[int] = 0x09
    host_time_ms: int = _f(1)
    unit_time_ms: int = _f(2, 0)


@dataclass(frozen=True)
class GetExposureLog(Message):
    """Agent request: resend :class:`ExposureCompleted` for every exposure after ``since_id``, then the end."""

    TYPE: ClassVar[int] = 0x0A
    since_id: int = _f(1)


@dataclass(frozen=True)
class ExposureLogEnd(Message):
    """End of an answer to :class:`GetExposureLog`: ``last_id`` is the unit's newest exposure."""

    TYPE: ClassVar[int] = 0x0B
    last_id: int = _f(1)
    count: int = _f(2, 0)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Identify,
        GetIdentity,
        Status,
        GetStatus,
        ExposureStarted,
        ExposureCompleted,
        Heartbeat,
        ClockSync,
        GetExposureLog,
        ExposureLogEnd,
    )
}


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    tag: int
    kind: Any
    scale: int
    required: bool


def _specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _FieldSpec(
            f.name,
            f.metadata["tag"],
            hints[f.name],
            f.metadata["scale"],
            f.default is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )


_SPECS = {code: _specs(cls) for code, cls in MESSAGE_TYPES.items()}


def _encode_int(value: int) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    if length > 8:
        raise MessageError(f"integer {value} does not fit in 8 bytes")
    return value.to_bytes(length, "big", signed=True)


def _encode_value(spec: _FieldSpec, value: Any) -> bytes:
    if spec.kind is str:
        data = str(value).encode("utf-8")
    elif spec.kind is bool:
        data = b"\x01" if value else b"\x00"
    elif spec.kind is int:
        data = _encode_int(int(value))
    elif spec.kind is float:
        data = _encode_int(round(float(value) * spec.scale))
    else:  # tuple[int, ...]: 16-bit codes
        if any(not 0 <= int(v) <= 0xFFFF for v in value):
            raise MessageError(f"{spec.name}: codes must be 0..65535")
        data = b"".join(int(v).to_bytes(2, "big") for v in value)
    if len(data) > 255:
        raise MessageError(f"{spec.name}: {len(data)} bytes exceeds 255")
    return bytes((spec.tag, len(data))) + data


def encode_message(message: Message) -> bytes:
    """The payload bytes of ``message``."""
    specs = _SPECS.get(message.TYPE)
    if specs is None or MESSAGE_TYPES[message.TYPE] is not type(message):
        raise MessageError(f"{type(message).__name__} is not a protocol message")
    return bytes((message.TYPE,)) + b"".join(_encode_value(s, getattr(message, s.name)) for s in specs)


def _decode_value(spec: _FieldSpec, data: bytes) -> Any:
    if spec.kind is str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"{spec.name}: not UTF-8") from None
    if spec.kind is bool:
        if len(data) != 1:
            raise MessageError(f"{spec.name}: a flag is one byte")
        return data != b"\x00"
    if spec.kind in (int, float):
        if not 1 <= len(data) <= 8:
            raise MessageError(f"{spec.name}: an integer is 1 to 8 bytes, got {len(data)}")
        number = int.from_bytes(data, "big", signed=True)
        return number if spec.kind is int else number / spec.scale
    if len(data) % 2:
        raise MessageError(f"{spec.name}: a list of codes has an even length")
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def decode_message(payload: bytes) -> Message:
    """Decode one payload; :class:`UnknownMessage` for a type we do not know, :class:`MessageError` if bad."""
    if not payload:
        raise MessageError("empty payload")
    cls = MESSAGE_TYPES.get(payload[0])
    if cls is None:
        raise UnknownMessage(payload[0])
    by_tag = {s.tag: s for s in _SPECS[cls.TYPE]}
    values: dict[str, Any] = {}
    i = 1
    while i < len(payload):
        if i + 2 > len(payload):
            raise MessageError(f"{cls.__name__}: truncated field header")
        tag, length = payload[i], payload[i + 1]
        data = payload[i + 2 : i + 2 + length]
        if len(data) != length:
            raise MessageError(f"{cls.__name__}: field {tag} truncated")
        i += 2 + length
        spec = by_tag.get(tag)
        if spec is None:
            continue
        if spec.name in values:
            raise MessageError(f"{cls.__name__}.{spec.name}: repeated")
        values[spec.name] = _decode_value(spec, data)
    missing = [s.name for s in _SPECS[cls.TYPE] if s.required and s.name not in values]
    if missing:
        raise MessageError(f"{cls.__name__}: missing {', '.join(missing)}")
    return cls(**values)


def negotiate(ours: Hello, theirs: Hello) -> int:
    """The protocol version both sides speak (the highest common one); :class:`UnsupportedVersion` if none."""
    version = min(ours.max_version, theirs.max_version)
    if version < max(ours.min_version, theirs.min_version):
        raise UnsupportedVersion(
            f"peer speaks versions {theirs.min_version}..{theirs.max_version}, "
            f"we speak {ours.min_version}..{ours.max_version}"
        )
    return version
