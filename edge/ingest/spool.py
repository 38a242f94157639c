"""Where pynetdicom spools a C-STORE dataset while it arrives: the store's ``incoming/`` directory.

pynetdicom can write a received dataset straight to a file instead of holding it in memory; the C-STORE handler
then gets the file's path (``event.dataset_path``). By default that file lands in the system temp directory,
which is often another file system (a RAM disk) than the data directory, so storing it would mean a second full
copy. A :class:`Spool` puts the spool files of one AE's associations in a directory beside the store, so that
accepting an object is a rename. Each fragment is written straight to the kernel (no Python buffer, no copy into
a ``BytesIO``), and the spool's write-back thread has the kernel start writing each megabyte to disk as it arrives
(``sync_file_range``), so the store's fsync before it answers has less left to write (in the receiving thread
that call blocked reads while the disk was busy).

The SCP owns its spool: :meth:`Spool.start` with the listener, :meth:`Spool.stop` after it. The process-wide
pynetdicom switches that route a C-STORE to the spool are held in :mod:`edge.dicomlib`, the one place that
changes library globals.
"""

from __future__ import annotations

import ctypes
import io
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

from edge import dicomlib

__all__ = ["WRITEBACK_BYTES", "Spool", "SpoolFile"]

WRITEBACK_BYTES = 1 << 20
"""Have the kernel start writing each further megabyte to disk as soon as it has arrived."""

_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the store's fsync does all the writing
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()
"""libc's ``sync_file_range`` (a function of the platform, looked up once), or None where there is none."""

_Writeback = queue.SimpleQueue[tuple[int, int, int] | None]


class SpoolFile(io.FileIO):
    """An unbuffered spool file in a given directory.

    It offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``, ``file.flush`` and
    ``close``. Writes go straight to the kernel, so pynetdicom's flush after every fragment costs nothing.
    Every :data:`WRITEBACK_BYTES`, the range written is put on ``writeback`` (a spool's write-back queue).
    """

    def __init__(self, directory: Path, writeback: _Writeback | None = None) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-", suffix=".dcm")
        super().__init__(fd, "wb", closefd=True)
        self.name = name
        self._writeback = writeback
        self._written = 0
        self._flushed = 0

    @property
    def file(self) -> SpoolFile:
        """pynetdicom calls ``file.flush()`` on a ``NamedTemporaryFile``."""
        return self

    def write(self, data: Any) -> int:
        """Write all of ``data`` (a raw write may be partial; pynetdicom does not check); every
        :data:`WRITEBACK_BYTES`, have the kernel start writing what arrived to disk."""
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += super().write(view[written:]) or 0
        self._written += written
        if self._writeback is not None and self._written - self._flushed >= WRITEBACK_BYTES:
            self._writeback.put((os.dup(self.fileno()), self._flushed, self._written - self._flushed))
            self._flushed = self._written
        return written


class Spool:
    """The spool of one AE's associations: its directory, the file of each association's latest C-STORE, and the
    write-back thread (from :meth:`start` to :meth:`stop`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._receiving: dict[int, SpoolFile] = {}  # id(association) -> spool file of its latest C-STORE
        self._lock = threading.Lock()
        self._requests: _Writeback | None = None
        self._thread: threading.Thread | None = None
        self._ae: Any = None

    def start(self, ae: Any) -> None:
        """Make associations of ``ae`` spool received C-STORE datasets here (on the store's disk)."""
        os.makedirs(self.directory, exist_ok=True)
        if _sync_file_range is not None and self._thread is None:
            self._requests = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._start_writeback, args=(self._requests,), name="spool-writeback", daemon=True
            )
            self._thread.start()
        self._ae = ae
        dicomlib.receive_to_spool(ae, self)

    def stop(self) -> None:
        """Undo :meth:`start` (after the AE has stopped receiving); the write-back thread finishes and ends."""
        if self._ae is not None:
            dicomlib.stop_receiving_to_spool(self._ae)
            self._ae = None
        if self._thread is not None and self._requests is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = self._requests = None

    def open(self, assoc: Any) -> SpoolFile:
        """The spool file of a C-STORE arriving on ``assoc`` (pynetdicom's ``NamedTemporaryFile`` for this AE)."""
        spool = SpoolFile(self.directory, self._requests)
        with self._lock:
            self._receiving[id(assoc)] = spool
        return spool

    def discard_partial(self, assoc: Any) -> int | None:
        """When ``assoc`` has closed, remove the spool file of a C-STORE it never finished; return its size.

        A completed C-STORE's spool file is gone by then (stored, quarantined or deleted by its handler); one
        that is still there was cut off by an abort or a dropped connection and would otherwise stay until the
        next start.
        """
        with self._lock:
            spool = self._receiving.pop(id(assoc), None)
        if spool is None or not os.path.exists(spool.name):
            return None
        spool.close()
        path = Path(spool.name)
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        return size

    @staticmethod
    def _start_writeback(requests: _Writeback) -> None:
        """Start (not wait for) write-back of each range asked for, until ``None``; a call may block while the
        disk is busy, which is why it happens here and not in the thread receiving from the network."""
        while (request := requests.get()) is not None:
            fd, offset, length = request
            try:
                _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
