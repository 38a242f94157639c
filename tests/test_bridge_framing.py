"""Framing and messages: pure encoders and decoders, fuzzed with random bytes."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import (
    CrcMismatch,
    FramingError,
    MessageError,
    UnknownMessage,
    UnsupportedVersion,
)
from firmware_bridge.framing import (
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameKind,
    cobs_decode,
    cobs_encode,
    decode_frame,
    encode_frame,
)
from firmware_bridge.messages import (
    MESSAGE_TYPES,
    ExposureCompleted,
    Hello,
    Identify,
    Status,
    decode_message,
    encode_message,
    negotiate,
)

FUZZ = settings(max_examples=300, deadline=None)


@given(st.binary(max_size=2000))
def test_cobs_roundtrip_has_no_zero(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


@given(st.sampled_from(list(FrameKind)), st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=MAX_PAYLOAD))
def test_frame_roundtrip(kind: FrameKind, session: int, seq: int, payload: bytes) -> None:
    if kind is not FrameKind.DATA:
        payload = b""
    wire = encode_frame(Frame(kind, session, seq, payload))
    assert wire[0] == wire[-1] == 0
    assert 0 not in wire[1:-1]
    assert decode_frame(wire[1:-1]) == Frame(kind, session, seq, payload)


def test_split_and_merged_frames() -> None:
    frames = [Frame(FrameKind.DATA, 7, i, bytes([i]) * i) for i in range(1, 20)]
    wire = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(0, len(wire), 3):  # split into 3-byte reads
        out += decoder.feed(wire[i : i + 3])
    assert out == frames
    assert FrameDecoder().feed(wire) == frames  # all merged in one read
    assert decoder.dropped == 0


def test_garbled_frame_dropped_and_counted() -> None:
    good = encode_frame(Frame(FrameKind.DATA, 1, 1, b"hello"))
    bad = bytearray(encode_frame(Frame(FrameKind.DATA, 1, 2, b"world")))
    bad[5] ^= 0x01
    decoder = FrameDecoder()
    assert decoder.feed(bytes(bad) + good) == [Frame(FrameKind.DATA, 1, 1, b"hello")]
    assert decoder.dropped == 1
    assert decoder.feed(b"\x03\x01\x00") == []  # a COBS block running past the delimiter
    assert decoder.dropped == 2


def test_oversize_run_is_dropped_then_resynchronised() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x01" * 5000) == []
    good = encode_frame(Frame(FrameKind.ACK, 1, 9))
    assert decoder.feed(b"\x01" * 10 + good) == [Frame(FrameKind.ACK, 1, 9)]
    assert decoder.drops["oversize"] == 1


def test_encode_frame_rejects_what_it_cannot_send() -> None:
    with pytest.raises(FramingError):
        encode_frame(Frame(FrameKind.DATA, 0, 0, b"x" * (MAX_PAYLOAD + 1)))
    with pytest.raises(FramingError):
        encode_frame(Frame(FrameKind.ACK, 0, 0, b"x"))
    with pytest.raises(CrcMismatch):
        decode_frame(cobs_encode(b"\x01\x01\x00\x00\x00\x00\x00\x00\x00"))


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_fuzz_decoder_never_raises(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert isinstance(frame, Frame)


@FUZZ
@given(st.binary(max_size=1200))
def test_fuzz_decode_frame_raises_only_framing_errors(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        decode_frame(data)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_decode_message_raises_only_message_errors(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MessageError:
        return
    assert type(message) in MESSAGE_TYPES.values()


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_valid_frames_with_random_payloads(payload: bytes) -> None:
    """Any payload comes out of its frame whole (exactly that frame, nothing dropped); the message decoder then
    either returns a known message or refuses the payload with a :class:`MessageError`."""
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(Frame(FrameKind.DATA, 3, 4, payload)))
    assert frames == [Frame(FrameKind.DATA, 3, 4, payload)]
    assert decoder.dropped == 0
    try:
        message = decode_message(frames[0].payload)
    except MessageError:
        return
    assert type(message) in MESSAGE_TYPES.values()


@pytest.mark.parametrize(
    "message",
    [
        Hello(2, 1, 0x1F, 123456, True),
        Identify("Pano X", "SN-42", "3.1.4", "Acme"),
        Status("fault", 55, 61.3, (0x0101, 0x0301), 1_700_000_000_000),
        ExposureCompleted(2**31 + 5, "cbct", 90.0, 8.5, 14000, 512.125, 1_700_000_000_123, True),
        *(
            cls()
            for cls in MESSAGE_TYPES.values()
            if not [f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        ),
    ],
)
def test_message_roundtrip(message: object) -> None:
    assert decode_message(encode_message(message)) == message  # type: ignore[arg-type]


def test_newer_peer_fields_and_types_are_skipped() -> None:
    payload = encode_message(ExposureCompleted(3, "panoramic", 70.0, 10.0))
    extended = payload + bytes((0x40, 3)) + b"new"  # a field a newer unit adds
    assert decode_message(extended) == ExposureCompleted(3, "panoramic", 70.0, 10.0)
    with pytest.raises(UnknownMessage) as info:
        decode_message(b"\x7e\x01\x01\x00")
    assert info.value.type_code == 0x7E


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "empty"),
        (b"\x07\x01", "truncated"),
        (b"\x07\x01\x05\x00", "truncated"),
        (b"\x07\x01\x01\x01", "missing program"),
        (b"\x07\x01\x01\x01\x01\x01\x01", "repeated"),
        (b"\x07\x01\x09" + b"\x00" * 9, "1 to 8 bytes"),
        (b"\x02\x01\x01\xff\x02\x00\x03\x00", "UTF-8"),
        (b"\x04\x01\x01r\x04\x03\x00\x00\x00", "even length"),
        (b"\x01\x01\x01\x01\x02\x01\x01\x05\x02\x00\x00", "one byte"),
    ],
)
def test_bad_messages_name_the_problem(payload: bytes, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        decode_message(payload)


def test_version_negotiation() -> None:
    ours = Hello(1, 1)
    assert negotiate(ours, Hello(3, 1)) == 1
    assert negotiate(Hello(3, 2), Hello(2, 1)) == 2
    with pytest.raises(UnsupportedVersion, match=r"peer speaks versions 2\.\.3"):
        negotiate(ours, Hello(3, 2))


def test_documented_example_bytes() -> None:
    """The example in docs/serial-protocol.md."""
    exposure = ExposureCompleted(7, "panoramic", 70.0, 10.0, 14000, 123.456, 1_700_000_000_000, False)
    wire = encode_frame(Frame(FrameKind.DATA, 0x5A, 12, encode_message(exposure)))
    assert wire.hex(" ") == (
        "00 04 01 01 5a 28 0c 07 01 01 07 02 09 70 61 6e 6f 72 61 6d 69 63 03 02 02 bc 04 01 64 "
        "05 02 36 b0 06 03 01 e2 40 07 06 01 8b cf e5 68 03 08 01 05 d8 a1 84 08 00"
    )
    assert encode_frame(Frame(FrameKind.ACK, 0x5A, 12)).hex(" ") == "00 04 01 02 5a 06 0c 39 d6 f1 6b 00"
    assert FrameDecoder().feed(wire)[0].payload == encode_message(exposure)
