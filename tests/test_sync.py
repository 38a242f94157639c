"""Sync, unit level: the wire protocol, backoff, link settings, and the service against the in-memory broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agent import build_agent
from edge.config import AgentConfig, SyncConfig, with_overrides
from edge.db import DB_FILENAME, connect
from edge.errors import AckError, ConfigError
from edge.outbox import Item, Outbox
from edge.receipts.book import ReceiptBook
from edge.sync import FakeBroker, SyncService, link_settings
from edge.sync.fake import topic_matches
from edge.sync.protocol import batches, decode_ack, encode_up
from protocol.topics import OFFLINE, ONLINE, ack_topic, command_name, presence_topic, up_topic
from runtime.backoff import Backoff, full_jitter
from tests.conftest import wait_until
from tests.receipts_helpers import Box, make_box

# --- protocol ---------------------------------------------------------------------------------------------


def _item(n: int, kind: str = "receipts", size: int = 10) -> Item:
    return Item(n, f"{kind}:{n}", kind, json.dumps({"pad": "x" * size}))


def test_batches_split_on_kind_count_and_size() -> None:
    items = [_item(1), _item(2), _item(3), _item(4, "health"), _item(5, "health"), _item(6)]
    assert [[i.row for i in b] for b in batches("d", items, 2, 10_000)] == [[1, 2], [3], [4, 5], [6]]
    big = [_item(n, size=400) for n in range(1, 6)]
    out = batches("d", big, 100, 1000)
    assert [len(b) for b in out] == [2, 2, 1]
    assert all(len(encode_up("d", "receipts", b)) <= 1000 for b in out)
    assert [len(b) for b in batches("d", [_item(1, size=5000)], 100, 1000)] == [1]  # too big: alone


def test_up_payload_is_the_contract_shape() -> None:
    doc = json.loads(encode_up("dev-1", "receipts", [_item(1), _item(2)]))
    assert doc == {
        "v": 1,
        "device": "dev-1",
        "kind": "receipts",
        "items": [{"id": "receipts:1", "body": {"pad": "x" * 10}}, {"id": "receipts:2", "body": {"pad": "x" * 10}}],
    }
    assert up_topic("dev-1", "receipts") == "btt/v1/dev/dev-1/up/receipts"
    assert ack_topic("dev-1") == "btt/v1/dev/dev-1/ack"
    assert command_name("dev-1", "btt/v1/dev/dev-1/cmd/ota-available") == "ota-available"
    assert command_name("dev-1", "btt/v1/dev/dev-2/cmd/ota-available") is None


def test_ack_decoding() -> None:
    ack = decode_ack(b'{"v":1,"stored":["a","b"],"rejected":[{"id":"c","reason":"forged","permanent":true}]}')
    assert ack.stored == ("a", "b")
    assert [(r.item, r.reason, r.permanent) for r in ack.rejected] == [("c", "forged", True)]
    assert decode_ack(b'{"v":1}').stored == ()


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"[]", b'{"v":2,"stored":[]}', b'{"v":1,"stored":[1]}', b'{"v":1,"rejected":[{"id":1}]}'],
)
def test_malformed_acks_are_refused(payload: bytes) -> None:
    with pytest.raises(AckError, match="malformed ack"):
        decode_ack(payload)


def test_topic_filter_matching() -> None:
    assert topic_matches("btt/v1/dev/+/up/#", "btt/v1/dev/a/up/receipts")
    assert not topic_matches("btt/v1/dev/+/ack", "btt/v1/dev/a/up/receipts")
    assert not topic_matches("a/b", "a/b/c")


# --- backoff and settings ---------------------------------------------------------------------------------


def test_full_jitter_grows_to_the_cap_and_resets() -> None:
    assert [full_jitter(n, 1.0, 10.0, lambda: 1.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert full_jitter(5, 1.0, 10.0, lambda: 0.0) == 0.0
    assert full_jitter(10_000, 1.0, 10.0, lambda: 0.5) == 5.0
    backoff = Backoff(0.5, 60.0, lambda: 1.0)
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_link_settings(tmp_path: Path) -> None:
    s = link_settings(SyncConfig(url="mqtt://broker.example"), "dev-1")
    assert (s.host, s.port, s.tls, s.username, s.password, s.client_id) == (
        "broker.example",
        1883,
        False,
        "dev-1",
        None,
        "dev-1",
    )
    assert s.will_topic == presence_topic("dev-1")
    assert s.will_payload == OFFLINE
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = link_settings(SyncConfig(url="mqtts://b:9999", password_file=str(secret), ca_file="/ca.pem"), "dev-1")
    assert (s.port, s.tls, s.username, s.password, s.ca_file) == (9999, True, "dev-1", "s3cret", "/ca.pem")
    s = link_settings(SyncConfig(url="mqtts://b", cert_file="/c.pem", key_file="/k.pem"), "dev-1")
    assert (s.port, s.username, s.cert_file) == (8883, None, "/c.pem")
    s = link_settings(SyncConfig(url="mqtt://u%40x:p%3A@b:1"), "dev-1")
    assert (s.username, s.password) == ("u@x", "p:")
    with pytest.raises(ConfigError, match=r"sync\.password_file"):
        link_settings(SyncConfig(url="mqtt://b", password_file=str(tmp_path / "missing")), "dev-1")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"url": "http://b"}, "sync.url"),
        ({"url": "mqtt://"}, "sync.url"),
        ({"url": "mqtt://b:99999"}, "bad port"),
        ({"cert_file": "/c.pem"}, "cert_file and sync.key_file"),
        ({"backoff_initial_s": 10.0, "backoff_max_s": 1.0}, "backoff_initial_s"),
    ],
)
def test_bad_sync_config_names_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(AgentConfig(), sync=values)


# --- the service against the fake broker --------------------------------------------------------------------


class FakeRelay:
    """Plays the relay on the fake broker: records every item it receives and acks what ``accept`` allows."""

    def __init__(self, broker: FakeBroker, accept: Callable[[str], bool] = lambda _: True) -> None:
        self.broker = broker
        self.accept = accept
        self.received: dict[str, int] = {}
        self._seen = 0

    def pump(self) -> None:
        new = self.broker.published[self._seen :]
        self._seen += len(new)
        for _client, topic, payload in new:
            if "/up/" not in topic:
                continue
            doc = json.loads(payload)
            ids = [i["id"] for i in doc["items"]]
            for item in ids:
                self.received[item] = self.received.get(item, 0) + 1
            stored = [i for i in ids if self.accept(i)]
            if stored:
                self.broker.route("relay", ack_topic(doc["device"]), json.dumps({"v": 1, "stored": stored}).encode())


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path / "data")


def _config(box: Box, **sync: Any) -> AgentConfig:
    values = {"url": "mqtt://fake", "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "ack_timeout_s": 30.0}
    values.update(sync)
    return with_overrides(
        AgentConfig(), agent={"data_dir": str(box.data_dir)}, sync=values, outbox={"feed_interval_s": 0.05}
    )


def _service(config: AgentConfig, outbox: Outbox, book: ReceiptBook | None, **kwargs: Any) -> SyncService:
    """The sync service of ``config``'s sections, as ``build_agent`` wires it."""
    return SyncService(
        config.sync, config.agent.data_dir, outbox, book, feed_interval_s=config.outbox.feed_interval_s, **kwargs
    )


@pytest.fixture
def running(box: Box) -> Iterator[Callable[..., tuple[SyncService, FakeBroker, Outbox]]]:
    services: list[SyncService] = []

    def start(broker: FakeBroker | None = None, **sync: Any) -> tuple[SyncService, FakeBroker, Outbox]:
        broker = broker or FakeBroker()
        config = _config(box, **sync)
        outbox = Outbox.open(config)
        service = _service(config, outbox, box.book, link_factory=broker.link)
        service.start()
        services.append(service)
        return service, broker, outbox

    yield start
    for service in services:
        service.stop()


def _pending(box: Box, outbox: Outbox) -> dict[str, int]:
    pending: dict[str, int] = outbox.stats(box.conn)["pending"]
    return pending


def test_without_a_url_everything_queues_offline(box: Box) -> None:
    config = with_overrides(AgentConfig(), agent={"data_dir": str(box.data_dir)}, outbox={"feed_interval_s": 0.05})
    outbox = Outbox.open(config)
    service = _service(config, outbox, box.book, link_factory=pytest.fail)
    box.record(3)
    service.start()
    try:
        wait_until(lambda: _pending(box, outbox).get("receipts") == 3)
        assert _pending(box, outbox)["health"] == 1
        assert _pending(box, outbox)["certificate"] == 1
    finally:
        service.stop()


def test_catch_up_marks_done_only_what_the_relay_acked(box: Box, running: Any) -> None:
    box.record(250)
    _service, broker, outbox = running()
    relay = FakeRelay(broker, accept=lambda item: not item.startswith("receipt:7:"))

    def pumped_and_settled() -> bool:
        relay.pump()
        return _pending(box, outbox) == {"receipts": 1}

    wait_until(pumped_and_settled)
    assert len(relay.received) == 1 + 250 + 1
    assert broker.retained[presence_topic(box.identity.device_id)] == ONLINE


def test_certificate_and_settlements_wait_for_what_comes_before(box: Box, running: Any) -> None:
    box.record(30)
    box.book.close_batch(box.conn, 30)
    box.record(5)
    _service, broker, outbox = running(batch_max_items=10)
    relay = FakeRelay(broker)

    def settled() -> bool:
        relay.pump()
        return len(relay.received) > 30 and not _pending(box, outbox)

    wait_until(settled)
    log: list[tuple[str, list[str]]] = []  # ("up:<kind>", ids sent) or ("ack", ids stored), in broker order
    for _, topic, payload in broker.published:
        if "/up/" in topic:
            log.append(("up:" + topic.rsplit("/", 1)[1], [i["id"] for i in json.loads(payload)["items"]]))
        elif topic.endswith("/ack"):
            log.append(("ack", json.loads(payload)["stored"]))
    assert log[0][0] == "up:certificate"
    assert log[1][0] == "ack"  # nothing else went out before the relay acknowledged the certificate
    at = next(n for n, (what, _) in enumerate(log) if what == "up:settlements")
    sent = {i for what, ids in log[:at] if what == "up:receipts" for i in ids}
    acked = {i for what, ids in log[:at] if what == "ack" for i in ids}
    assert len(sent) >= 30  # (the 5 later receipts were copied before the settlement)
    assert sent <= acked  # the settlement went out only once all its receipts were acknowledged


def test_outage_then_catch_up_loses_nothing(box: Box, running: Any) -> None:
    broker = FakeBroker()
    broker.set_down(True)  # the box boots without a network
    service, _, outbox = running(broker)
    relay = FakeRelay(broker)
    box.record(40)
    time.sleep(0.3)
    assert service.counters.connects == 0
    broker.set_down(False)

    def settled() -> bool:
        relay.pump()
        return bool(relay.received) and not _pending(box, outbox)

    wait_until(settled)
    broker.set_down(True)  # a second outage mid-stream: the will goes out
    assert broker.retained[presence_topic(box.identity.device_id)] == OFFLINE
    box.record(60)
    time.sleep(0.2)
    broker.set_down(False)
    wait_until(settled)
    assert len([i for i in relay.received if i.startswith("receipt:")]) == 100
    assert service.counters.connects == 2


def test_unacked_messages_are_sent_again_after_the_ack_timeout(box: Box, running: Any) -> None:
    box.record(5)
    service, broker, outbox = running(ack_timeout_s=0.3)
    relay = FakeRelay(broker)
    relay.accept = lambda item: not item.startswith("receipt:") or relay.received[item] > 1  # first ack lost

    def settled() -> bool:
        relay.pump()
        return len(relay.received) > 5 and not _pending(box, outbox)

    wait_until(settled)
    receipts = [n for item, n in relay.received.items() if item.startswith("receipt:")]
    assert receipts == [2] * 5
    assert service.counters.ack_timeouts >= 1


def test_bad_acks_and_permanent_rejections(box: Box, running: Any) -> None:
    box.record(2)
    service, broker, outbox = running()
    device = box.identity.device_id
    relay = FakeRelay(broker, accept=lambda item: item.startswith("certificate:"))

    def receipts_published() -> bool:
        relay.pump()
        return any("/up/receipts" in t for _, t, _ in broker.published)

    wait_until(receipts_published)
    broker.route("relay", ack_topic(device), b"not json")
    items = next(json.loads(p)["items"] for _, t, p in broker.published if t.endswith("/up/receipts"))
    first, second = items[0]["id"], items[1]["id"]
    ack = {"v": 1, "stored": [first], "rejected": [{"id": second, "reason": "forged", "permanent": True}]}
    broker.route("relay", ack_topic(device), json.dumps(ack).encode())
    wait_until(lambda: outbox.state(box.conn, second) == "rejected")
    assert outbox.state(box.conn, first) == "done"
    assert service.counters.bad_acks == 1
    broker.route("relay", f"btt/v1/dev/{device}/cmd/ota-available", b"{}")
    sent_before = sum(1 for _, t, _ in broker.published if t.endswith("/up/receipts"))
    time.sleep(0.3)
    assert sum(1 for _, t, _ in broker.published if t.endswith("/up/receipts")) == sent_before  # not resent


def test_commands_reach_their_handler_and_a_failing_handler_is_contained(box: Box) -> None:
    broker = FakeBroker()
    got: list[bytes] = []

    def wake(payload: bytes) -> None:
        got.append(payload)
        if payload == b"boom":
            raise RuntimeError("handler failed")

    config = _config(box)
    service = _service(
        config, Outbox.open(config), box.book, link_factory=broker.link, commands={"ota-available": wake}
    )
    service.start()
    try:
        device = box.identity.device_id
        wait_until(lambda: any(t.endswith("/presence") for _, t, _ in broker.published))
        for payload in (b"boom", b'{"v":1}'):
            broker.route("relay", f"btt/v1/dev/{device}/cmd/ota-available", payload)
        broker.route("relay", f"btt/v1/dev/{device}/cmd/self-destruct", b"{}")
        wait_until(lambda: got == [b"boom", b'{"v":1}'])
        assert service.counters.connects == 1  # the failing handler did not disturb the link
    finally:
        service.stop()


def test_health_reports_the_drop_counters(box: Box, running: Any) -> None:
    config = _config(box)
    outbox = Outbox(with_overrides(config, outbox={"max_telemetry_items": 10}).outbox)
    Outbox.migrate(box.conn)
    for n in range(15):
        outbox.enqueue(box.conn, "offers", {"n": n})
    _service, broker, _ = running(health_interval_s=1.0)
    relay = FakeRelay(broker)

    def health_with_drops() -> bool:
        relay.pump()
        return any(
            i["body"]["outbox"]["dropped"] == {"offers": 5}
            for _, t, p in broker.published
            if t.endswith("/up/health")
            for i in json.loads(p)["items"]
        )

    wait_until(health_with_drops)


def test_unusable_settings_queue_offline_instead_of_stopping_the_agent(box: Box) -> None:
    config = _config(box, password_file=str(box.data_dir / "no-such-file"))
    outbox = Outbox.open(config)
    service = _service(config, outbox, box.book, link_factory=pytest.fail)
    box.record(1)
    service.start()
    try:
        wait_until(lambda: _pending(box, outbox).get("receipts") == 1)
    finally:
        service.stop()


def test_no_device_id_means_no_link(tmp_path: Path) -> None:
    config = with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)}, sync={"url": "mqtt://fake"})
    service = _service(config, Outbox.open(config), None, link_factory=pytest.fail)
    service.start()
    service.stop()


@pytest.mark.slow  # (imports every component)
def test_build_agent_wires_the_outbox_and_sync(tmp_path: Path) -> None:
    agent = build_agent(with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)}))
    names = [s.name for s in agent.services]
    assert "sync" in names
    # the outbox tables are created before any service that queues starts
    assert names.index("outbox") < min(names.index(n) for n in ("control", "pipeline", "capacity", "sync"))
    agent.services[names.index("outbox")].start()
    conn = connect(tmp_path / DB_FILENAME)
    assert Outbox.mark(conn, "receipts") == 0
    conn.close()
