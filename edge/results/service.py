"""The results service: analysed instances -> SR and overlay on disk -> delivery queue -> the clinic's PACS.

One builder thread turns every instance the pipeline marked ``analysed`` into its result objects, in the order of
:mod:`edge.results.kinds`: first the SR (from the header alone), then the presentation state (when a destination
takes it), then the FHIR Bundle (when a FHIR destination takes it: it names the SR), then the overlay. Each is
written durably (:mod:`runtime.durable`) under ``<data_dir>/results/<study uid>/<sop uid>.dcm`` (a Bundle:
``<bundle uid>.json``) and then, in one transaction, recorded with a pending delivery to
every destination that takes its kind (the last one's transaction also records that the instance is done), and
the senders are woken. When a destination takes
``original`` images, every received instance is queued too (its stored file, as received). One sender thread per
destination sends what is due (SR first), records each answer in its own transaction and, when every result
object of an instance is confirmed everywhere, moves the instance ``analysed -> forwarded``. An unreachable
destination holds up nobody but itself.

The findings come from an :class:`AnalysisSource` (the pipeline's record of each analysis).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from edge.config import DestinationConfig, ResultsConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import ResultBuildError, StateConflict
from edge.ingest.activity import RECHECK_S, IngestYield
from edge.results import kinds, queue
from edge.results.analysis import Analysis
from edge.results.header import DEFAULT_EQUIPMENT, Equipment, with_empty_type2_identifiers
from edge.results.kinds import Builder, Document, ResultKind, ResultKindSpec
from edge.results.queue import ResultObject
from edge.results.scu import Outcome, Outgoing, Sender
from edge.results.senders import sender_for
from edge.results.uids import UidFactory
from edge.store.index import get_instance, migrate_index, set_state
from runtime.durable import atomic_write_bytes, remove_stale_temps
from runtime.logs import event

__all__ = ["RESULTS_DIR", "AnalysisSource", "ResultsService"]

log = logging.getLogger("edge.results")

RESULTS_DIR = "results"


_ERROR_PAUSE_S = 5.0
"""After an unexpected error in a loop (a failing database), the loop waits this long and tries again."""
_FULL_SCAN_S = 60.0
"""How often the whole set of analysed instances is checked (otherwise only those received since the newest built)."""
_ORIGINALS_SCAN_S = 1.0
"""Received instances are checked for originals to forward at most this often (the check scans the index)."""
_SUFFIXES = {"application/fhir+json": "json"}
"""The file name suffix of each media type of a :class:`Document` kind."""


class AnalysisSource(Protocol):
    """Where the findings of an analysed instance are read from."""

    def load(self, conn: sqlite3.Connection, sop_instance_uid: str) -> Analysis | None:
        """The analysis of this instance, or ``None`` if none is recorded."""
        ...


def _file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ResultsService:
    """Builds, queues and delivers result objects (a :class:`~edge.agent.Service`)."""

    name = "results"

    @property
    def equipment(self) -> Equipment:
        """This box as it is now (see ``equipment`` of :meth:`__init__`)."""
        return self._equipment() if callable(self._equipment) else self._equipment

    def __init__(
        self,
        config: ResultsConfig,
        data_dir: Path,
        analyses: AnalysisSource,
        *,
        calling_ae: str,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        image_lock: threading.Lock | None = None,
        equipment: Equipment | Callable[[], Equipment] = DEFAULT_EQUIPMENT,
        ingest_activity: Callable[[], float | None] | None = None,
        ingest_yield: IngestYield | None = None,
    ) -> None:
        self.config = config
        self._ingest_activity = ingest_activity
        """When data last arrived on an open association (the SCP's ``receiving_at``); building yields to ingest."""
        self._yield = ingest_yield or IngestYield(quiet_s=0.0, max_defer_s=0.0)
        self._builders: dict[ResultKind, Builder] = {k.name: k.bind(config) for k in kinds.BUILT if k.bind}
        """The builders with this box's options (the overlay's tooth numbering), in build order."""
        self._equipment = equipment
        """This box, as the General Equipment of every object (its serial number, the device id, when it has one);
        a function when the box may be given its identity while it runs (``btt-edge provision``)."""
        self._image_lock = image_lock or threading.Lock()
        """Held while a source image's pixels are read and drawn on (shared with the pipeline; see ``build_agent``)."""
        self.data_dir = data_dir
        self.analyses = analyses
        self.destinations: tuple[DestinationConfig, ...] = config.all_destinations()
        self._senders: dict[str, Sender] = {
            protocol: sender or sender_for(protocol, config, calling_ae)
            for protocol in dict.fromkeys(d.protocol for d in self.destinations)
        }
        """One sender per protocol the destinations use (``sender``, when given, for all of them: tests)."""
        self.uids = UidFactory(config.org_root)
        self.clock = clock
        self._stop = threading.Event()
        self._wakes = {d.name: threading.Event() for d in self.destinations}
        self._next_originals_scan = 0.0
        self._since = ""
        """Receipt time of the newest instance whose results were built: the scan for new ones starts there."""
        self._next_full_scan = 0.0
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return connect(self.data_dir / DB_FILENAME)

    def start(self) -> None:
        """Create the tables, clear what a crash left half-written, start the builder and one sender per destination."""
        conn = self._connect()
        try:
            migrate_index(conn)
            queue.migrate_results(conn)
        finally:
            conn.close()
        # a crash mid-write leaves a temp file; the object itself is rebuilt (same UID, same path)
        remove_stale_temps(self.data_dir / RESULTS_DIR)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._build_loop, name="results-build", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, args=(d,), name=f"results-send-{d.name}", daemon=True)
            for d in self.destinations
        ]
        for thread in self._threads:
            thread.start()
        event(log, "results ready", destinations=",".join(d.name for d in self.destinations) or "(none)")

    def stop(self) -> None:
        """Stop the threads after the object or batch each is working on."""
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join()
        self._threads = []

    # --- building --------------------------------------------------------------------------------------------

    def _targets(self, kind: ResultKind) -> list[str]:
        return [d.name for d in self.destinations if kind in d.kinds]

    def _build_loop(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.is_set():
                try:
                    worked = self.build_pending(conn)
                except Exception:  # the database busy or failing: log, wait, go on (the loop must not die)
                    log.exception("results: building failed; retrying in %s s", _ERROR_PAUSE_S)
                    self._stop.wait(_ERROR_PAUSE_S)
                    continue
                if not worked:
                    self._stop.wait(self.config.poll_interval_s)
        finally:
            conn.close()

    def build_pending(self, conn: sqlite3.Connection) -> int:
        """Queue new originals and build the results of newly analysed instances; returns how many were handled."""
        handled = 0
        if self._targets("original") and time.monotonic() >= self._next_originals_scan:
            self._next_originals_scan = time.monotonic() + _ORIGINALS_SCAN_S
            for uid in queue.unqueued_originals(conn):
                self._queue_original(conn, uid)
                handled += 1
        since = self._since
        if time.monotonic() >= self._next_full_scan:  # an old instance analysed late (a retry) is found here
            since, self._next_full_scan = "", time.monotonic() + _FULL_SCAN_S
        for uid, received_at in queue.unbuilt_sources(conn, since=since):
            if self._stop.is_set() or not self._yield_to_ingest():
                break
            self.build(conn, uid)
            self._since = max(self._since, received_at)
            handled += 1
        if handled:
            self.wake()
        return handled

    def _yield_to_ingest(self) -> bool:
        """Wait while a batch is arriving (drawing an overlay competes with receiving for the cores and the GIL);
        False when stopping meanwhile."""
        if self._ingest_activity is None:
            return True
        return self._yield.pause(
            self._ingest_activity, lambda seconds: self._stop.wait(min(seconds, RECHECK_S)), what="result building"
        )

    def _queue_original(self, conn: sqlite3.Connection, uid: str) -> None:
        instance = get_instance(conn, uid)
        if instance is None:
            return
        obj = ResultObject(
            object_uid=uid,
            source_sop_uid=uid,
            study_uid=instance.study_uid,
            kind="original",
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            path=instance.path,
            size_bytes=instance.size_bytes,
            sha256="",  # the store's file, as received; not read here (a CBCT volume is large)
        )
        with transaction(conn):
            queue.enqueue(conn, obj, self._targets("original"), self.clock())

    def build(self, conn: sqlite3.Connection, uid: str) -> list[ResultObject]:
        """Build, write and queue the result objects of one analysed instance (a failure is recorded, not raised).

        The SR is built from the header alone and queued (and its senders woken) before the overlay is drawn, so
        the report does not wait for the picture. Rebuilding after a crash in between gives the same UIDs, and
        queueing an object twice adds nothing.
        """
        started = time.perf_counter()
        objects: list[ResultObject] = []
        try:
            instance = get_instance(conn, uid)
            if instance is None:
                raise ResultBuildError(f"instance {uid} is not indexed")
            analysis = self.analyses.load(conn, uid)
            if analysis is None:
                raise ResultBuildError(f"no analysis is recorded for {uid}")
            todo = [k for k in kinds.BUILT if not k.on_demand or self._targets(k.name)]
            for spec in todo:
                kind = spec.name
                with self._image_lock if spec.reads_pixels else contextlib.nullcontext():
                    source = self._read(instance.path, pixels=spec.reads_pixels)
                    built = self._builders[kind](source, analysis, self.uids, equipment=self.equipment)
                    del source
                obj = self._write(built, spec, uid, instance.study_uid)
                with transaction(conn):
                    queue.enqueue(conn, obj, self._targets(kind), self.clock())
                    if spec is todo[-1]:
                        queue.mark_source(conn, uid, "built")
                        if queue.source_delivered(conn, uid):  # the SR was confirmed while the overlay was drawn
                            self._forwarded(conn, uid)
                self.wake()
                objects.append(obj)
        except ResultBuildError as exc:
            self._fail(conn, uid, str(exc))
            return objects
        except Exception as exc:  # a bug must not wedge the queue: record it and go on
            log.exception("building results for %s failed", uid)
            self._fail(conn, uid, f"unexpected error: {exc!r}")
            return objects
        event(log, "results built", sop=uid, objects=len(objects), ms=round((time.perf_counter() - started) * 1000))
        return objects

    def _fail(self, conn: sqlite3.Connection, uid: str, reason: str) -> None:
        event(log, "results not built", level=logging.ERROR, sop=uid, reason=reason)
        with transaction(conn):
            queue.mark_source(conn, uid, "failed", reason)

    def _read(self, relative: str, *, pixels: bool) -> Dataset:
        try:
            source = dcmread(self.data_dir / relative, stop_before_pixels=not pixels)
        except (OSError, InvalidDicomError) as exc:
            raise ResultBuildError(f"cannot read the source image {relative}: {exc}") from exc
        return with_empty_type2_identifiers(source)

    def _write(self, built: Dataset | Document, spec: ResultKindSpec, source_uid: str, study_uid: str) -> ResultObject:
        """Write ``built`` durably under ``results/`` and describe it for the queue. A :class:`Document` (not DICOM)
        has no SOP class or transfer syntax: both columns are empty, and its kind says its media type."""
        if isinstance(built, Dataset):
            uid, data, suffix = str(built.SOPInstanceUID), _file_bytes(built), "dcm"
            sop_class, syntax = str(built.SOPClassUID), str(built.file_meta.TransferSyntaxUID)
        else:
            uid, data, suffix, sop_class, syntax = built.uid, built.content, _SUFFIXES[spec.media_type], "", ""
        relative = f"{RESULTS_DIR}/{study_uid}/{uid}.{suffix}"
        atomic_write_bytes(self.data_dir / relative, data)
        return ResultObject(
            object_uid=uid,
            source_sop_uid=source_uid,
            study_uid=study_uid,
            kind=spec.name,
            sop_class_uid=sop_class,
            transfer_syntax_uid=syntax,
            path=relative,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    # --- sending ---------------------------------------------------------------------------------------------

    def _send_loop(self, destination: DestinationConfig) -> None:
        conn = self._connect()
        wake = self._wakes[destination.name]
        try:
            while not self._stop.is_set():
                try:
                    sent = self.send_due(conn, destination)
                except Exception:  # the database busy or failing: log, wait, go on (the loop must not die)
                    log.exception("results: sending to %s failed; retrying in %s s", destination.name, _ERROR_PAUSE_S)
                    self._stop.wait(_ERROR_PAUSE_S)
                    continue
                if not sent:
                    wake.wait(self.config.poll_interval_s)
                    wake.clear()
        finally:
            conn.close()

    def send_due(self, conn: sqlite3.Connection, destination: DestinationConfig) -> int:
        """Send one batch of what is due to ``destination``; returns how many objects were tried."""
        batch = queue.due(conn, destination.name, self.clock(), self.config.batch_size)
        if not batch:
            return 0
        items = [Outgoing(o.object_uid, o.sop_class_uid, o.transfer_syntax_uid, self.data_dir / o.path) for o in batch]
        outcomes = self._senders[destination.protocol].send(destination, items, self._stop.is_set)
        by_uid = {o.object_uid: o for o in batch}
        for outcome in outcomes:
            self._record(conn, destination, by_uid[outcome.object_uid], outcome)
        return len(batch)

    def _record(
        self, conn: sqlite3.Connection, destination: DestinationConfig, obj: ResultObject, out: Outcome
    ) -> None:
        result, status, detail = out.result, out.status, out.detail
        state = "pending"
        with transaction(conn):
            if result == "sent":
                queue.record_sent(conn, obj.object_uid, destination.name, status or 0, detail)
                if obj.kind != "original" and queue.source_delivered(conn, obj.source_sop_uid):
                    self._forwarded(conn, obj.source_sop_uid)
            elif result == "rejected":
                queue.record_rejected(conn, obj.object_uid, destination.name, status, detail)
            else:
                state = queue.record_failure(
                    conn,
                    obj.object_uid,
                    destination.name,
                    detail,
                    now=self.clock(),
                    backoff_initial_s=self.config.backoff_initial_s,
                    backoff_max_s=self.config.backoff_max_s,
                    max_attempts=self.config.max_attempts,
                )
        what = "dead" if result == "retry" and state == "dead" else result
        # a retry is logged once per batch by the sender ("destination unavailable"); per object only in DEBUG
        level = logging.INFO if what == "sent" else logging.DEBUG if what == "retry" else logging.ERROR
        event(log, f"delivery {what}", level=level, destination=destination.name, kind=obj.kind,
              sop=obj.object_uid, status=status, detail=detail)  # fmt: skip

    def _forwarded(self, conn: sqlite3.Connection, source_uid: str) -> None:
        try:
            set_state(conn, source_uid, "forwarded", expected="analysed")
        except StateConflict as exc:  # replaced or moved on meanwhile: the deliveries stand
            event(log, "not marked forwarded", level=logging.WARNING, sop=source_uid, reason=str(exc))

    def wake(self) -> None:
        """Have every sender look for due work now rather than at its next poll."""
        for wake in self._wakes.values():
            wake.set()
