"""Where pynetdicom spools a C-STORE dataset while it arrives: the store's ``incoming/`` directory.

pynetdicom can write a received dataset straight to a file instead of holding it in memory
(``_config.STORE_RECV_CHUNKED_DATASET``); the C-STORE handler then gets the file's path
(``event.dataset_path``). By default that file lands in the system temp directory, which is often another file
system (a RAM disk) than the data directory, so storing it would mean a second full copy. :func:`install`
points the spool of one AE's associations at a directory beside the store, so that accepting an object is a
rename. Each fragment is written straight to the kernel (no Python buffer, no copy into a ``BytesIO``), and a
helper thread has the kernel start writing each megabyte to disk as it arrives (``sync_file_range``), so the
store's fsync before it answers has less left to write (in the receiving thread that call blocked reads while
the disk was busy).

pynetdicom creates the spool file with ``tempfile.NamedTemporaryFile`` looked up in
``pynetdicom.dimse_messages``; :func:`install` replaces that name with :func:`_spool_file`, which falls back
to the original for associations of any AE that was not installed. Both switches are process-wide, so
:func:`uninstall` puts them back once the last installed AE is gone: another pynetdicom SCP in the process (a
test's fake PACS) then receives in memory again, as pynetdicom does by default.
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

from pynetdicom import _config, dimse_messages

__all__ = ["WRITEBACK_BYTES", "SpoolFile", "discard_partial", "install", "uninstall"]

WRITEBACK_BYTES = 1 << 20
"""Have the kernel start writing each further megabyte to disk as soon as it has arrived."""

_SYNC_FILE_RANGE_WRITE = 2
_spool_dirs: dict[Any, Path] = {}
_saved: dict[str, Any] = {}
_receiving: dict[int, SpoolFile] = {}  # id(association) -> spool file of its latest C-STORE
_original = tempfile.NamedTemporaryFile
_lock = threading.Lock()


def _load_sync_file_range() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the store's fsync does all the writing
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()
_requests: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
_writer = threading.Event()  # set once the write-back thread runs (started by the first install)


def _start_writeback() -> None:
    """Start (not wait for) write-back of each range asked for; a call may block while the disk is busy,
    which is why it happens here and not in the thread receiving from the network."""
    while True:
        fd, offset, length = _requests.get()
        try:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)


class SpoolFile(io.FileIO):
    """An unbuffered spool file in a given directory.

    It offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``, ``file.flush`` and
    ``close``. Writes go straight to the kernel, so pynetdicom's flush after every fragment costs nothing.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-", suffix=".dcm")
        super().__init__(fd, "wb", closefd=True)
        self.name = name
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
        if self._written - self._flushed >= WRITEBACK_BYTES and _writer.is_set():
            _requests.put((os.dup(self.fileno()), self._flushed, self._written - self._flushed))
            self._flushed = self._written
        return written


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile``: a :class:`SpoolFile` for associations of an installed AE."""
    assoc = getattr(threading.current_thread(), "assoc", None)  # the DUL thread of the receiving association
    directory = _spool_dirs.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if directory is None:
        return _original(*args, **kwargs)
    spool = SpoolFile(directory)
    with _lock:
        _receiving[id(assoc)] = spool
    return spool


def discard_partial(assoc: Any) -> int | None:
    """When ``assoc`` has closed, remove the spool file of a C-STORE it never finished; return its size.

    A completed C-STORE's spool file is gone by then (stored, quarantined or deleted by its handler); one
    that is still there was cut off by an abort or a dropped connection and would otherwise stay until the
    next start.
    """
    with _lock:
        spool = _receiving.pop(id(assoc), None)
    if spool is None or not os.path.exists(spool.name):
        return None
    spool.close()
    path = Path(spool.name)
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    return size


def install(ae: Any, directory: Path) -> None:
    """Make associations of ``ae`` spool received C-STORE datasets to ``directory`` (on the store's disk)."""
    os.makedirs(directory, exist_ok=True)
    with _lock:
        if _sync_file_range is not None and not _writer.is_set():
            threading.Thread(target=_start_writeback, name="spool-writeback", daemon=True).start()
            _writer.set()
        if not _spool_dirs:
            _saved["chunked"] = _config.STORE_RECV_CHUNKED_DATASET
            _saved["factory"] = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]
            _config.STORE_RECV_CHUNKED_DATASET = True
            dimse_messages.NamedTemporaryFile = _spool_file  # type: ignore[attr-defined]
        _spool_dirs[ae] = directory


def uninstall(ae: Any) -> None:
    """Undo :func:`install` for ``ae``; after the last one, pynetdicom receives as it did before."""
    with _lock:
        if _spool_dirs.pop(ae, None) is not None and not _spool_dirs:
            _config.STORE_RECV_CHUNKED_DATASET = _saved["chunked"]
            dimse_messages.NamedTemporaryFile = _saved["factory"]  # type: ignore[attr-defined]
