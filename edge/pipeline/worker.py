"""The pipeline worker: analyses received instances from the index, first in, first out, and records the results.

Each instance goes ``received -> processing -> analysed | skipped`` (or back to ``received`` after a failure, and
to ``failed`` after :data:`MAX_ATTEMPTS`). The analyser routes it to the active bundle that accepts it; one that no
bundle accepts is ``skipped`` with the reason (kept as the instance's ``state_reason`` and in ``pipeline_results``,
with no model named), gets no findings and no receipt, and the results service builds and sends nothing for it.
Claiming an instance counts an attempt in the same transaction, and the result (findings, timings, the receipt for
the use) commits in one transaction with the state change, so:

* a crash mid-analysis leaves the instance in ``processing``; on restart :meth:`PipelineWorker.recover` puts it
  back to ``received`` (or, if that was its last attempt, marks it ``failed``) and it is analysed again;
* an instance that fails twice is ``failed`` with its error and not retried again.

With an outbox, the same transaction queues a ``results`` summary for the relay (model, status, counts of findings
by kind, timings; never an identifier). A :class:`ModelGate` (OTA) may swap the analyser while nothing is in
flight and is told how each instance went.

Work is taken from the index in receipt order into a bounded in-memory queue (``queue_size``), so a burst of
images never loads more than that many index rows at once.

Analysis yields to ingest (:class:`IngestYield`): while the SCP is receiving (data arrived on an open association
within ``ingest_quiet_s``) the service waits before it starts the next image, so the unit's batch is stored at the
rate of the disk rather than sharing the CPU and the GIL with decoding and inference; it waits at most
``max_defer_s`` in a row, then analyses one image and waits again, so a long transfer never starves analysis. An
association that is closed, or open but quiet (a unit holding it between exposures), does not hold analysis back.
Tables (component ``pipeline``)::

    pipeline_attempts  sop_instance_uid PK, attempts INTEGER, last_error, updated_at
    pipeline_results   sop_instance_uid PK, status, reason, model_id, model_version, clinical INTEGER, backend,
                       precision, timings_json, findings_json, recorded_at, image_view (the view it was routed
                       as), teeth_json (a JSON list of the FDI numbers the model numbered; NULL: not known, as
                       for every row recorded before the column)
    pipeline_findings  id INTEGER PK, sop_instance_uid, kind, tooth_fdi, confidence REAL, x0, y0, x1, y1 INTEGER,
                       finding_json
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edge.background import BackgroundLoop
from edge.db import DB_FILENAME, connect, migrate, transaction
from edge.errors import EdgeError, ModelError, PipelineError, StateConflict, UnsupportedImage
from edge.ingest.activity import RECHECK_S, IngestYield
from edge.outbox import Outbox
from edge.pipeline.analyzer import AnalysisResult, Analyzer, read_dataset
from edge.pipeline.memory import release_large_buffers
from edge.receipts.book import ReceiptBook
from edge.store.index import (
    Instance,
    get_instance,
    instance_path,
    instances_in_state,
    migrate_index,
    set_state,
    utc_now,
)
from models.bundle import accepts_of, describe_accepts
from protocol.receipts import Use
from runtime.logs import event

__all__ = ["MAX_ATTEMPTS", "ModelGate", "PipelineService", "PipelineWorker", "migrate_pipeline"]

log = logging.getLogger("edge.pipeline")

MAX_ATTEMPTS = 2
"""Analysis attempts (including ones a crash interrupted) before an instance is marked ``failed``."""

_MIGRATIONS = [
    """
    CREATE TABLE pipeline_attempts (
        sop_instance_uid TEXT PRIMARY KEY,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL
    );
    CREATE TABLE pipeline_results (
        sop_instance_uid TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        model_id TEXT NOT NULL,
        model_version TEXT NOT NULL,
        clinical INTEGER NOT NULL,
        backend TEXT NOT NULL,
        timings_json TEXT NOT NULL,
        findings_json TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    );
    CREATE TABLE pipeline_findings (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL REFERENCES pipeline_results (sop_instance_uid) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        tooth_fdi TEXT,
        confidence REAL NOT NULL,
        x0 INTEGER NOT NULL,
        y0 INTEGER NOT NULL,
        x1 INTEGER NOT NULL,
        y1 INTEGER NOT NULL,
        finding_json TEXT NOT NULL
    );
    CREATE INDEX pipeline_findings_by_instance ON pipeline_findings (sop_instance_uid)
    """,
    # the precision of the network that ran (a bundle's INT8 variant, say); rows from before were all fp32
    "ALTER TABLE pipeline_results ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32'",
    # the view the image was routed as and the teeth the model numbered on it (a draft plan's missing teeth);
    # rows from before say neither (NULL: not assessed)
    """
    ALTER TABLE pipeline_results ADD COLUMN image_view TEXT;
    ALTER TABLE pipeline_results ADD COLUMN teeth_json TEXT
    """,
]


def migrate_pipeline(conn: sqlite3.Connection) -> None:
    """Create or upgrade the pipeline's tables (and the index they refer to)."""
    migrate_index(conn)
    migrate(conn, "pipeline", _MIGRATIONS)


class ModelGate(Protocol):
    """Lets a model update (OTA) swap the analyser only while nothing is being analysed, and see how it does."""

    def idle(self, current: Analyzer) -> Analyzer | None:
        """Called from the worker thread when no instance is in flight; a new analyser replaces ``current``."""
        ...

    def outcome(self, ok: bool, error: str) -> None:
        """Called after each instance: ``ok`` when its result was recorded, else the error it failed with."""
        ...


class PipelineWorker:
    """Takes received instances in order and analyses them; one thread calls :meth:`step` or :meth:`drain`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        data_dir: Path,
        analyzer: Analyzer,
        *,
        queue_size: int = 8,
        book: ReceiptBook | None = None,
        outbox: Outbox | None = None,
        on_outcome: Callable[[bool, str], None] | None = None,
        image_lock: threading.Lock | None = None,
    ) -> None:
        self._conn = conn
        self._image_lock = image_lock or threading.Lock()
        """Held while an image is decoded and analysed (shared with the results builder; see ``build_agent``)."""
        self._data_dir = data_dir
        self.analyzer = analyzer
        """Replaceable between instances (a model update)."""
        self._queue_size = queue_size
        self._queue: collections.deque[str] = collections.deque()
        self._book = book
        self._outbox = outbox
        self._on_outcome = on_outcome

    def recover(self) -> int:
        """Re-queue instances a crash left in ``processing`` (``failed`` if that was their last attempt)."""
        recovered = 0
        while batch := instances_in_state(self._conn, "processing", limit=100):
            for instance in batch:
                with transaction(self._conn):
                    attempts = self._attempts(instance.sop_instance_uid)
                    if attempts >= MAX_ATTEMPTS:
                        error = "analysis was interrupted (crash or power loss) on every attempt"
                        self._note_error(instance.sop_instance_uid, error)
                        set_state(self._conn, instance.sop_instance_uid, "failed", expected="processing", reason=error)
                        event(log, "analysis failed", level=logging.ERROR, sop=instance.sop_instance_uid, error=error)
                    else:
                        set_state(self._conn, instance.sop_instance_uid, "received", expected="processing")
                        event(log, "analysis re-queued after restart", sop=instance.sop_instance_uid)
                recovered += 1
        return recovered

    def _refill(self) -> None:
        if not self._queue:
            self._queue.extend(
                i.sop_instance_uid for i in instances_in_state(self._conn, "received", limit=self._queue_size)
            )

    def pending(self) -> bool:
        """Whether a received instance is waiting (it may still be claimed by someone else first)."""
        self._refill()
        return bool(self._queue)

    def step(self) -> bool:
        """Analyse the oldest received instance; False when there was none."""
        self._refill()
        while self._queue:
            uid = self._queue.popleft()
            instance = self._claim(uid)
            if instance is not None:
                self._process(instance)
                return True
            self._refill()
        return False

    def drain(self, stop: Callable[[], bool] = lambda: False) -> int:
        """Analyse until no instance is received (or ``stop()`` is true); return how many were processed."""
        done = 0
        while not stop() and self.step():
            done += 1
        return done

    def _attempts(self, uid: str) -> int:
        row = self._conn.execute("SELECT attempts FROM pipeline_attempts WHERE sop_instance_uid = ?", (uid,)).fetchone()
        return 0 if row is None else int(row[0])

    def _note_error(self, uid: str, error: str) -> None:
        self._conn.execute(
            "UPDATE pipeline_attempts SET last_error = ?, updated_at = ? WHERE sop_instance_uid = ?",
            (error, utc_now(), uid),
        )

    def _claim(self, uid: str) -> Instance | None:
        """Move ``uid`` to ``processing`` and count the attempt; None if it is no longer waiting."""
        try:
            with transaction(self._conn):
                set_state(self._conn, uid, "processing", expected="received")
                self._conn.execute(
                    "INSERT INTO pipeline_attempts (sop_instance_uid, attempts, updated_at) VALUES (?, 1, ?) "
                    "ON CONFLICT (sop_instance_uid) DO UPDATE SET attempts = attempts + 1, "
                    "updated_at = excluded.updated_at",
                    (uid, utc_now()),
                )
        except StateConflict:
            return None
        return get_instance(self._conn, uid)

    def _process(self, instance: Instance) -> None:
        uid = instance.sop_instance_uid
        try:
            self._record(instance, self._analyse(instance))
        except Exception as exc:  # any failure counts as an attempt; an unexpected one is logged with its trace
            if not isinstance(exc, (EdgeError, ModelError)):
                log.exception("unexpected error analysing %s", uid)
            error = str(exc) if isinstance(exc, (EdgeError, ModelError)) else f"{type(exc).__name__}: {exc}"
            self._fail(uid, error)
            if self._on_outcome is not None:
                self._on_outcome(False, error)
            return
        if self._on_outcome is not None:
            self._on_outcome(True, "")

    def _analyse(self, instance: Instance) -> AnalysisResult:
        uid = instance.sop_instance_uid
        if instance.pixels_pruned_at is not None:
            return self.analyzer.skipped(uid, "pixel data was removed by retention before analysis")
        with self._image_lock:
            try:
                ds = read_dataset(instance_path(self._data_dir, instance))
            except UnsupportedImage as exc:
                return self.analyzer.skipped(uid, str(exc))
            result = self.analyzer.analyse(ds)
        if result.sop_instance_uid != uid:
            raise PipelineError(f"the file of {uid} holds SOP Instance UID {result.sop_instance_uid}")
        return result

    def _fail(self, uid: str, error: str) -> None:
        with transaction(self._conn):
            self._note_error(uid, error)
            if self._attempts(uid) >= MAX_ATTEMPTS:
                set_state(self._conn, uid, "failed", expected="processing", reason=error)
                event(log, "analysis failed", level=logging.ERROR, sop=uid, error=error)
            else:
                set_state(self._conn, uid, "received", expected="processing", reason=error)
                event(log, "analysis failed; will retry", level=logging.WARNING, sop=uid, error=error)

    def _record(self, instance: Instance, result: AnalysisResult) -> None:
        uid = instance.sop_instance_uid
        findings_json = json.dumps([f.to_json() for f in result.findings], sort_keys=True)
        with transaction(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, "
                "clinical, backend, precision, timings_json, findings_json, recorded_at, image_view, teeth_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    result.status,
                    result.reason or "",
                    result.model_id,
                    result.model_version,
                    int(result.clinical),
                    result.backend,
                    result.precision,
                    json.dumps(result.timings_ms, sort_keys=True),
                    findings_json,
                    utc_now(),
                    result.view,
                    None if result.teeth_fdi is None else json.dumps(list(result.teeth_fdi)),
                ),
            )
            self._conn.execute("DELETE FROM pipeline_findings WHERE sop_instance_uid = ?", (uid,))
            self._conn.executemany(
                "INSERT INTO pipeline_findings (sop_instance_uid, kind, tooth_fdi, confidence, x0, y0, x1, y1, "
                "finding_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (uid, f.kind, f.tooth_fdi, f.confidence, *f.bbox, json.dumps(f.to_json(), sort_keys=True))
                    for f in result.findings
                ],
            )
            set_state(self._conn, uid, result.status, expected="processing", reason=result.reason or "")
            if self._outbox is not None:
                self._outbox.enqueue(self._conn, "results", _summary(result))
            if self._book is not None and result.status == "analysed":
                self._book.record(
                    self._conn,
                    Use(
                        kind="analysis",
                        bundle_id=result.model_id,
                        bundle_version=result.model_version,
                        output_digest="sha256:" + hashlib.sha256(findings_json.encode()).hexdigest(),
                        study_uid=instance.study_uid,
                    ),
                )
        event(
            log,
            "instance " + result.status,
            sop=uid,
            findings=len(result.findings),
            reason=result.reason or "",
            total_ms=round(result.timings_ms.get("total", 0.0), 1),
        )


def _summary(result: AnalysisResult) -> dict[str, object]:
    """What the relay may see of a result: counts and timings only, never an identifier or header value."""
    return {
        "model_id": result.model_id,
        "model_version": result.model_version,
        "status": result.status,
        "backend": result.backend,
        "precision": result.precision,
        "findings": dict(collections.Counter(f.kind for f in result.findings)),
        "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
    }


def _log_models(analyzer: Analyzer) -> None:
    """Say which models are active and what each accepts (a technician reading the log sees why images skip)."""
    for model in analyzer.models:
        manifest = model.bundle.manifest
        event(
            log,
            "model active",
            model=manifest.id,
            version=manifest.version,
            backend=model.backend.name,
            accepts=describe_accepts(accepts_of(manifest)),
        )


class PipelineService(BackgroundLoop):
    """The worker on its own thread: loads the bundle and backend, recovers, then analyses as instances arrive.

    A bundle or backend that cannot be loaded is logged and leaves the pipeline idle (instances stay
    ``received``); it never stops the agent, so ingest keeps serving the unit.
    """

    name = "pipeline"

    def __init__(
        self,
        data_dir: Path,
        load_analyzer: Callable[[], Analyzer],
        *,
        queue_size: int = 8,
        poll_interval_s: float = 2.0,
        book: ReceiptBook | None = None,
        outbox: Outbox | None = None,
        model_gate: ModelGate | None = None,
        image_lock: threading.Lock | None = None,
        ingest_activity: Callable[[], float | None] | None = None,
        ingest_yield: IngestYield | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._ingest_activity = ingest_activity
        """When data last arrived on an open association (``time.monotonic()``), None while none is open."""
        self._yield = ingest_yield or IngestYield(quiet_s=0.0, max_defer_s=0.0)
        self._load_analyzer = load_analyzer
        self._image_lock = image_lock
        self._queue_size = queue_size
        self._poll = poll_interval_s
        self._book = book
        self._outbox = outbox
        self._gate = model_gate
        super().__init__()
        self.ready = threading.Event()
        """Set once the worker has its analyser and has recovered interrupted work."""

    def start(self) -> None:
        release_large_buffers()
        super().start()

    def _run(self) -> None:
        conn = connect(self._data_dir / DB_FILENAME)
        try:
            migrate_pipeline(conn)
            try:
                analyzer = self._load_analyzer()
            except (EdgeError, ModelError) as exc:
                event(log, "pipeline idle: no model", level=logging.ERROR, error=str(exc))
                return
            worker = PipelineWorker(
                conn,
                self._data_dir,
                analyzer,
                queue_size=self._queue_size,
                book=self._book,
                outbox=self._outbox,
                on_outcome=None if self._gate is None else self._gate.outcome,
                image_lock=self._image_lock,
            )
            _log_models(analyzer)
            worker.recover()
            self.ready.set()
            while not self._stop.is_set():
                self._drain(worker)
                if self._gate is not None and (update := self._gate.idle(worker.analyzer)) is not None:
                    worker.analyzer.close()
                    worker.analyzer = update
                    _log_models(update)
                    continue
                self._wake.wait(self._poll)
                self._wake.clear()
            worker.analyzer.close()
        except Exception:
            log.exception("pipeline worker stopped by an unexpected error")
        finally:
            conn.close()

    def _drain(self, worker: PipelineWorker) -> None:
        """Analyse until nothing is received, yielding to ingest before each image (or until stopped)."""
        while not self._stop.is_set() and worker.pending():
            if self._yield_to_ingest():
                worker.step()

    def _yield_to_ingest(self) -> bool:
        """Wait while :class:`IngestYield` says so; False when the service is stopping meanwhile."""
        if self._ingest_activity is None:
            return True

        def sleep(seconds: float) -> bool:
            # an association that closes (the unit sent one image) wakes this wait (the SCP's close listener)
            self._wake.clear()
            self._wake.wait(min(seconds, RECHECK_S))
            return self._stop.is_set()

        return self._yield.pause(self._ingest_activity, sleep, what="analysis")
