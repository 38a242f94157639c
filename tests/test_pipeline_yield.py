"""Analysis yields to ingest: the policy on a fake clock, and the pipeline service with a fake SCP activity."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge.db import DB_FILENAME, connect
from edge.ingest.activity import IngestYield
from edge.pipeline.analyzer import Analyzer
from edge.pipeline.backends.fake import FakeBackend
from edge.pipeline.worker import PipelineService, migrate_pipeline
from tests.pipeline_helpers import reference_outputs, tiny_bundle
from tests.test_pipeline_worker import _receive


def test_no_open_association_never_waits() -> None:
    policy = IngestYield(quiet_s=0.3, max_defer_s=5)
    assert policy.wait_s(100.0, None) == 0


def test_receiving_waits_until_quiet_for_quiet_s() -> None:
    policy = IngestYield(quiet_s=0.3, max_defer_s=5)
    assert policy.wait_s(100.0, 99.9) == pytest.approx(0.2)  # data 0.1 s ago: wait until 0.3 s of quiet
    assert policy.wait_s(100.2, 100.1) == pytest.approx(0.2)  # more arrived meanwhile: wait again
    assert policy.wait_s(100.4, 100.1) == 0  # quiet long enough (a unit holding the association idle)


def test_a_long_transfer_defers_at_most_max_defer_s_then_one_image_goes() -> None:
    policy = IngestYield(quiet_s=0.3, max_defer_s=2)
    now = 100.0
    waits = []
    while (wait := policy.wait_s(now, now - 0.01)) > 0:  # data keeps arriving
        waits.append(wait)
        now += wait
    assert now == pytest.approx(102.0)  # analysis went after max_defer_s, not later
    assert all(w <= 0.3 for w in waits)
    assert policy.wait_s(now + 0.5, now + 0.49) == pytest.approx(0.29)  # after that image, it waits again
    assert policy.wait_s(now + 2.5, now + 2.49) == 0  # ... for max_defer_s at most


def test_quiet_between_deferrals_restarts_the_bound() -> None:
    policy = IngestYield(quiet_s=0.3, max_defer_s=2)
    assert policy.wait_s(100.0, 99.99) > 0
    assert policy.wait_s(101.9, None) == 0  # the association closed: analysis went, the deferral ended
    assert policy.wait_s(102.0, 101.99) > 0  # a new batch: a fresh max_defer_s, not the remains of the old one
    assert policy.wait_s(103.9, 103.89) > 0
    assert policy.wait_s(104.0, 103.99) == 0


def test_quiet_s_zero_turns_yielding_off() -> None:
    policy = IngestYield(quiet_s=0.0, max_defer_s=5)
    assert policy.wait_s(100.0, 100.0) == 0


class _FakeIngest:
    """An SCP's activity that the test switches: receiving (data arriving now) or idle (no association)."""

    def __init__(self) -> None:
        self.receiving = threading.Event()

    def receiving_at(self) -> float | None:
        return time.monotonic() if self.receiving.is_set() else None


def _analysed_at(conn: sqlite3.Connection, uids: list[str], timeout: float = 20) -> dict[str, float]:
    """Wait until every one of ``uids`` is analysed; when each was seen so (``time.monotonic()``)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(uids):
        assert time.monotonic() < deadline, f"analysed {len(seen)} of {len(uids)}"
        for (uid,) in conn.execute("SELECT sop_instance_uid FROM instances WHERE pipeline_state = 'analysed'"):
            seen.setdefault(uid, time.monotonic())
        time.sleep(0.01)
    return seen


def _service(tmp_path: Path, ingest: _FakeIngest, *, max_defer_s: float) -> PipelineService:
    return PipelineService(
        tmp_path,
        lambda: Analyzer(tiny_bundle(), FakeBackend(reference_outputs)),
        poll_interval_s=0.05,
        ingest_activity=ingest.receiving_at,
        ingest_yield=IngestYield(quiet_s=0.2, max_defer_s=max_defer_s),
    )


def test_service_waits_while_receiving_and_analyses_once_ingest_ends(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    ingest = _FakeIngest()
    service = _service(tmp_path, ingest, max_defer_s=30)
    service.start()
    try:
        assert service.ready.wait(30)
        ingest.receiving.set()
        uids = _receive(conn, tmp_path, 3)
        service.notify()
        time.sleep(0.6)
        states = {s for (s,) in conn.execute("SELECT pipeline_state FROM instances")}
        assert states == {"received"}  # nothing analysed while the batch is arriving
        ended = time.monotonic()
        ingest.receiving.clear()
        analysed = _analysed_at(conn, uids)
        assert min(analysed.values()) - ended < 2.0  # promptly (max_defer_s is 30 s) after the association closed
    finally:
        service.stop()
        conn.close()


def test_service_still_analyses_during_a_transfer_that_never_ends(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    ingest = _FakeIngest()
    ingest.receiving.set()
    service = _service(tmp_path, ingest, max_defer_s=0.3)
    service.start()
    try:
        assert service.ready.wait(30)
        started = time.monotonic()
        uids = _receive(conn, tmp_path, 3)
        service.notify()
        analysed = sorted(_analysed_at(conn, uids).values())
        assert analysed[0] - started >= 0.3  # each image waited max_defer_s ...
        assert analysed[2] - analysed[0] >= 0.5  # ... one at a time (two more waits of 0.3 s)
    finally:
        service.stop()
        conn.close()


def test_the_end_of_an_association_wakes_the_waiting_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SCP's close listener (``notify``) ends the wait at once, not at the next look at the activity (made
    10 s here so that only the wake-up can explain a prompt start)."""
    import edge.pipeline.worker as worker_module

    monkeypatch.setattr(worker_module, "RECHECK_S", 10.0)
    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    ingest = _FakeIngest()
    service = PipelineService(
        tmp_path,
        lambda: Analyzer(tiny_bundle(), FakeBackend(reference_outputs)),
        poll_interval_s=60,
        ingest_activity=ingest.receiving_at,
        ingest_yield=IngestYield(quiet_s=10.0, max_defer_s=30),
    )
    service.start()
    try:
        assert service.ready.wait(30)
        ingest.receiving.set()
        uids = _receive(conn, tmp_path, 1)
        service.notify()  # the new image
        time.sleep(0.3)
        ended = time.monotonic()
        ingest.receiving.clear()
        service.notify()  # what StorageSCP's close listener does
        analysed = _analysed_at(conn, uids)
        assert analysed[uids[0]] - ended < 5.0
    finally:
        service.stop()
        conn.close()


def test_the_scp_tells_its_close_listeners_and_stops_counting_the_association(tmp_path: Path) -> None:
    """A real association (pynetdicom's SCU) against the StorageSCP: receiving while it is open, None and a call to
    every close listener once it is released."""
    from pynetdicom import AE

    from edge.config import DicomConfig
    from edge.ingest.scp import StorageSCP
    from edge.store.image_store import ImageStore
    from tests.conftest import free_port

    store = ImageStore(tmp_path / "data", min_free_mb=0, duplicate_policy="keep")
    store.start()
    scp = StorageSCP(DicomConfig(port=free_port(), bind_address="127.0.0.1"), store)
    closed = threading.Event()
    scp.add_close_listener(closed.set)
    scp.start()
    try:
        ae = AE(ae_title="UNIT")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.config.ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert scp.receiving_at() is not None
        assoc.release()
        assert closed.wait(10)
        assert scp.receiving_at() is None
    finally:
        scp.stop()
        store.stop()
