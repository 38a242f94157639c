"""Durable file writes: temp file in the same directory, fsync, ``os.replace``, fsync the directory.

After any function here returns, the file is on disk under its final name and survives power loss; a crash
before that leaves either the old file or nothing, never a half-written one. Temp files are named
``.<name>.<random>.tmp`` so that :func:`remove_stale_temps` can clear what a crash left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_write_bytes", "durable_move", "fsync_dir", "remove_stale_temps"]

_TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for writing; on clean exit make it ``path`` durably.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_open(path, mode) as fh:
        fh.write(data)


def durable_move(src: Path, dst: Path) -> None:
    """Move a file (already fsync'd by its writer) to ``dst`` on the same file system, durably.

    ``src`` is fsync'd again first, so a file written by a library that does not fsync is safe too.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a crash left under ``directory``; return how many were removed."""
    removed = 0
    if not directory.exists():
        return 0
    for tmp in directory.rglob(f".*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed
