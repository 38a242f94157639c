"""Errors raised by the firmware bridge (`firmware_bridge`).

Every error the bridge raises on purpose derives from :class:`BridgeError`; pyserial's and the operating system's
errors are translated to :class:`TransportError` in ``transport.py`` (``raise TransportError(...) from exc``), the
one place that calls pyserial. The tree::

    BridgeError
    ├── FramingError           bytes that are not a valid frame (COBS, length, CRC); the frame is dropped and counted
    │   └── CrcMismatch        the frame decoded but its CRC-32 does not match its bytes
    ├── MessageError           a valid frame whose payload is not a valid message
    │   ├── UnknownMessage     a message type this side does not know (a newer peer); ignored and counted
    │   └── UnsupportedVersion the peer's protocol versions and ours do not overlap
    ├── SerialLinkError        the reliable link cannot do what was asked (stopped, not connected)
    └── TransportError         the serial port failed: cannot open, unplugged, read or write error
        └── PortUnavailable    the port does not exist or cannot be opened (yet); retried with backoff
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "CrcMismatch",
    "FramingError",
    "MessageError",
    "PortUnavailable",
    "SerialLinkError",
    "TransportError",
    "UnknownMessage",
    "UnsupportedVersion",
]


class BridgeError(Exception):
    """Base of every error the firmware bridge raises on purpose."""


class FramingError(BridgeError):
    """Bytes between two delimiters are not a valid frame; ``reason`` is the counter it is dropped under."""

    def __init__(self, message: str, reason: str = "format") -> None:
        super().__init__(message)
        self.reason = reason


class CrcMismatch(FramingError):
    """A frame's CRC-32 does not match its contents (noise on the line)."""

    def __init__(self, message: str = "frame CRC-32 mismatch") -> None:
        super().__init__(message, "crc")


class MessageError(BridgeError):
    """A frame's payload is not a valid message."""


class UnknownMessage(MessageError):
    """A message type this side does not know; a newer peer may send it, so it is skipped, not fatal."""

    def __init__(self, type_code: int) -> None:
        super().__init__(f"unknown message type 0x{type_code:02x}")
        self.type_code = type_code


class UnsupportedVersion(MessageError):
    """The peer's protocol version range and ours do not overlap."""


class SerialLinkError(BridgeError):
    """The reliable serial link cannot do what was asked (the MQTT link's is :class:`edge.errors.LinkError`)."""


class TransportError(BridgeError):
    """The serial port failed (read, write, unplugged)."""


class PortUnavailable(TransportError):
    """The serial port does not exist or cannot be opened."""
