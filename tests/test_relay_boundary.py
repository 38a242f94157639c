"""The relay's ingest boundary under arbitrary input (hypothesis): nothing a device publishes raises out of it.

:func:`cloud_relay.messages.parse_up` is fed arbitrary bytes and topics; :meth:`Ingestor.handle` (SQLite and
PostgreSQL) is fed arbitrary JSON in every position of a real message (the whole payload, the item list, an item,
its id, its body, and each field of a real receipt, settlement and certificate envelope) next to real items. It
must return every time, refuse the bad item alone with a reason safe to store, and still store the real ones.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_relay.ingest import Ack, Ingestor, UpMessage
from cloud_relay.messages import MAX_DEPTH, MAX_PAYLOAD_BYTES, MAX_REASON, ReceiptIn, parse_up
from cloud_relay.storage import Database
from protocol.encoding import nests_deeper_than
from protocol.keys import generate_key
from tests import relay_helpers
from tests.receipts_helpers import Box
from tests.relay_helpers import ARBITRARY_JSON, dumps_any, provisioned, receipt_items, throwaway_db, up

BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.integration)]
_PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

_anything = ARBITRARY_JSON


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with throwaway_db(request.param, tmp_path) as database:
        yield database


class Device:
    """A provisioned box with 3 receipts and a settlement, and counters for fresh item ids."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.box: Box = provisioned(db, tmp_path / "box", generate_key())
        self.box.record(3)
        self.settlement = self.box.book.close_batch(self.box.conn, 100)
        self.id = self.box.identity.device_id
        self.receipts = receipt_items(self.box)
        self.n = 0

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"


@pytest.fixture
def device(db: Database, tmp_path: Path) -> Device:
    return Device(db, tmp_path)


def _assert_safe(reason: str) -> None:
    assert reason.isprintable(), reason
    assert 0 < len(reason) <= MAX_REASON


def _acks_of(acks: list[Ack], device: str) -> tuple[list[str], list[dict[str, Any]]]:
    stored: list[str] = []
    rejected: list[dict[str, Any]] = []
    for ack in acks:
        assert ack.device == device
        stored += ack.stored
        rejected += ack.rejected
    return stored, rejected


# --- the parser alone -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["btt/v1/dev/box-1/up/receipts", "btt/v1/dev/box-1/up/zz"]), st.binary())
def test_any_bytes_on_any_topic_are_parsed_or_refused_never_raised(topic: str, payload: bytes) -> None:
    parsed = parse_up(topic, payload)
    for refusal in parsed.refused:
        _assert_safe(refusal.reason)


@settings(max_examples=300, deadline=None)
@given(_anything, st.sampled_from(["receipts", "settlements", "certificate", "offers", "health", "results", "zz"]))
def test_any_json_is_parsed_or_refused_with_a_reason(value: Any, kind: str) -> None:
    topic = f"btt/v1/dev/box-1/up/{kind}"
    for doc in (value, {"v": 1, "device": "box-1", "kind": kind, "items": [{"id": "i1", "body": value}, value]}):
        try:
            payload = dumps_any(doc)
        except (ValueError, RecursionError):
            continue  # not even json.dumps writes it (an integer of too many digits, nesting past its stack)
        parsed = parse_up(topic, payload)
        for refusal in parsed.refused:
            _assert_safe(refusal.reason)
        for item in parsed.items:
            assert item.id == "i1"
            if isinstance(item, ReceiptIn):
                assert 1 <= item.seq <= 2**53 - 1
                assert isinstance(item.keyid, str)
                assert isinstance(item.prev, str)


def test_limits_of_the_message_itself() -> None:
    assert relay_helpers.MAX_DEPTH == MAX_DEPTH
    topic = "btt/v1/dev/box-1/up/health"
    doc = {"v": 1, "device": "box-1", "kind": "health", "items": []}
    huge = json.dumps(doc | {"pad": "x" * MAX_PAYLOAD_BYTES}).encode()
    assert parse_up(topic, huge).refused[0].code == "size"
    assert parse_up(topic, json.dumps(doc).encode("utf-16")).refused[0].code == "encoding"
    digits = b'{"v":1,"device":"box-1","kind":"health","items":[{"id":"h","body":{"n":' + b"9" * 5000 + b"}}]}"
    assert parse_up(topic, digits).refused[0].code == "json"
    deep = b'{"v":1,"device":"box-1","kind":"health","items":[{"id":"h","body":' + b"[" * 100_000 + b"]" * 100_000
    assert parse_up(topic, deep + b"}]}").refused[0].reason == "payload is not JSON: nested too deeply"
    items = [{"id": f"h{i}", "body": {}} for i in range(10_001)]
    assert parse_up(topic, json.dumps(doc | {"items": items}).encode()).refused[0].code == "message"
    assert parse_up("btt/v1/dev/a\x00b/up/health", json.dumps(doc).encode()).refused[0].code == "topic"


_DEEP_UNDER_A_RAISED_LIMIT = """
import sys
sys.setrecursionlimit(100_000)  # what py_ecc does to the interpreter on import
from cloud_relay.messages import parse_up
from protocol.encoding import decode
from protocol.errors import EncodingError
deep = b'{"v":1,"device":"box-1","kind":"health","items":[{"id":"h","body":' + b"[" * 200_000 + b"]" * 200_000
print(parse_up("btt/v1/dev/box-1/up/health", deep + b"}]}").refused[0].reason)
try:
    decode(b"[" * 200_000 + b"]" * 200_000)
except EncodingError as exc:
    print(exc)
"""


def test_a_deep_message_is_refused_even_where_a_library_raised_the_recursion_limit() -> None:
    # The C JSON parser recurses once per level and stops only at the recursion limit: at 100000 the process died
    # of a stack overflow (CI, after the chain tests imported eth_account) instead of refusing the message.
    done = subprocess.run(
        [sys.executable, "-c", _DEEP_UNDER_A_RAISED_LIMIT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    refused = ["payload is not JSON: nested too deeply", "not valid JSON: nested deeper than 200"]
    assert done.stdout.splitlines() == refused


def test_the_ethereum_libraries_leave_the_relays_recursion_limit_as_it_was() -> None:
    code = "import sys; before = sys.getrecursionlimit(); import cloud_relay.chain.client, cloud_relay.chain.keys, web3"
    code += "; print(before, sys.getrecursionlimit())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, after = done.stdout.split()
    assert before == after


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert not nests_deeper_than('["[[[[", "\\", "\\"[[", []]', 2)
    assert nests_deeper_than('["]]]]", [[]]]', 2)
    assert not nests_deeper_than("[]" * 10_000, 1)
    assert nests_deeper_than(b"{" * 201, 200)
    assert not nests_deeper_than(b"{" * 200, 200)


# --- the ingest, against the database -------------------------------------------------------------------------


def _positions(device: Device) -> list[str]:
    paths = ["payload", "items", "item", "id", "body:health", "body:offers", "body:receipts", "body:zz"]
    paths += [f"receipt.signed.{k}" for k in device.receipts[0][1]["signed"]]
    paths += ["receipt.signatures", "receipt.signatures.0.keyid", "receipt.signatures.0.sig", "receipt.extra"]
    paths += ["settlement.signed.batch", "settlement.signed.first_seq", "settlement.signed.keyid"]
    paths += ["certificate.signed.key", "certificate.signatures", "certificate.signed.device"]
    return paths


def _poison(device: Device, position: str, value: Any) -> tuple[UpMessage, str | None]:
    """A message with ``value`` at ``position``, and the id of the item it carries (None: ``value`` replaced it)."""
    item_id = device.fresh("poison")
    if position.startswith(("receipt.", "settlement.", "certificate.")):
        what, *path = position.split(".")
        kind, body = {
            "receipt": ("receipts", device.receipts[0][1]),
            "settlement": ("settlements", device.settlement),
            "certificate": ("certificate", device.box.identity.certificate),
        }[what]
        body = copy.deepcopy(body)
        target: Any = body
        for step in path[:-1]:
            target = target[int(step)] if isinstance(target, list) else target[step]
        target[int(path[-1]) if isinstance(target, list) else path[-1]] = value
        return up(device.id, kind, [(item_id, body)]), item_id
    if position.startswith("body:"):
        return up(device.id, position[5:], [(item_id, value)]), item_id
    doc: dict[str, Any] = {"v": 1, "device": device.id, "kind": "health", "items": [{"id": item_id, "body": {}}]}
    if position == "payload":
        doc = value
    elif position == "items":
        doc["items"] = value
    elif position == "item":
        doc["items"] = [value]
    else:
        doc["items"] = [{"id": value, "body": {}}]
    return UpMessage(f"btt/v1/dev/{device.id}/up/health", dumps_any(doc)), None


@pytest.mark.slow
@_PROPERTY
@given(data=st.data())
def test_arbitrary_json_anywhere_never_stops_the_ingest(db: Database, device: Device, data: st.DataObject) -> None:
    position = data.draw(st.sampled_from(_positions(device)), label="position")
    value = data.draw(_anything, label="value")
    try:
        poison, poison_id = _poison(device, position, value)
    except (ValueError, RecursionError):
        return  # json.dumps itself cannot write this value
    report_id = device.fresh("h")
    ingest = Ingestor(db)
    acks = ingest.handle(
        [poison, up(device.id, "health", [(report_id, {"ok": True})]), up(device.id, "receipts", device.receipts)]
    )
    stored, rejected = _acks_of(acks, device.id)
    assert report_id in stored  # the rest of the batch went on
    assert all(i in stored for i, _ in device.receipts)
    for entry in rejected:
        assert entry["permanent"] is True
        _assert_safe(entry["reason"])
    answered = poison_id is None or poison_id in stored or any(r["id"] == poison_id for r in rejected)
    if not answered:  # refused as a whole message (recorded), or a settlement deferred until its receipts are here
        assert ingest.refusals or position.startswith("settlement."), (position, value)
    with db.transaction() as tx:
        for (reason,) in tx.all("SELECT reason FROM rejects"):
            _assert_safe(str(reason))
