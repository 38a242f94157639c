"""The glibc mmap threshold that returns image-sized buffers to the OS."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from edge.pipeline import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_threshold_is_set_on_glibc() -> None:
    assert memory.release_large_buffers() is True


def test_without_a_c_library_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert memory.release_large_buffers() is False
