"""The capacity service: offers the idle box to the network, runs shared jobs, and gives way to clinical work.

Two threads, each with its own connection to ``edge.db``:

* the **monitor** checks clinical activity every ``poll_ms`` (:class:`ClinicalActivity`: an open DICOM
  association, or an image received and not yet analysed). Clinical work pauses (SIGSTOP) or kills the running job
  at once and withdraws the open offer; a paused job resumes after ``resume_after_s`` without clinical work. Once a
  second it applies the policy (:mod:`edge.capacity.policy`) and publishes a signed offer through the outbox (kind
  ``offers``), renewed before it expires, or withdraws it.
* the **job runner** takes jobs the relay sent (command ``capacity-job``, :meth:`CapacityService.submit`), checks
  them against the current offer and the relay's key (:func:`edge.capacity.messages.check_job`), fetches bundle and
  batch by hash, runs them in a limited worker process (:mod:`edge.capacity.runner`), and in ONE transaction marks
  the job done, records the compute receipts (``compute``: items processed; ``compute-seconds``: device-seconds,
  rounded up) and queues the signed result. A job killed by clinical work is reported ``preempted`` (no outputs,
  no receipt) so the relay gives it to another box.

Offers and results are signed with the device's receipt key; without a device identity nothing is offered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from edge.capacity.fetch import BlobCache, Fetcher, HttpFetcher
from edge.capacity.messages import check_job, job_fields
from edge.capacity.policy import Decision, OpeningHours, decide
from edge.capacity.probe import Accelerator, cpu_load, probe_accelerator, throughput_score
from edge.capacity.runner import JobProcess
from edge.capacity.state import get_value, migrate_capacity, open_offer, set_value, switch
from edge.config import CapacityConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import BundleError, EdgeError, JobFailed, JobRejected, ModelError
from edge.outbox import Outbox
from edge.receipts.book import ReceiptBook
from edge.store.index import clinical_work_pending
from models.bundle import load_bundle
from protocol.capacity import OFFER, RESULT, WITHDRAW, outputs_digest, sign
from protocol.clock import now_ms
from protocol.keys import ED25519, PublicKey
from protocol.receipts import Use
from runtime.logs import event

__all__ = ["CapacityService", "ClinicalActivity", "IndexActivity"]

log = logging.getLogger("edge.capacity")

MAX_BLOB_BYTES = 1 << 30
"""Largest bundle or batch a job may name."""
PROBE_INTERVAL_S = 30.0
"""How often the accelerator is probed again while sharing is on."""


class ClinicalActivity(Protocol):
    """Tells the capacity service whether clinical work is arriving or in flight."""

    def busy(self) -> bool: ...

    def close(self) -> None:
        """Release what ``busy`` holds (called by the monitor thread as it ends)."""
        ...


class IndexActivity:
    """Clinical work is an open DICOM association (an image may be arriving) or, with the pipeline on, an instance
    ``received`` or ``processing`` in the index. Used from one thread (its connection is its own)."""

    def __init__(self, data_dir: Path, associations: Callable[[], int], *, pipeline: bool) -> None:
        self._db = data_dir / DB_FILENAME
        self._associations = associations
        self._pipeline = pipeline
        self._conn: sqlite3.Connection | None = None

    def busy(self) -> bool:
        if self._associations() > 0:
            return True
        if not self._pipeline:
            return False
        if self._conn is None:
            self._conn = connect(self._db)
        try:
            return clinical_work_pending(self._conn)
        except sqlite3.Error:  # index not created yet, or busy: not clinical work we can see
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class CapacityService:
    """Offers, jobs and pre-emption (module docstring); a :class:`~edge.agent.Service`."""

    name = "capacity"

    def __init__(
        self,
        config: CapacityConfig,
        data_dir: Path,
        book: ReceiptBook | None,
        outbox: Outbox,
        activity: ClinicalActivity,
        *,
        fetcher: Fetcher | None = None,
        accelerator: Callable[[], Accelerator] = probe_accelerator,
        now: Callable[[], datetime] = datetime.now,
        score: Callable[[], int] = throughput_score,
    ) -> None:
        self.cfg = config
        self.data_dir = data_dir
        self.book = book
        self.outbox = outbox
        self.activity = activity
        if fetcher is None and self.cfg.blob_url:
            fetcher = HttpFetcher(self.cfg.blob_url, min_rate=self.cfg.min_download_rate, max_s=self.cfg.max_download_s)
        self._cache = BlobCache(self.data_dir / "capacity" / "blobs", fetcher) if fetcher is not None else None
        self._accelerator = accelerator
        self._now = now
        self._score = score
        self._hours = OpeningHours.parse(self.cfg.opening_hours)
        self._relay_key = PublicKey(ED25519, bytes.fromhex(self.cfg.relay_key)) if self.cfg.relay_key else None
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._job: JobProcess | None = None
        self._killed = False
        self._offered = False
        self._probed: tuple[float, Accelerator] | None = None
        self._last_clinical = time.monotonic()  # the policy's idle time starts at boot
        self._last_busy = -math.inf  # clinical work actually seen
        self.preemptions: list[float] = []
        """Seconds each pre-emption took, from the signal to the kernel reporting the worker stopped or gone."""
        self.decision = Decision(False, "starting")

    # --- service ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create or upgrade the capacity tables (and the outbox's, which offers go to), then start the monitor and
        job threads."""
        conn = connect(self.data_dir / DB_FILENAME)
        try:
            migrate_capacity(conn)
            Outbox.migrate(conn)
        finally:
            conn.close()
        self._stop.clear()
        for target, name in ((self._monitor, "capacity-monitor"), (self._runner, "capacity-jobs")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._job is not None:
                self._killed = True
                self._job.kill()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def submit(self, payload: bytes) -> None:
        """Command handler for ``capacity-job``: queue the job envelope (checked on the job thread)."""
        try:
            self._jobs.put_nowait(json.loads(payload))
        except (ValueError, queue.Full) as exc:
            event(log, "job refused", level=logging.WARNING, reason=str(exc) or "queue full")

    # --- monitor ---------------------------------------------------------------------------------------------

    def _monitor(self) -> None:
        conn = connect(self.data_dir / DB_FILENAME)
        next_policy = 0.0
        try:
            while not self._stop.wait(self._period()):
                try:
                    self._check_clinical(conn)
                    if time.monotonic() >= next_policy:
                        next_policy = time.monotonic() + 1.0
                        self._policy(conn)
                except (sqlite3.Error, EdgeError):
                    log.exception("capacity monitor turn failed")
        finally:
            conn.close()
            self.activity.close()

    def _period(self) -> float:
        """``poll_ms`` while a job runs or an offer is open (pre-emption needs it); 0.1 s while the job is paused
        (only its resumption waits on it, and clinical work is then under way: stay out of its way); a second
        otherwise."""
        job = self._job
        if job is not None and job.paused:
            return 0.1
        return self.cfg.poll_ms / 1000 if job is not None or self._offered else 1.0

    def _check_clinical(self, conn: sqlite3.Connection) -> None:
        busy = self.activity.busy()
        now = time.monotonic()
        with self._lock:
            job = self._job
            if busy:
                self._last_clinical = self._last_busy = now
                if job is not None and not job.paused and job.running():
                    if self.cfg.preempt == "kill":
                        self._killed = True
                        took = job.kill()
                    else:
                        took = job.pause()
                    self.preemptions.append(took)
                    event(log, "job pre-empted by clinical work", action=self.cfg.preempt, ms=round(took * 1000, 2))
            elif job is not None and job.paused and now - self._last_clinical >= self.cfg.resume_after_s:
                job.resume()
                event(log, "job resumed")
        if busy and self._offered:
            self._withdraw(conn, "clinical work")

    def _probe(self) -> Accelerator:
        """The accelerator, probed at most every :data:`PROBE_INTERVAL_S` (tegrastats starts a process)."""
        now = time.monotonic()
        if self._probed is None or now - self._probed[0] >= PROBE_INTERVAL_S:
            self._probed = (now, self._accelerator())
        return self._probed[1]

    def _policy(self, conn: sqlite3.Connection) -> None:
        enabled = switch(conn, self.cfg.enabled)
        with self._lock:
            running = self._job is not None
            if not enabled and self._job is not None:
                self._killed = True
                self._job.kill()
        if running and enabled:
            return  # the job's own load must not end the offer it runs under
        if enabled and get_value(conn, "score_mflops") is None:
            set_value(conn, "score_mflops", self._score())  # measured once, on the idle box
        accelerator = self._probe() if enabled else None
        decision = decide(
            self.cfg,
            enabled=enabled,
            now=self._now(),
            idle_s=time.monotonic() - self._last_clinical,
            load_per_core=cpu_load(),
            free_memory_mb=accelerator.free_memory_mb if accelerator is not None else 0,
            power_w=accelerator.power_w if accelerator is not None else 0,
            hours=self._hours,
        )
        if decision != self.decision:
            self.decision = decision
            set_value(conn, "decision", {"offer": decision.offer, "reason": decision.reason})
            if accelerator is not None:
                set_value(conn, "accelerator", accelerator.to_json())
            event(log, "capacity policy", offer=decision.offer, reason=decision.reason)
        offer = open_offer(conn)
        self._offered = offer is not None
        if not decision.offer or accelerator is None:
            if offer is not None:
                self._withdraw(conn, decision.reason)
            return
        identity = self.book.identity if self.book is not None else None
        if identity is None:
            if self.decision.reason != "device not provisioned":
                self.decision = Decision(False, "device not provisioned")
                set_value(conn, "decision", {"offer": False, "reason": self.decision.reason})
            return
        if offer is not None and offer["signed"]["expires_ms"] - now_ms() > self.cfg.offer_ttl_s * 500:
            return
        made = now_ms()
        envelope = sign(
            OFFER,
            {
                "offer_id": uuid.uuid4().hex,
                "device": identity.device_id,
                "accelerator": {"kind": accelerator.kind, "name": accelerator.name, "memory_mb": accelerator.memory_mb},
                "score_mflops": int(get_value(conn, "score_mflops") or 0),
                "max_memory_mb": self.cfg.max_memory_mb,
                "max_power_w": self.cfg.max_power_w,
                "max_items": self.cfg.max_items,
                "price_per_item_micro": self.cfg.price_per_item_micro,
                "issued_ms": made,
                "expires_ms": made + int(self.cfg.offer_ttl_s * 1000),
            },
            identity.key,
        )
        with transaction(conn):
            conn.execute(
                "INSERT INTO capacity_offers (offer_id, envelope, made_ms, expires_ms) VALUES (?, ?, ?, ?)",
                (envelope["signed"]["offer_id"], json.dumps(envelope), made, envelope["signed"]["expires_ms"]),
            )
            self.outbox.enqueue(conn, "offers", envelope)
        self._offered = True
        event(
            log, "capacity offered", offer=envelope["signed"]["offer_id"][:12], score=envelope["signed"]["score_mflops"]
        )

    def _withdraw(self, conn: sqlite3.Connection, reason: str) -> None:
        identity = self.book.identity if self.book is not None else None
        with transaction(conn):
            rows = conn.execute("SELECT offer_id FROM capacity_offers WHERE withdrawn_ms IS NULL").fetchall()
            for (offer_id,) in rows:
                conn.execute(
                    "UPDATE capacity_offers SET withdrawn_ms = ?, reason = ? WHERE offer_id = ?",
                    (now_ms(), reason, offer_id),
                )
                if identity is not None:
                    fields = {
                        "offer_id": offer_id,
                        "device": identity.device_id,
                        "reason": reason[:200],
                        "issued_ms": now_ms(),
                    }
                    self.outbox.enqueue(conn, "offers", sign(WITHDRAW, fields, identity.key))
        self._offered = False
        if rows:
            event(log, "capacity offer withdrawn", reason=reason)

    # --- jobs ------------------------------------------------------------------------------------------------

    def _runner(self) -> None:
        conn = connect(self.data_dir / DB_FILENAME)
        try:
            while not self._stop.is_set():
                try:
                    envelope = self._jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    self._run(conn, envelope)
                except (sqlite3.Error, OSError, EdgeError, ModelError):
                    log.exception("capacity job failed")
                finally:
                    self._clean(envelope)
        finally:
            conn.close()

    def _clean(self, envelope: Any) -> None:
        """Remove a finished job's work files and its input batch (bundles stay cached for the next job)."""
        try:
            signed = job_fields(envelope)  # ids and hashes checked: safe as file names
        except JobRejected:
            return
        names = [
            f"jobs/{signed.get('job_id')}.json",
            f"jobs/{signed.get('job_id')}.err",
            f"blobs/{signed.get('batch')}",
        ]
        for name in names:
            with contextlib.suppress(OSError):
                (self.data_dir / "capacity" / name).unlink()

    def _set_job(self, conn: sqlite3.Connection, job_id: str, state: str, reason: str = "", **extra: int) -> None:
        conn.execute(
            "UPDATE capacity_jobs SET state = ?, reason = ?, items = COALESCE(?, items), "
            "device_ms = COALESCE(?, device_ms), updated_ms = ? WHERE job_id = ?",
            (state, reason[:500], extra.get("items"), extra.get("device_ms"), now_ms(), job_id),
        )

    def _run(self, conn: sqlite3.Connection, envelope: Any) -> None:
        try:
            job_id = str(job_fields(envelope)["job_id"])
        except JobRejected as exc:
            event(log, "job refused", level=logging.WARNING, reason=str(exc))
            return
        with transaction(conn):
            fresh = conn.execute(
                "INSERT INTO capacity_jobs (job_id, envelope, state, updated_ms) VALUES (?, ?, 'accepted', ?) "
                "ON CONFLICT(job_id) DO NOTHING",
                (job_id, json.dumps(envelope), now_ms()),
            ).rowcount
        if not fresh:
            event(log, "job already seen", job=job_id)
            return
        try:
            job = self._accept(conn, envelope)
            bundle, outputs, device_s = self._execute(conn, job)
        except JobRejected as exc:
            with transaction(conn):
                self._set_job(conn, job_id, "rejected", str(exc))
            event(log, "job refused", level=logging.WARNING, job=job_id, reason=str(exc))
            return
        except JobFailed as exc:
            preempted = self._killed
            with transaction(conn):
                self._set_job(conn, job_id, "preempted" if preempted else "failed", str(exc))
                self._report(
                    conn, envelope, "preempted" if preempted else "failed", outputs=[], device_s=0.0, receipts=[]
                )
            event(log, "job ended without result", level=logging.WARNING, job=job_id, reason=str(exc))
            return
        self._finish(conn, envelope, bundle, outputs, device_s)

    def _accept(self, conn: sqlite3.Connection, envelope: Any) -> Mapping[str, Any]:
        identity = self.book.identity if self.book is not None else None
        if identity is None or self._relay_key is None or self._cache is None:
            raise JobRejected("jobs are not accepted: no device identity, [capacity] relay_key or blob_url")
        if not switch(conn, self.cfg.enabled):
            raise JobRejected("sharing is switched off")
        if self.activity_recent():
            raise JobRejected("clinical work in progress")
        offer = open_offer(conn)
        return check_job(
            envelope,
            self._relay_key,
            device=identity.device_id,
            offer=offer["signed"] if offer is not None else None,
            now_ms=now_ms(),
        )

    def activity_recent(self) -> bool:
        """True while clinical work was seen within ``resume_after_s``."""
        return time.monotonic() - self._last_busy < self.cfg.resume_after_s

    def _execute(self, conn: sqlite3.Connection, job: Mapping[str, Any]) -> tuple[Any, list[list[int]], float]:
        assert self._cache is not None  # checked by _accept
        bundle_path = self._cache.get(job["bundle"], MAX_BLOB_BYTES)
        batch_path = self._cache.get(job["batch"], MAX_BLOB_BYTES)
        try:
            bundle = load_bundle(bundle_path)
        except BundleError as exc:
            raise JobRejected(f"job {job['job_id']}: {exc}") from exc
        work = self.data_dir / "capacity" / "jobs"
        work.mkdir(parents=True, exist_ok=True)
        with transaction(conn):
            self._set_job(conn, job["job_id"], "running")
        with self._lock:
            self._killed = False
            process = JobProcess(
                bundle_path,
                batch_path,
                work / f"{job['job_id']}.json",
                memory_mb=self.cfg.max_memory_mb,
                cpu_s=self.cfg.max_job_s,
                threads=self.cfg.threads,
            )
            self._job = process
        event(log, "job started", job=job["job_id"], items=job["items"], pid=process.pid)
        try:
            doc = process.result()
        finally:
            with self._lock:
                self._job = None
        outputs = doc["outputs"]
        if len(outputs) != job["items"] or not all(
            isinstance(o, list) and all(type(v) is int for v in o) for o in outputs
        ):
            raise JobFailed(f"job {job['job_id']}: {len(outputs)} outputs for {job['items']} items")
        return bundle, outputs, process.device_s()

    def _report(
        self,
        conn: sqlite3.Connection,
        envelope: Any,
        status: str,
        *,
        outputs: list[list[int]],
        device_s: float,
        receipts: list[int],
    ) -> None:
        identity = self.book.identity if self.book is not None else None
        if identity is None:
            return
        job = envelope["signed"]
        fields = {
            "job_id": job["job_id"],
            "device": identity.device_id,
            "offer_id": job["offer_id"],
            "status": status,
            "bundle": job["bundle"],
            "batch": job["batch"],
            "items": len(outputs),
            "outputs": outputs,
            "output_digest": outputs_digest(outputs),
            "device_ms": int(device_s * 1000),
            "receipts": receipts,
            "finished_ms": now_ms(),
        }
        self.outbox.enqueue(conn, "offers", sign(RESULT, fields, identity.key))

    def _finish(
        self, conn: sqlite3.Connection, envelope: Any, bundle: Any, outputs: list[list[int]], device_s: float
    ) -> None:
        job = envelope["signed"]
        manifest = bundle.manifest
        with transaction(conn):
            self._set_job(conn, job["job_id"], "done", items=len(outputs), device_ms=int(device_s * 1000))
            receipts: list[int] = []
            if self.book is not None:
                for use in (
                    Use(
                        "compute",
                        units=len(outputs),
                        bundle_id=manifest.id,
                        bundle_version=manifest.version,
                        output_digest=outputs_digest(outputs),
                    ),
                    Use(
                        "compute-seconds",
                        units=max(1, math.ceil(device_s)),
                        bundle_id=manifest.id,
                        bundle_version=manifest.version,
                    ),
                ):
                    receipt = self.book.record(conn, use)
                    if receipt is not None:
                        receipts.append(receipt.seq)
            self._report(conn, envelope, "done", outputs=outputs, device_s=device_s, receipts=receipts)
        event(log, "job done", job=job["job_id"], items=len(outputs), device_s=round(device_s, 2))
