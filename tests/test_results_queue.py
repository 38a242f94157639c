"""The delivery queue and the results service with a fake sender: routing, backoff, dead letters, rejections,
resend, restart without resending, and the ``forwarded`` state."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import dcmread

from edge.config import DestinationConfig, ResultsConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.pipeline.worker import migrate_pipeline
from edge.results import kinds, queue
from edge.results.analysis import RecordedAnalyses
from edge.results.scu import Outcome, Outgoing
from edge.results.service import ResultsService
from edge.results.sr import build_sr
from edge.store.image_store import ImageStore
from edge.store.index import Instance, get_instance, set_state
from models.bundle import Manifest
from tests.conftest import wait_until
from tests.pipeline_helpers import MANIFEST
from tests.results_helpers import FakeAnalyses, analysis_of, ingest, source_image

PACS = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=104)
ARCHIVE = DestinationConfig(ae_title="ARCHIVE", host="127.0.0.1", port=105, kinds=("original", "sr", "gsps"))


class FakeSender:
    """Answers each object with the next scripted result (default: sent) and records what it was given."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.sent: list[tuple[str, str]] = []

    def send(
        self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
    ) -> list[Outcome]:
        outcomes = []
        for item in items:
            assert item.path.is_file()
            result = self.script.pop(0) if self.script else "sent"
            if result == "sent":
                self.sent.append((destination.name, item.object_uid))
            status = {"sent": 0, "rejected": 0xA900, "retry": None}[result]
            outcomes.append(Outcome(item.object_uid, result, status, "" if result == "sent" else f"{result}!"))  # type: ignore[arg-type]
        return outcomes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    store = ImageStore(tmp_path, min_free_mb=0, duplicate_policy="keep")
    store.start()
    yield store
    store.stop()


def _service(
    store: ImageStore, analyses: FakeAnalyses, sender: FakeSender, clock: Clock, **config: object
) -> ResultsService:
    cfg = ResultsConfig(destinations=(PACS, ARCHIVE), backoff_initial_s=10, backoff_max_s=40, max_attempts=4)
    cfg = ResultsConfig(**{**cfg.__dict__, **config})
    service = ResultsService(cfg, store.data_dir, analyses, calling_ae="BTT_EDGE", sender=sender, clock=clock)
    conn = connect(store.data_dir / DB_FILENAME)
    queue.migrate_results(conn)
    conn.close()
    return service


def _states(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
    return {
        (d.destination.split("@")[0], s.object.kind): d.state for s in queue.list_objects(conn) for d in s.deliveries
    }


def _instance(conn: sqlite3.Connection, uid: str) -> Instance:
    instance = get_instance(conn, uid)
    assert instance is not None
    return instance


def test_builds_routes_sends_and_marks_forwarded(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=300, columns=600)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    uid = ingest(store, source)
    service = _service(store, analyses, sender, clock)
    conn = store.conn
    assert service.build_pending(conn) == 2  # the original (ARCHIVE takes originals) and the results
    objects = {s.object.kind: s for s in queue.list_objects(conn)}
    assert set(objects) == {"original", "sr", "gsps", "overlay"}
    assert {d.destination for d in objects["overlay"].deliveries} == {PACS.name}
    assert {d.destination for d in objects["gsps"].deliveries} == {ARCHIVE.name}
    assert {d.destination for d in objects["original"].deliveries} == {ARCHIVE.name}
    written = dcmread(store.data_dir / objects["sr"].object.path)
    assert written.SOPInstanceUID == objects["sr"].object.object_uid
    assert service.send_due(conn, PACS) == 2
    assert sender.sent[0] == (PACS.name, objects["sr"].object.object_uid)  # SR first
    assert _instance(conn, uid).pipeline_state == "analysed"  # ARCHIVE has not confirmed the SR yet
    assert service.send_due(conn, ARCHIVE) == 3
    assert _instance(conn, uid).pipeline_state == "forwarded"
    assert set(_states(conn).values()) == {"sent"}
    assert service.build_pending(conn) == 0
    assert service.send_due(conn, PACS) == 0


def test_transient_failures_back_off_then_dead_letter_and_resend(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("IO", rows=200, columns=200)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    ingest(store, source)
    service = _service(store, analyses, sender, clock, destinations=(PACS,))
    conn = store.conn
    service.build_pending(conn)
    waits = []
    for _ in range(4):
        sender.script = ["retry", "retry"]
        assert service.send_due(conn, PACS) == 2
        pending = [d.next_attempt_at for s in queue.list_objects(conn) for d in s.deliveries if d.state == "pending"]
        due_at = min(pending, default=None)
        if due_at is not None:
            waits.append(due_at - clock.now)
            assert service.send_due(conn, PACS) == 0  # not yet due
            clock.now = due_at
    assert waits == [10, 20, 40]  # doubling, capped at backoff_max_s; the 4th failure dead-letters
    rows = [d for s in queue.list_objects(conn) for d in s.deliveries]
    assert {d.state for d in rows} == {"dead"}
    assert {d.attempts for d in rows} == {4}
    assert {d.last_error for d in rows} == {"retry!"}
    assert queue.resend(conn, now=clock.now, destination=PACS.name) == 2
    assert service.send_due(conn, PACS) == 2
    assert set(_states(conn).values()) == {"sent"}


def test_rejection_is_recorded_per_object_and_not_retried(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=200, columns=400)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    uid = ingest(store, source)
    service = _service(store, analyses, sender, clock, destinations=(PACS,))
    conn = store.conn
    service.build_pending(conn)
    sender.script = ["sent", "rejected"]
    service.send_due(conn, PACS)
    assert _states(conn) == {("PACS", "sr"): "sent", ("PACS", "overlay"): "rejected"}
    overlay = next(s for s in queue.list_objects(conn) if s.object.kind == "overlay")
    assert overlay.deliveries[0].last_status == 0xA900
    assert overlay.deliveries[0].last_error == "rejected!"
    clock.now += 10_000
    assert service.send_due(conn, PACS) == 0  # never retried on its own
    assert _instance(conn, uid).pipeline_state == "analysed"
    assert queue.resend(conn, now=clock.now, object_uid=overlay.object.object_uid) == 1
    assert service.send_due(conn, PACS) == 1
    assert _instance(conn, uid).pipeline_state == "forwarded"


def test_restart_sends_only_what_was_not_confirmed(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    sources = [source_image("PX", rows=100, columns=200, seed=i) for i in range(3)]
    for s in sources:
        analyses.analyses[s.SOPInstanceUID] = analysis_of(s)
        ingest(store, s)
    first = _service(store, analyses, sender, clock, destinations=(PACS,), batch_size=4)
    first.build_pending(store.conn)
    sender.script = ["sent", "sent", "sent", "retry"]
    first.send_due(store.conn, PACS)
    confirmed = set(sender.sent)
    # a new service over the same database (the agent restarted)
    second = _service(store, analyses, sender, clock, destinations=(PACS,), batch_size=100)
    assert second.build_pending(store.conn) == 0  # nothing rebuilt
    clock.now += 60
    sender.sent.clear()
    second.send_due(store.conn, PACS)
    assert len(sender.sent) == 3
    assert not confirmed & set(sender.sent)


def test_missing_analysis_or_unreadable_source_is_recorded_as_failed(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    uid = ingest(store, source_image("PX", rows=100, columns=200))
    service = _service(store, analyses, sender, clock, destinations=(PACS,))
    assert service.build_pending(store.conn) == 1
    row = store.conn.execute("SELECT state, reason FROM results_sources WHERE sop_instance_uid = ?", (uid,)).fetchone()
    assert tuple(row) == ("failed", f"no analysis is recorded for {uid}")
    assert queue.list_objects(store.conn) == []
    assert service.build_pending(store.conn) == 0  # not retried in a loop


def test_backoff_delay() -> None:
    assert [queue.backoff_delay(n, 5, 600) for n in (1, 2, 3, 8, 9, 500)] == [5, 10, 20, 600, 600, 600]


def test_forwarded_only_once_all_objects_are_built_and_confirmed(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=100, columns=200)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    uid = ingest(store, source)
    sr_only = DestinationConfig(ae_title="SRONLY", host="127.0.0.1", port=106, kinds=("sr",))
    service = _service(store, analyses, sender, clock, destinations=(sr_only,))
    conn = store.conn
    sr = service._write(
        build_sr(dcmread(store.data_dir / _instance(conn, uid).path), analyses.analyses[uid], service.uids),
        kinds.spec("sr"), uid, source.StudyInstanceUID,
    )  # fmt: skip
    with transaction(conn):
        queue.enqueue(conn, sr, [sr_only.name], clock())
    service.send_due(conn, sr_only)  # the SR is confirmed before the overlay exists
    assert not queue.source_delivered(conn, uid)
    assert _instance(conn, uid).pipeline_state == "analysed"
    service.build_pending(conn)  # builds (the SR again: same UID, nothing new) and the overlay, nobody takes it
    assert _instance(conn, uid).pipeline_state == "forwarded"  # the SR, the one delivery, is confirmed
    assert len(sender.sent) == 1


def test_recorded_analyses_read_the_pipeline_record(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    findings = analysis_of(source_image("PX", rows=100, columns=200)).findings
    conn.execute(
        "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, backend, "
        "timings_json, findings_json, recorded_at) "
        "VALUES (?, ?, '', 'tiny-test-model', '0.0.1', 0, 'cpu', '{}', ?, '')",
        ("1.2.3", "analysed", json.dumps([f.to_json() for f in findings])),
    )
    conn.execute(
        "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, backend, "
        "timings_json, findings_json, recorded_at) VALUES ('1.2.4', 'skipped', 'colour', 'm', '1', 0, 'cpu', '{}', "
        "'[]', '')"
    )
    analyses = RecordedAnalyses(lambda: (MANIFEST,))
    analysis = analyses.load(conn, "1.2.3")
    assert analysis is not None
    assert (analysis.algorithm.bundle_id, analysis.algorithm.version) == ("tiny-test-model", "0.0.1")
    assert analysis.algorithm.name == "tiny-test-model"
    assert analysis.algorithm.codes["caries"] == MANIFEST.findings.classes[0].code
    assert [f.kind for f in analysis.findings] == [f.kind for f in findings]
    assert analyses.load(conn, "1.2.4") is None  # skipped: nothing to report
    assert analyses.load(conn, "9.9") is None
    conn.close()


def test_without_destinations_results_are_built_and_kept(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=100, columns=200)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    uid = ingest(store, source)
    service = _service(store, analyses, sender, clock, destinations=())
    assert service.build_pending(store.conn) == 1
    assert {s.object.kind for s in queue.list_objects(store.conn)} == {"sr", "overlay"}
    assert _instance(store.conn, uid).pipeline_state == "analysed"  # forwarded means delivered to a PACS
    assert queue.unbuilt_sources(store.conn) == []
    assert service.build_pending(store.conn) == 0


def test_running_service_survives_an_unexpected_error(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.results.service as service_module

    monkeypatch.setattr(service_module, "_ERROR_PAUSE_S", 0.05)

    class FlakySender(FakeSender):
        def send(
            self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
        ) -> list[Outcome]:
            if not self.sent and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("a bug")
            return super().send(destination, items, stopping)

    analyses, sender = FakeAnalyses(), FlakySender()
    source = source_image("PX", rows=100, columns=200)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    uid = ingest(store, source)
    service = _service(store, analyses, sender, Clock(), destinations=(PACS,), poll_interval_s=0.02)
    service.start()
    try:
        wait_until(lambda: _instance(store.conn, uid).pipeline_state == "forwarded", 20, "the service to recover")
    finally:
        service.stop()
    assert len(sender.sent) == 2


def test_an_old_instance_analysed_late_is_built_by_the_full_scan(store: ImageStore) -> None:
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    old, new = (source_image("PX", rows=100, columns=200, seed=s) for s in (1, 2))
    for s in (old, new):
        analyses.analyses[s.SOPInstanceUID] = analysis_of(s)
    old_uid = ingest(store, old, analysed=False)
    time.sleep(0.01)  # a later receipt time
    ingest(store, new)
    service = _service(store, analyses, sender, clock, destinations=(PACS,))
    assert service.build_pending(store.conn) == 1  # the new one; the scan now starts at its receipt time
    with transaction(store.conn):
        set_state(store.conn, old_uid, "processing", expected="received")
    with transaction(store.conn):
        set_state(store.conn, old_uid, "analysed", expected="processing")
    assert service.build_pending(store.conn) == 0  # older than the newest built: left for the full scan
    service._next_full_scan = 0.0  # the minute is up
    assert service.build_pending(store.conn) == 1
    assert queue.unbuilt_sources(store.conn) == []


def test_recorded_analyses_read_the_manifest_again_after_a_model_switch(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    for uid, version in (("1.1", "0.0.1"), ("1.2", "0.0.1"), ("1.3", "0.0.2")):
        conn.execute(
            "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, "
            "backend, timings_json, findings_json, recorded_at) VALUES (?, 'analysed', '', 'tiny-test-model', ?, 0, "
            "'cpu', '{}', '[]', '')",
            (uid, version),
        )
    reads: list[str] = []
    updated = dataclasses.replace(MANIFEST, version="0.0.2")

    def active() -> tuple[Manifest, ...]:
        reads.append("read")
        return (MANIFEST,) if len(reads) == 1 else (updated,)

    analyses = RecordedAnalyses(active)
    for uid in ("1.1", "1.2"):
        assert analyses.load(conn, uid) is not None
    assert len(reads) == 1  # the same model: read once
    analysis = analyses.load(conn, "1.3")
    assert analysis is not None
    assert analysis.algorithm.version == "0.0.2"
    assert len(reads) == 2  # another model: read again
    conn.close()


def test_recorded_analyses_code_each_analysis_from_the_model_that_made_it(tmp_path: Path) -> None:
    """With several bundles active, an analysis gets its codes from its own model's manifest; one from a model no
    longer active is a ResultBuildError naming it, never another model's codes."""
    from edge.errors import ResultBuildError
    from models.bundle import Code

    conn = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(conn)
    for uid, model in (("1.1", "tiny-test-model"), ("1.2", "bitewing-model"), ("1.3", "gone-model")):
        conn.execute(
            "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, "
            "backend, timings_json, findings_json, recorded_at) VALUES (?, 'analysed', '', ?, ?, 0, "
            "'cpu', '{}', '[]', '')",
            (uid, model, MANIFEST.version),
        )
    classes = tuple(
        dataclasses.replace(c, code=Code("99TEST", "999", f"other {c.kind}")) for c in MANIFEST.findings.classes
    )
    other = dataclasses.replace(
        MANIFEST, id="bitewing-model", findings=dataclasses.replace(MANIFEST.findings, classes=classes)
    )
    analyses = RecordedAnalyses(lambda: (MANIFEST, other))
    first, second = analyses.load(conn, "1.1"), analyses.load(conn, "1.2")
    assert first is not None
    assert second is not None
    kind = MANIFEST.findings.classes[0].kind
    assert first.algorithm.codes[kind] == MANIFEST.findings.classes[0].code
    assert second.algorithm.codes[kind] == Code("99TEST", "999", f"other {kind}")
    with pytest.raises(ResultBuildError, match="no active bundle is model 'gone-model'"):
        analyses.load(conn, "1.3")
    conn.close()


@pytest.mark.parametrize("numbering", ["fdi", "fdi+universal"])
def test_the_overlay_names_teeth_as_results_tooth_numbering_says(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch, numbering: str
) -> None:
    import edge.results.overlay as overlay_module
    from edge.results.overlay import build_overlay

    asked: list[str] = []

    def spy(*args: object, numbering: str = "fdi", **kwargs: object) -> object:
        asked.append(numbering)
        return build_overlay(*args, numbering=numbering, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(overlay_module, "build_overlay", spy)  # kinds binds it when the service starts
    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=300, columns=600)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    ingest(store, source)
    service = _service(store, analyses, sender, clock, destinations=(PACS,), tooth_numbering=numbering)
    assert service.build_pending(store.conn) == 1
    assert asked == [numbering]


def test_building_results_yields_to_ingest_and_still_builds(store: ImageStore) -> None:
    """While a batch is arriving the builder waits (at most max_defer_s in a row), then builds; without ingest it
    does not wait at all."""
    from edge.ingest.activity import IngestYield

    analyses, sender, clock = FakeAnalyses(), FakeSender(), Clock()
    source = source_image("PX", rows=300, columns=600)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    ingest(store, source)
    cfg = ResultsConfig(destinations=(PACS,))
    receiving = ResultsService(
        cfg,
        store.data_dir,
        analyses,
        calling_ae="BTT_EDGE",
        sender=sender,
        clock=clock,
        ingest_activity=time.monotonic,  # data arriving all the time: a transfer that never ends
        ingest_yield=IngestYield(quiet_s=0.2, max_defer_s=0.5),
    )
    queue.migrate_results(store.conn)
    started = time.monotonic()
    assert receiving.build_pending(store.conn) == 1
    assert time.monotonic() - started >= 0.5  # it waited max_defer_s before the image ...
    assert {s.object.kind for s in queue.list_objects(store.conn)} == {"sr", "overlay"}  # ... and then built it
