"""The reliable link over an in-memory line and pyserial's ``loop://``: faults in flight, nothing lost or doubled."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import FramingError, PortUnavailable, SerialLinkError, TransportError
from firmware_bridge.framing import Frame, FrameKind, decode_frame, encode_frame
from firmware_bridge.link import Link, SerialLinkSettings
from firmware_bridge.messages import ExposureCompleted, Hello, Message, encode_message
from firmware_bridge.transport import MemoryTransport, PySerialTransport, memory_pair
from runtime.backoff import Backoff, no_jitter
from tests.conftest import wait_until

FAST = SerialLinkSettings(
    ack_timeout_s=0.03, max_retries=6, hello_interval_s=0.03, reopen_initial_s=0.01, reopen_max_s=0.05
)
N = 40


class Inbox:
    """Messages delivered by a link, counted by exposure id."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def counts(self) -> collections.Counter[int]:
        return collections.Counter(m.exposure_id for m in self.messages if isinstance(m, ExposureCompleted))

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.counts()) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True


def _frame(data: bytes) -> Frame | None:
    try:
        return decode_frame(data.strip(b"\x00"))
    except FramingError:
        return None


@pytest.fixture
def pair() -> Iterator[tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]]:
    agent_end, unit_end = memory_pair()
    inbox = Inbox()
    agent = Link(agent_end, on_message=inbox, settings=FAST, name="agent")
    unit = Link(unit_end, on_message=lambda m: None, settings=FAST, name="unit")
    agent.start()
    unit.start()
    assert agent.wait_connected(5)
    assert unit.wait_connected(5)
    yield agent_end, unit_end, agent, unit, inbox
    agent.stop()
    unit.stop()


def _exposures(n: int, start: int = 1) -> list[ExposureCompleted]:
    return [ExposureCompleted(i, "panoramic", 70.0, 10.0, 14000) for i in range(start, start + n)]


def _send_all(link: Link, messages: list[ExposureCompleted]) -> None:
    for message in messages:
        link.send(message)


def _assert_exactly_once(inbox: Inbox, n: int, *links: Link) -> None:
    assert inbox.wait_for(n), f"delivered {sorted(inbox.counts())}"
    counts = inbox.counts()
    assert sorted(counts) == list(range(1, n + 1))
    assert set(counts.values()) == {1}
    for link in links:
        assert link.stats.callback_errors == 0


def test_clean_line(pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]) -> None:
    _, _, agent, unit, inbox = pair
    _send_all(unit, _exposures(N))
    _assert_exactly_once(inbox, N, agent, unit)
    assert unit.wait_idle(5)
    assert agent.stats.garbled == 0


def _garble(rate: float, seed: int) -> Callable[[bytes], bytes]:
    rng = random.Random(seed)

    def tamper(data: bytes) -> bytes:
        return bytes(b ^ (1 << rng.randrange(8)) if rng.random() < rate else b for b in data)

    return tamper


def test_garbled_bytes_both_ways(pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]) -> None:
    agent_end, unit_end, agent, unit, inbox = pair
    unit_end.tamper = _garble(0.01, 1)
    agent_end.tamper = _garble(0.01, 2)
    _send_all(unit, _exposures(N))
    _assert_exactly_once(inbox, N, agent, unit)
    assert agent.stats.garbled > 0
    assert agent.stats.garbled == sum(agent.garbled_by_reason.values())
    assert agent.stats.naks_sent > 0


def test_dropped_acks_are_retransmitted_not_doubled(
    pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox],
) -> None:
    agent_end, _, agent, unit, inbox = pair
    rng = random.Random(3)

    def drop_acks(data: bytes) -> bytes:
        frame = _frame(data)
        return b"" if frame is not None and frame.kind is FrameKind.ACK and rng.random() < 0.4 else data

    agent_end.tamper = drop_acks
    _send_all(unit, _exposures(N))
    _assert_exactly_once(inbox, N, agent, unit)
    assert unit.stats.retransmits > 0
    assert agent.stats.duplicates > 0


def test_duplicated_frames_are_suppressed(pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]) -> None:
    _, unit_end, agent, unit, inbox = pair
    unit_end.tamper = lambda data: data * 3
    _send_all(unit, _exposures(N))
    _assert_exactly_once(inbox, N, agent, unit)
    assert agent.stats.duplicates >= 2 * N


def test_out_of_order_sequence_numbers_each_delivered_once() -> None:
    raw, end = memory_pair()
    inbox = Inbox()
    link = Link(end, on_message=inbox, settings=FAST, name="agent")
    raw.open()
    link.start()
    try:
        raw.write(encode_frame(Frame(FrameKind.DATA, 9, 0, encode_message(Hello(1, 1, nonce=5)))))
        assert link.wait_connected(5)
        messages = _exposures(6)
        for seq in (1, 3, 2, 5, 4, 3, 6, 1):
            raw.write(encode_frame(Frame(FrameKind.DATA, 9, seq, encode_message(messages[seq - 1]))))
        _assert_exactly_once(inbox, 6, link)
        assert link.stats.out_of_order >= 3
        assert link.stats.duplicates == 2
        acks = [f for f in _frames_read(raw) if f.kind is FrameKind.ACK]
        assert {f.seq for f in acks} >= {0, 1, 2, 3, 4, 5, 6}  # duplicates are ACKed again too
    finally:
        link.stop()


def _frames_read(end: MemoryTransport) -> list[Frame]:
    data = end.read()
    return [f for f in (_frame(part) for part in data.split(b"\x00") if part) if f is not None]


def test_unplugged_mid_stream_then_replugged(pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]) -> None:
    agent_end, _, agent, unit, inbox = pair
    _send_all(unit, _exposures(N // 2))
    time.sleep(0.05)
    agent_end.unplug()
    _send_all(unit, _exposures(N // 2, start=N // 2 + 1))
    time.sleep(0.2)
    agent_end.plug()
    assert agent.wait_connected(5)
    _assert_exactly_once(inbox, N, agent, unit)
    assert agent.stats.reconnects >= 2


def test_newer_peer_negotiates_down_and_skips_what_it_does_not_know() -> None:
    agent_end, unit_end = memory_pair()
    inbox = Inbox()
    agent = Link(agent_end, on_message=inbox, settings=FAST, name="agent")
    unit = Link(unit_end, on_message=lambda m: None, settings=FAST, max_version=3, min_version=1, name="unit")
    agent.start()
    unit.start()
    try:
        assert agent.wait_connected(5)
        assert agent.version == unit.version == 1
        unit_end.write(encode_frame(Frame(FrameKind.DATA, 77, 1, b"\x55\x01\x01\x01")))  # a v3-only message
        extended = encode_message(_exposures(1)[0]) + b"\x30\x02\xab\xcd"  # with a v3-only field
        unit_end.write(encode_frame(Frame(FrameKind.DATA, 77, 2, extended)))
        _assert_exactly_once(inbox, 1, agent)
        assert agent.stats.unknown_messages == 1
    finally:
        agent.stop()
        unit.stop()


def test_incompatible_peer_is_reported_not_fatal() -> None:
    agent_end, unit_end = memory_pair()
    inbox = Inbox()
    agent = Link(agent_end, on_message=inbox, settings=FAST, name="agent")
    unit = Link(unit_end, on_message=lambda m: None, settings=FAST, max_version=4, min_version=2, name="unit")
    agent.start()
    unit.start()
    try:
        wait_until(lambda: agent.state == "incompatible", 5, "the handshake to fail", interval=0.01)
        assert agent.error is not None
        assert "2..4" in agent.error
    finally:
        agent.stop()
        unit.stop()
    with pytest.raises(SerialLinkError):
        agent.send(_exposures(1)[0])


def test_callback_bug_does_not_stop_the_link() -> None:
    agent_end, unit_end = memory_pair()
    seen: list[Message] = []

    def flaky(message: Message) -> None:
        seen.append(message)
        if len(seen) == 1:
            raise RuntimeError("bug in the application")

    agent = Link(agent_end, on_message=flaky, settings=FAST, name="agent")
    unit = Link(unit_end, on_message=lambda m: None, settings=FAST, name="unit")
    agent.start()
    unit.start()
    try:
        _send_all(unit, _exposures(3))
        assert unit.wait_idle(5)
        assert len(seen) == 3
        assert agent.stats.callback_errors == 1
    finally:
        agent.stop()
        unit.stop()


def test_loop_url_self_delivery_through_noise() -> None:
    """pyserial's ``loop://`` echoes what is written: one link handshakes with itself and gets its own frames."""
    transport = PySerialTransport("loop://", read_timeout_s=0.01)
    inbox = Inbox()
    link = Link(transport, on_message=inbox, settings=FAST, name="loop")
    link.start()
    try:
        assert link.wait_connected(5)
        rng = random.Random(4)
        for message in _exposures(N):
            link.send(message)
            if rng.random() < 0.3:
                transport.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
        _assert_exactly_once(inbox, N, link)
        assert link.stats.garbled > 0
    finally:
        link.stop()


def test_pyserial_errors_are_translated() -> None:
    missing = PySerialTransport("/dev/does-not-exist-btt")
    with pytest.raises(PortUnavailable, match="/dev/does-not-exist-btt"):
        missing.open()
    with pytest.raises(TransportError, match="not open"):
        missing.read()
    loop = PySerialTransport("loop://", parity="even", read_timeout_s=0.01)
    loop.open()
    loop.write(b"abc")
    assert loop.read() == b"abc"
    assert loop.read() == b""
    loop.close()
    loop.close()


def test_backoff_doubles_to_its_ceiling() -> None:
    backoff = Backoff(0.5, 3.0, no_jitter)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_frames_split_across_reads(pair: tuple[MemoryTransport, MemoryTransport, Link, Link, Inbox]) -> None:
    agent_end, unit_end, agent, unit, inbox = pair
    agent_end.max_read = 3
    unit_end.max_read = 2
    _send_all(unit, _exposures(N // 2))
    _assert_exactly_once(inbox, N // 2, agent, unit)
    assert agent.stats.garbled == 0


@settings(max_examples=6, deadline=None)
@given(
    garble=st.floats(0, 0.02),
    drop=st.floats(0, 0.2),
    duplicate=st.floats(0, 0.3),
    seed=st.integers(0, 2**16),
)
def test_any_mix_of_line_faults_delivers_each_exposure_once(
    garble: float, drop: float, duplicate: float, seed: int
) -> None:
    rng = random.Random(seed)

    def line(data: bytes) -> bytes:
        if rng.random() < drop:
            return b""
        data = bytes(b ^ 0x10 if rng.random() < garble else b for b in data)
        return data * 2 if rng.random() < duplicate else data

    agent_end, unit_end = memory_pair()
    agent_end.tamper = line
    unit_end.tamper = line
    inbox = Inbox()
    agent = Link(agent_end, on_message=inbox, settings=FAST, name="agent")
    unit = Link(unit_end, on_message=lambda m: None, settings=FAST, name="unit")
    agent.start()
    unit.start()
    try:
        _send_all(unit, _exposures(15))
        _assert_exactly_once(inbox, 15, agent, unit)
        assert agent.stats.internal_errors == unit.stats.internal_errors == 0
    finally:
        agent.stop()
        unit.stop()


class _BrokenPort(MemoryTransport):
    """Opens fine, then every read fails: a flaky adapter."""

    def read(self) -> bytes:
        raise TransportError("read failed")


def test_a_port_that_opens_but_fails_is_retried_with_backoff_not_spun() -> None:
    settings = SerialLinkSettings(hello_interval_s=10, reopen_initial_s=0.05, reopen_max_s=0.1)
    link = Link(_BrokenPort(), on_message=lambda m: None, settings=settings, name="flaky")
    link.start()
    time.sleep(0.5)
    link.stop()
    assert 2 <= link.stats.reconnects <= 8
    assert link.error == "read failed"


class _HangsUp(MemoryTransport):
    """Each read fails after a while, as a pty does once the simulator at its other end is stopped."""

    def read(self) -> bytes:
        time.sleep(0.2)
        raise TransportError("device reports readiness to read but returned no data")


def test_a_read_failing_while_the_link_stops_is_a_normal_close() -> None:
    link = Link(_HangsUp(), on_message=lambda m: None, settings=FAST, name="stopping")
    link.start()
    time.sleep(0.05)  # the reader is in its first read
    link.stop()  # which fails while the stop is under way
    assert (link.state, link.error) == ("closed", None)
