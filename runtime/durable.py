"""Durable file writes: temp file in the same directory, fsync, ``os.replace``, fsync the directory.

After any function here returns, the file is on disk under its final name and survives power loss; a crash
before that leaves either the old file or nothing, never a half-written one. Temp files are named
``.<name>.<random>.tmp`` so that :func:`remove_stale_temps` can clear what a crash left behind.

Files holding patient data are private: :class:`DataModes` says which permission bits the agent's data directory
and what is in it may have (0700/0600, or 0750/0640 when the agent's group may read it), :func:`make_dirs`
creates directories at such a mode whatever the umask, :func:`tighten` takes extra bits off what exists, and
:func:`loose_bits` says which bits a path has beyond its mode.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PRIVATE",
    "DataModes",
    "atomic_open",
    "atomic_write_bytes",
    "durable_move",
    "fsync_dir",
    "loose_bits",
    "make_dirs",
    "remove_stale_temps",
    "tighten",
]

_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class DataModes:
    """The most permission bits the agent's data directory (``root``), the directories (``directory``) and the
    files (``file``) under it may have."""

    directory: int = 0o700
    file: int = 0o600
    root: int = 0o700
    """The data directory itself: ``directory``, plus group search (0o010) when the agent's group must reach the
    control socket in it but nothing else."""

    @classmethod
    def for_group(cls, group_access: bool, *, group_search: bool = False) -> DataModes:
        """Private to the agent's user (0700/0600) or readable by its group (0750/0640, ``group_access``);
        ``group_search`` lets the group through the data directory (0710) to a socket in it."""
        if group_access:
            return cls(0o750, 0o640, 0o750)
        return cls(0o700, 0o600, 0o710 if group_search else 0o700)

    @property
    def umask(self) -> int:
        """The process umask that creates directories and files at these modes (0o077 or 0o027)."""
        return 0o777 & ~self.directory


PRIVATE = DataModes()
"""Directories 0700, files 0600: the agent's user only."""


def make_dirs(directory: Path, mode: int = PRIVATE.directory) -> None:
    """Create ``directory`` and any missing parents at ``mode``, whatever the umask, fsyncing each parent so the
    new entries are durable. Existing directories are left as they are."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=mode & 0o700)  # no one else can reach it before the chmod
        except FileExistsError:  # made by another thread meanwhile
            continue
        os.chmod(new, mode)
        fsync_dir(new.parent)


def loose_bits(path: Path, mode: int) -> int:
    """The permission bits ``path`` has beyond ``mode`` (0 when it is as private as ``mode`` or more)."""
    return stat.S_IMODE(path.lstat().st_mode) & ~mode & 0o777


def tighten(path: Path, mode: int) -> bool:
    """Take the bits beyond ``mode`` off ``path`` (a link is left alone); True if it changed."""
    st = path.lstat()
    current = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not current & ~mode & 0o777:
        return False
    os.chmod(path, current & mode & 0o777)
    return True


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
