"""The pipeline worker over the real index: FIFO, one transaction per result, retries, crash recovery, the service."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from edge.config import OutboxConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import BundleError
from edge.outbox import Outbox
from edge.pipeline.analyzer import ActiveModel, AnalysisResult, Analyzer
from edge.pipeline.backends.fake import FakeBackend
from edge.pipeline.worker import MAX_ATTEMPTS, PipelineService, PipelineWorker, migrate_pipeline
from edge.receipts.book import ReceiptBook
from edge.results.analysis import RecordedAnalyses
from edge.store.header import InstanceHeader
from edge.store.index import get_instance, record_instance, utc_now
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.conftest import wait_until
from tests.pipeline_helpers import (
    as_intra_oral,
    bitewing_bundle,
    bright_spot_image,
    reference_outputs,
    tiny_bundle,
    write_radiograph,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect(tmp_path / DB_FILENAME)
    migrate_pipeline(c)
    return c


def _receive(conn: sqlite3.Connection, data_dir: Path, n: int, *, modality: str = "PX") -> list[str]:
    """Store ``n`` radiographs as ingest would: file first, then the index row, oldest first."""
    uids = []
    (data_dir / "images").mkdir(exist_ok=True)
    for i in range(n):
        rel = f"images/{modality}-{i}.dcm"
        uid = write_radiograph(data_dir / rel, bright_spot_image(), modality=modality)
        header = InstanceHeader(
            sop_instance_uid=uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality=modality,
        )
        record_instance(
            conn, header, path=rel, size_bytes=1, calling_ae="UNIT", received_at=f"2026-11-24T01:00:{i:02d}.000Z"
        )
        uids.append(uid)
    return uids


def _state(conn: sqlite3.Connection, uid: str) -> tuple[str, str]:
    instance = get_instance(conn, uid)
    assert instance is not None
    return instance.pipeline_state, instance.state_reason


def _analyzer(fake: FakeBackend | None = None) -> Analyzer:
    return Analyzer(tiny_bundle(), fake or FakeBackend(reference_outputs))


def test_instances_are_analysed_first_in_first_out(tmp_path: Path, conn: sqlite3.Connection) -> None:
    uids = _receive(conn, tmp_path, 5)
    analyzer = _analyzer()
    seen: list[str] = []
    analyse = analyzer.analyse

    def recording(ds: Dataset) -> AnalysisResult:
        seen.append(str(ds.SOPInstanceUID))
        return analyse(ds)

    analyzer.analyse = recording  # type: ignore[method-assign]
    worker = PipelineWorker(conn, tmp_path, analyzer, queue_size=2)
    assert worker.step()
    assert len(worker._queue) <= 2  # bounded: never more than queue_size index rows held
    assert worker.drain() == 4
    assert seen == uids
    assert not worker.step()
    for uid in uids:
        assert _state(conn, uid) == ("analysed", "")


def test_result_findings_and_state_are_recorded_together(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    PipelineWorker(conn, tmp_path, _analyzer()).drain()
    row = conn.execute("SELECT * FROM pipeline_results WHERE sop_instance_uid = ?", (uid,)).fetchone()
    assert row["status"] == "analysed"
    assert row["model_id"] == "tiny-test-model"
    assert row["backend"] == "fake"
    assert row["clinical"] == 0
    assert set(json.loads(row["timings_json"])) >= {"infer", "total"}
    kinds = [r[0] for r in conn.execute("SELECT kind FROM pipeline_findings WHERE sop_instance_uid = ?", (uid,))]
    assert kinds == ["caries"]


def test_the_precision_of_the_network_that_ran_is_recorded_and_reaches_the_sr_parameters(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    PipelineWorker(conn, tmp_path, _analyzer(FakeBackend(reference_outputs, "onnxruntime-cpu", "int8"))).drain()
    row = conn.execute("SELECT backend, precision FROM pipeline_results WHERE sop_instance_uid = ?", (uid,)).fetchone()
    assert tuple(row) == ("onnxruntime-cpu", "int8")
    analysis = RecordedAnalyses(lambda: (tiny_bundle().manifest,)).load(conn, uid)
    assert analysis is not None
    assert analysis.algorithm.precision == "int8"


def test_an_image_the_model_cannot_read_is_skipped_with_reason(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1, modality="US")
    PipelineWorker(conn, tmp_path, _analyzer()).drain()
    state, reason = _state(conn, uid)
    assert state == "skipped"
    assert "modality US" in reason


def test_pruned_pixels_are_skipped(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    with transaction(conn):
        conn.execute("UPDATE instances SET pixels_pruned_at = '2026-11-24T02:00:00.000Z'")
    PipelineWorker(conn, tmp_path, _analyzer()).drain()
    assert _state(conn, uid) == ("skipped", "pixel data was removed by retention before analysis")


def test_a_failure_is_retried_once_then_failed_with_its_error(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid, other] = _receive(conn, tmp_path, 2)
    fake = FakeBackend(reference_outputs)
    fake.fail_with = "device lost"
    worker = PipelineWorker(conn, tmp_path, _analyzer(fake))
    worker.drain()
    assert _state(conn, uid) == ("failed", "device lost")
    assert _state(conn, other) == ("failed", "device lost")
    assert fake.calls == 2 * MAX_ATTEMPTS
    assert not worker.step()  # not retried forever
    row = conn.execute("SELECT attempts, last_error FROM pipeline_attempts WHERE sop_instance_uid = ?", (uid,))
    assert tuple(row.fetchone()) == (2, "device lost")


def test_a_single_failure_is_retried_and_succeeds(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    calls = 0

    def flaky(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("transient")
        return reference_outputs(batch)

    PipelineWorker(conn, tmp_path, _analyzer(FakeBackend(flaky))).drain()
    assert _state(conn, uid) == ("analysed", "")


def test_interrupted_work_is_rerun_after_restart_and_failed_after_two(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    worker = PipelineWorker(conn, tmp_path, _analyzer())
    assert worker._claim(uid) is not None  # then the process dies
    restarted = PipelineWorker(conn, tmp_path, _analyzer())
    assert restarted.recover() == 1
    assert _state(conn, uid)[0] == "received"
    assert restarted._claim(uid) is not None  # dies again
    PipelineWorker(conn, tmp_path, _analyzer()).recover()
    state, reason = _state(conn, uid)
    assert state == "failed"
    assert "interrupted" in reason


@pytest.mark.slow
def test_kill_9_mid_analysis_then_restart_analyses_it(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    marker = tmp_path / "inferring"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from edge.db import connect
        from edge.pipeline.analyzer import ActiveModel, Analyzer
        from edge.pipeline.backends.fake import FakeBackend
        from edge.pipeline.worker import PipelineWorker
        from tests.pipeline_helpers import tiny_bundle

        def hang(batch):
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)

        data = Path({str(tmp_path)!r})
        PipelineWorker(connect(data / "edge.db"), data, Analyzer(tiny_bundle(), FakeBackend(hang))).drain()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "worker exited early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert _state(conn, uid)[0] == "processing"
    worker = PipelineWorker(conn, tmp_path, _analyzer())
    assert worker.recover() == 1
    worker.drain()
    assert _state(conn, uid) == ("analysed", "")


def test_analysis_use_is_recorded_in_the_receipt_book(tmp_path: Path, conn: sqlite3.Connection) -> None:
    book = ReceiptBook(None)  # no identity yet: the use is parked in the same transaction
    book.migrate(conn)
    _receive(conn, tmp_path, 1)
    PipelineWorker(conn, tmp_path, _analyzer(), book=book).drain()
    assert conn.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0] == 1


def test_service_analyses_in_the_background_and_stops(
    tmp_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    service = PipelineService(tmp_path, _analyzer, poll_interval_s=30)
    caplog.set_level(logging.INFO, logger="edge.pipeline")
    service.start()
    try:
        assert service.ready.wait(30)
        [active] = [r for r in caplog.records if r.getMessage() == "model active"]  # what it routes to, logged
        assert "'model': 'tiny-test-model'" in str(vars(active))
        assert "'accepts': 'panoramic PX/DX, MONOCHROME1/MONOCHROME2, 16-4096 rows" in str(vars(active))
        [uid] = _receive(conn, tmp_path, 1)
        service.notify()
        wait_until(lambda: _state(conn, uid)[0] == "analysed", 30, "the notified instance analysed")
    finally:
        service.stop()


def test_service_without_a_model_stays_idle(tmp_path: Path, conn: sqlite3.Connection) -> None:
    def no_model() -> Analyzer:
        raise BundleError("bundle /x: no such directory or archive")

    [uid] = _receive(conn, tmp_path, 1)
    service = PipelineService(tmp_path, no_model, poll_interval_s=0.05)
    service.start()
    time.sleep(0.3)
    service.stop()
    assert not service.ready.is_set()
    assert _state(conn, uid)[0] == "received"


def test_a_file_that_is_not_the_indexed_instance_fails(tmp_path: Path, conn: sqlite3.Connection) -> None:
    [uid] = _receive(conn, tmp_path, 1)
    write_radiograph(tmp_path / "images" / "PX-0.dcm", bright_spot_image())  # another instance in its place
    PipelineWorker(conn, tmp_path, _analyzer()).drain()
    state, reason = _state(conn, uid)
    assert state == "failed"
    assert "holds SOP Instance UID" in reason
    assert conn.execute("SELECT COUNT(*) FROM pipeline_results").fetchone()[0] == 0


def test_results_summary_goes_to_the_outbox_without_identifiers(tmp_path: Path, conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    outbox.migrate(conn)
    [uid] = _receive(conn, tmp_path, 1)
    PipelineWorker(conn, tmp_path, _analyzer(), outbox=outbox).drain()
    [item] = Outbox.pending(conn, 10)
    assert item.kind == "results"
    body = json.loads(item.body)
    assert body["findings"] == {"caries": 1}
    assert body["status"] == "analysed"
    assert uid not in json.dumps(body)
    assert "1.2.3" not in json.dumps(body)


class _Gate:
    def __init__(self, replacement: Analyzer) -> None:
        self.replacement: Analyzer | None = replacement
        self.outcomes: list[tuple[bool, str]] = []
        self.idle_calls = 0

    def idle(self, current: Analyzer) -> Analyzer | None:
        self.idle_calls += 1
        update, self.replacement = self.replacement, None
        return update

    def outcome(self, ok: bool, error: str) -> None:
        self.outcomes.append((ok, error))


def test_model_gate_swaps_the_analyzer_when_idle_and_sees_outcomes(tmp_path: Path, conn: sqlite3.Connection) -> None:
    first = FakeBackend(reference_outputs, name="first")
    second = FakeBackend(reference_outputs, name="second")
    gate = _Gate(_analyzer(second))
    service = PipelineService(tmp_path, lambda: _analyzer(first), poll_interval_s=30, model_gate=gate)
    service.start()
    try:
        assert service.ready.wait(30)
        wait_until(lambda: gate.idle_calls >= 2, 30, "the worker asking the gate twice")
        assert first.closed
        [uid] = _receive(conn, tmp_path, 1)
        service.notify()
        wait_until(lambda: _state(conn, uid)[0] == "analysed", 30, "the instance analysed by the new model")
    finally:
        service.stop()
    assert second.calls == 1
    assert first.calls == 0
    assert gate.outcomes == [(True, "")]
    assert second.closed


def test_analysis_waits_its_turn_on_the_image_lock(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """The results builder holds the lock while it draws an overlay: the pipeline waits, then analyses."""
    (uid,) = _receive(conn, tmp_path, 1)
    lock = threading.Lock()
    worker = PipelineWorker(conn, tmp_path, _analyzer(), image_lock=lock)
    with lock:
        runner = threading.Thread(target=worker.drain, daemon=True)
        runner.start()
        runner.join(0.5)
        assert runner.is_alive()  # blocked on the lock, nothing recorded yet
        assert _state(conn, uid)[0] != "analysed"
    runner.join(10)
    assert not runner.is_alive()
    assert _state(conn, uid)[0] == "analysed"


def _store(conn: sqlite3.Connection, data_dir: Path, ds: Dataset, name: str) -> str:
    """Store ``ds`` as ingest would (the file, then its index row) and return its SOP Instance UID."""
    (data_dir / "images").mkdir(exist_ok=True)
    ds.save_as(data_dir / "images" / name, enforce_file_format=True)
    header = InstanceHeader(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=str(ds.Modality),
    )
    record_instance(conn, header, path=f"images/{name}", size_bytes=1, calling_ae="UNIT", received_at=utc_now())
    return str(ds.SOPInstanceUID)


def test_two_active_bundles_each_image_recorded_with_the_model_that_ran_or_skipped(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """A panoramic and an intra-oral bitewing model active together: each image is recorded with the model that
    ran it; one neither accepts (a periapical) is skipped with the reason, names no model, has no findings, and no
    use is recorded for it."""
    book = ReceiptBook(None)
    book.migrate(conn)
    [pano] = _receive(conn, tmp_path, 1)
    generated = synthetic_dataset(generate(91), 91)
    bitewing = _store(conn, tmp_path, as_intra_oral(copy.deepcopy(generated), "bitewing"), "bw.dcm")
    periapical = as_intra_oral(copy.deepcopy(generated), "periapical")
    periapical.SOPInstanceUID = periapical.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.91")
    periapical_uid = _store(conn, tmp_path, periapical, "pa.dcm")
    analyzer = Analyzer(
        tiny_bundle(),
        FakeBackend(reference_outputs),
        others=(ActiveModel(bitewing_bundle(), FakeBackend(reference_outputs, "fake-io")),),
    )
    assert PipelineWorker(conn, tmp_path, analyzer, book=book).drain() == 3
    rows = {
        r["sop_instance_uid"]: r
        for r in conn.execute("SELECT sop_instance_uid, status, reason, model_id, backend FROM pipeline_results")
    }
    assert (rows[pano]["status"], rows[pano]["model_id"], rows[pano]["backend"]) == (
        "analysed",
        "tiny-test-model",
        "fake",
    )
    assert (rows[bitewing]["status"], rows[bitewing]["model_id"]) == ("analysed", "tiny-bitewing-model")
    skipped = rows[periapical_uid]
    assert (skipped["status"], skipped["model_id"], skipped["backend"]) == ("skipped", "", "")
    state, reason = _state(conn, periapical_uid)
    assert state == "skipped"
    assert reason == skipped["reason"]
    assert reason.startswith("no model for intra-oral periapicals; active: tiny-test-model (panoramic PX/DX), ")
    count = "SELECT COUNT(*) FROM pipeline_findings WHERE sop_instance_uid = ?"
    assert conn.execute(count, (periapical_uid,)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0] == 2  # the two analyses only
