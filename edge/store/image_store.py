"""The durable image store: received files under the data directory and their rows in the index.

Layout under ``data_dir``::

    edge.db                                    the agent database (index tables: edge.store.index)
    incoming/                                  spool: objects being received (cleared at start)
    dicom/<study uid>/<sop uid>.dcm            stored instances, byte for byte as received (one folder per
                                               study; series are in the index: a folder per series would
                                               cost one more directory fsync per image from a dental unit)
    quarantine/<time>-<sop uid>.dcm (+ .txt)   rejected input and the reason, for inspection

:meth:`ImageStore.accept` takes a spooled file, checks that it arrived whole (:func:`~edge.store.encoding.pixel_extent`:
every element, item and fragment within the bytes that arrived, every delimiter present) and that its header
is sound (:func:`~edge.store.header.read_header`), makes it
durable (fsync, rename, fsync directory) and then commits its index row; only then may the SCP answer success.
A crash before the commit leaves at most a complete file without a row, which :meth:`ImageStore.open` removes
(it was never acknowledged, so the sender still has it); a crash mid-transfer leaves only a spool file, which
:meth:`ImageStore.open` clears too.

Duplicates (same SOP Instance UID): identical content is acknowledged again and nothing changes. Different
content follows ``dicom.duplicate_policy``: ``keep`` the first copy (and log a warning), ``replace`` it (the
instance goes back to ``received``), or ``reject`` it (:class:`~edge.errors.DuplicateConflict`).
"""

from __future__ import annotations

import filecmp
import logging
import mmap
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread

from edge import dicomlib
from edge.db import DB_FILENAME, connect
from edge.errors import DuplicateConflict, InvalidDataset, OutOfSpace, StoreError
from edge.store.encoding import pixel_extent
from edge.store.header import InstanceHeader, read_header
from edge.store.index import Instance, get_instance, migrate_index, record_instance, utc_now
from runtime.durable import atomic_write_bytes, durable_move, fsync_dir, remove_stale_temps
from runtime.logs import event

__all__ = ["DuplicatePolicy", "ImageStore", "Outcome", "StoredInstance"]

log = logging.getLogger("edge.store")

DuplicatePolicy = Literal["keep", "replace", "reject"]
Outcome = Literal["stored", "duplicate", "kept_first", "replaced"]
_MB = 1024 * 1024


@dataclass(frozen=True)
class StoredInstance:
    """What :meth:`ImageStore.accept` did with one object."""

    header: InstanceHeader
    path: Path
    size_bytes: int
    outcome: Outcome
    """``stored`` (new), ``duplicate`` (identical copy acknowledged again), ``kept_first`` (different content,
    policy ``keep``), ``replaced`` (different content, policy ``replace``)."""


def _read(path: Path) -> InstanceHeader:
    """Check that a spooled Part 10 file arrived whole and parse it far enough to index it (pixel data is not
    read: the walk over its element headers sees the spool file through a read-only ``mmap``)."""
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise InvalidDataset("the file is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                pixels = pixel_extent(buffer)
        ds = dcmread(path, defer_size=1024)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        header = read_header(ds, transfer_syntax, pixels)
        meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    except InvalidDataset:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input; all mean "cannot decode"
        raise InvalidDataset(f"cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if meta_uid and meta_uid != header.sop_instance_uid:
        raise InvalidDataset(
            f"SOP Instance UID {header.sop_instance_uid} in the dataset differs from {meta_uid} in the request"
        )
    return header


class ImageStore:
    """Files and index of received instances under one data directory. Thread-safe."""

    name = "store"

    def __init__(self, data_dir: Path, *, min_free_mb: int, duplicate_policy: DuplicatePolicy) -> None:
        self.data_dir = data_dir
        self.incoming_dir = data_dir / "incoming"
        self.dicom_dir = data_dir / "dicom"
        self.quarantine_dir = data_dir / "quarantine"
        self.min_free_mb = min_free_mb
        self.duplicate_policy = duplicate_policy
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._listeners: list[Callable[[], None]] = []
        self._lenient = False

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each new (or replaced) instance is durably indexed, e.g. to wake the pipeline.

        Listeners run on the receiving thread after the commit; an exception in one is logged and never changes
        the status the SCP answers.
        """
        self._listeners.append(callback)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the index and clear what a crash left behind (spool files, temps, files without a row)."""
        # Values that break a VR's rules are the sender's business: the store checks what it needs itself
        # (read_header) and keeps the object byte for byte, so pydicom should not warn about the rest.
        if not self._lenient:
            dicomlib.LENIENT_READING.hold()
            self._lenient = True
        for directory in (self.incoming_dir, self.dicom_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.data_dir)
        conn = connect(self.data_dir / DB_FILENAME)
        migrate_index(conn)
        self._conn = conn
        spooled = sum(1 for p in self.incoming_dir.iterdir() if p.is_file())
        shutil.rmtree(self.incoming_dir)
        self.incoming_dir.mkdir()
        temps = remove_stale_temps(self.dicom_dir)
        orphans = self._remove_orphans(conn)
        if spooled or temps or orphans:
            event(log, "recovered after restart", partial_transfers=spooled, temp_files=temps, unindexed_files=orphans)

    def stop(self) -> None:
        """Close the index."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._lenient:
            dicomlib.LENIENT_READING.release()
            self._lenient = False

    @property
    def conn(self) -> sqlite3.Connection:
        """The store's own connection (only for use under the store's lock; others open their own)."""
        if self._conn is None:
            raise StoreError("the image store is not open")
        return self._conn

    def _remove_orphans(self, conn: sqlite3.Connection) -> int:
        indexed = {row[0] for row in conn.execute("SELECT path FROM instances")}
        removed = 0
        for path in self.dicom_dir.rglob("*.dcm"):
            if str(path.relative_to(self.data_dir)) not in indexed:
                path.unlink()
                removed += 1
        return removed

    # --- receiving ---------------------------------------------------------------------------------------

    def check_space(self) -> None:
        """Raise :class:`~edge.errors.OutOfSpace` when free space is below the reserve."""
        free = shutil.disk_usage(self.data_dir).free
        if free < self.min_free_mb * _MB:
            raise OutOfSpace(f"only {free // _MB} MB free on the data disk, reserve is {self.min_free_mb} MB")

    def accept(self, spooled: Path, calling_ae: str) -> StoredInstance:
        """Store the Part 10 file ``spooled`` (in :attr:`incoming_dir`) durably and index it.

        Raises :class:`~edge.errors.OutOfSpace`, :class:`~edge.errors.InvalidDataset` (the caller quarantines
        the file), :class:`~edge.errors.DuplicateConflict`, or :class:`~edge.errors.StoreError` when the disk
        or the database fails (nothing is indexed then). On success the file has been moved or removed.
        """
        self.check_space()
        header = _read(spooled)
        try:
            stored = self._store(spooled, header, calling_ae)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot store {header.sop_instance_uid}: {exc}") from exc
        if stored.outcome in ("stored", "replaced"):
            for listener in self._listeners:
                try:
                    listener()
                except Exception:
                    log.exception("a store listener failed (the instance is stored)")
        return stored

    def _store(self, spooled: Path, header: InstanceHeader, calling_ae: str) -> StoredInstance:
        size = spooled.stat().st_size
        fd = os.open(spooled, os.O_RDONLY)
        try:
            os.fsync(fd)  # the expensive flush happens outside the lock
        finally:
            os.close(fd)
        relative = Path("dicom", header.study_uid, f"{header.sop_instance_uid}.dcm")
        final = self.data_dir / relative
        with self._lock:
            existing = get_instance(self.conn, header.sop_instance_uid)
            if existing is not None:
                return self._duplicate(spooled, header, existing, final=final, size=size, calling_ae=calling_ae)
            self._make_dirs(final.parent)
            os.replace(spooled, final)
            fsync_dir(final.parent)
            try:
                record_instance(
                    self.conn, header, path=str(relative), size_bytes=size, calling_ae=calling_ae, received_at=utc_now()
                )
            except BaseException:
                final.unlink()
                raise
        return StoredInstance(header, final, size, "stored")

    def _duplicate(
        self, spooled: Path, header: InstanceHeader, existing: Instance, *, final: Path, size: int, calling_ae: str
    ) -> StoredInstance:
        current = self.data_dir / existing.path
        if current.exists() and filecmp.cmp(current, spooled, shallow=False):
            spooled.unlink()
            event(log, "duplicate ignored", sop=header.sop_instance_uid, calling_ae=calling_ae, content="identical")
            return StoredInstance(header, current, size, "duplicate")
        if self.duplicate_policy == "reject":
            spooled.unlink()
            raise DuplicateConflict(f"instance {header.sop_instance_uid} is stored already with different content")
        if self.duplicate_policy == "keep":
            spooled.unlink()
            event(
                log,
                "duplicate with different content, kept the first",
                level=logging.WARNING,
                sop=header.sop_instance_uid,
                calling_ae=calling_ae,
                policy="keep",
            )
            return StoredInstance(header, current, existing.size_bytes, "kept_first")
        self._make_dirs(final.parent)
        os.replace(spooled, final)
        fsync_dir(final.parent)
        relative = str(final.relative_to(self.data_dir))
        record_instance(
            self.conn,
            header,
            path=relative,
            size_bytes=size,
            calling_ae=calling_ae,
            received_at=utc_now(),
            replace=True,
        )
        if current != final and current.exists():
            current.unlink()
        event(
            log,
            "duplicate with different content, replaced",
            level=logging.WARNING,
            sop=header.sop_instance_uid,
            calling_ae=calling_ae,
            policy="replace",
        )
        return StoredInstance(header, final, size, "replaced")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and any missing parents, fsyncing each parent so the new entries are durable."""
        missing: list[Path] = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
            fsync_dir(new.parent)

    def quarantine(self, spooled: Path, reason: str, *, calling_ae: str, sop_instance_uid: str = "") -> Path:
        """Move a rejected file to ``quarantine/`` with a ``.txt`` beside it giving the reason."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.monotonic_ns() % 1_000_000:06d}"
        safe_uid = "".join(c for c in sop_instance_uid if c.isdigit() or c == ".")[:64]
        name = f"{stamp}-{safe_uid or 'unknown'}"
        target = self.quarantine_dir / f"{name}.dcm"
        atomic_write_bytes(
            self.quarantine_dir / f"{name}.txt",
            f"reason: {reason}\ncalling_ae: {calling_ae}\nreceived_at: {utc_now()}\n".encode(),
        )
        durable_move(spooled, target)
        return target
