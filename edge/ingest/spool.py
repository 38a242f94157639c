"""Where pynetdicom spools a C-STORE dataset while it arrives: the store's ``incoming/`` directory.

pynetdicom can write a received dataset straight to a file instead of holding it in memory
(``_config.STORE_RECV_CHUNKED_DATASET``); the C-STORE handler then gets the file's path
(``event.dataset_path``). By default that file lands in the system temp directory, which is often another file
system (a RAM disk) than the data directory, so storing it would mean a second full copy. :func:`install`
points the spool of one AE's associations at a directory beside the store, so that accepting an object is a
rename, and makes each spool file start the kernel's write-back as data arrives (``sync_file_range``) so the
fsync before the success response has little left to flush.

pynetdicom creates the spool file with ``tempfile.NamedTemporaryFile`` looked up in
``pynetdicom.dimse_messages``; :func:`install` replaces that name with :func:`_spool_file`, which falls back
to the original for associations of any AE that was not installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

__all__ = ["WRITEBACK_BYTES", "SpoolFile", "install"]

WRITEBACK_BYTES = 1 << 20
"""Start write-back of each further megabyte as soon as it is written."""

_SYNC_FILE_RANGE_WRITE = 2
_spool_dirs: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()
_original = tempfile.NamedTemporaryFile
_install_lock = threading.Lock()


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does all the work
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()


class SpoolFile(io.FileIO):
    """An unbuffered spool file that starts write-back every :data:`WRITEBACK_BYTES`.

    It offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``, ``file.flush`` and
    ``close``. Writes go straight to the kernel, so pynetdicom's flush after every fragment costs nothing.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-", suffix=".dcm")
        super().__init__(fd, "wb", closefd=True)
        self.name = name
        self._written = 0
        self._started = 0

    @property
    def file(self) -> SpoolFile:
        """pynetdicom calls ``file.flush()`` on a ``NamedTemporaryFile``."""
        return self

    def write(self, data: Any) -> int:
        """Write all of ``data``; start write-back of every full megabyte written so far."""
        view = memoryview(data)
        total = 0
        while total < len(view):
            n = super().write(view[total:])
            total += n or 0
        self._written += total
        if _sync_file_range is not None and self._written - self._started >= WRITEBACK_BYTES:
            _sync_file_range(self.fileno(), self._started, self._written - self._started, _SYNC_FILE_RANGE_WRITE)
            self._started = self._written
        return total


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile``: a :class:`SpoolFile` for associations of an installed AE."""
    assoc = getattr(threading.current_thread(), "assoc", None)  # the DUL thread of the receiving association
    directory = _spool_dirs.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if directory is None:
        return _original(*args, **kwargs)
    return SpoolFile(directory)


def install(ae: Any, directory: Path) -> None:
    """Make associations of ``ae`` spool received C-STORE datasets to ``directory`` (on the store's disk)."""
    with _install_lock:
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = _spool_file  # type: ignore[attr-defined]
        _spool_dirs[ae] = directory
    os.makedirs(directory, exist_ok=True)
