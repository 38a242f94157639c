"""Durable writes leave either the old file or the new one, never a half file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.durable import atomic_open, atomic_write_bytes, durable_move, remove_stale_temps


def test_atomic_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def crash() -> None:
        with atomic_open(target) as fh:
            fh.write(b"half")
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_durable_move_and_stale_temps(tmp_path: Path) -> None:
    src = tmp_path / "spool" / "x"
    src.parent.mkdir()
    src.write_bytes(b"data")
    durable_move(src, tmp_path / "store" / "y")
    assert (tmp_path / "store" / "y").read_bytes() == b"data"
    (tmp_path / "store" / ".z.abc.tmp").write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 1
    assert not (tmp_path / "store" / ".z.abc.tmp").exists()
