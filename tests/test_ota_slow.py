"""Slow retrieval: a mirror that trickles bytes (each one in time for the per-read timeout) is cut off at the
download's overall deadline, ``timeout_s`` plus its length at ``min_download_rate``, at most ``max_download_s``,
whether it trickles the metadata, a bundle, or the headers (over TLS too); a bundle cut short resumes at the next
check. Real updater (python-tuf, urllib) against a real trickling HTTP server on loopback, with limits small
enough that each cut comes within about two seconds (before the fix: 16 KiB of timestamp at 5 bytes/s, 55 min)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge.agent import updater_for
from ota.errors import SlowRetrieval
from ota.http import TufFetcher
from ota.updater import OtaUpdater
from tests.ota_helpers import (
    RepoServer,
    agent_config,
    bundle_dir,
    deadline_timers,
    new_repository,
    publish_bundle,
    self_signed,
    serve,
)

TRICKLE_S = 0.2
"""A byte every 0.2 s: well inside the 1 s per-read timeout, so only the overall deadline can end it."""


def updater(tmp: Path, server: RepoServer, reports: list[dict[str, Any]], **ota: Any) -> OtaUpdater:
    limits = {"timeout_s": 1, "min_download_rate": 16384, "max_download_s": 60.0, **ota}
    config = agent_config(
        tmp / "data", tmp / "bundles" / "1.0.0", server.url, tmp / "repo" / "metadata" / "1.root.json", **limits
    )
    return updater_for(config, lambda body: reports.append(dict(body["ota"])))


def cut_off(target: OtaUpdater, reports: list[dict[str, Any]], within_s: float) -> str:
    started = time.monotonic()
    with pytest.raises(SlowRetrieval, match="deadline") as info:
        target.apply(switch_now=True)
    elapsed = time.monotonic() - started
    assert elapsed < within_s, elapsed
    assert reports[-1]["event"] == "refused"
    assert reports[-1]["reason"] == "slow-retrieval"
    assert target.store.read().active == "factory"
    for timer in deadline_timers():
        timer.join(1.0)
    assert not deadline_timers()  # each deadline's timer has gone with its download
    return str(info.value)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    bundle_dir(tmp_path / "bundles", "1.0.0")
    publish_bundle(new_repository(tmp_path), bundle_dir(tmp_path / "bundles", "1.1.0"))
    return tmp_path


def test_the_deadline_grows_with_the_length_up_to_the_cap() -> None:
    fetcher = TufFetcher(timeout_s=30, min_rate=16384, max_s=3600)
    assert fetcher.deadline_s(16 * 1024) == 31.0  # the timestamp: 31 s, not 16 Ki reads of 30 s each
    assert fetcher.deadline_s(0) == 30.0
    assert fetcher.deadline_s(512 << 20) == 3600.0


def test_trickled_metadata_is_cut_at_its_deadline(tmp: Path) -> None:
    reports: list[dict[str, Any]] = []
    with serve(tmp / "repo") as server:
        server.trickle["metadata/timestamp.json"] = TRICKLE_S
        message = cut_off(updater(tmp, server, reports), reports, within_s=3.5)  # 1 s + 16 KiB at 16 KiB/s
    assert "timestamp.json" in message


def test_a_trickled_bundle_is_cut_and_resumed_at_the_next_check(tmp: Path) -> None:
    reports: list[dict[str, Any]] = []
    with serve(tmp / "repo") as server:
        offer, _ = updater(tmp, server, reports).check()
        assert offer is not None
        path = f"targets/models/{offer.sha256}.tiny-test-model.tar"
        server.trickle[path] = TRICKLE_S / 20
        target = updater(tmp, server, reports, min_download_rate=offer.length)  # its deadline: 1 s + 1 s
        cut_off(target, reports, within_s=3.5)
        part = tmp / "data" / "ota" / "downloads" / f"{offer.sha256}.tar"
        have = part.stat().st_size
        assert 0 < have < offer.length  # what arrived is kept
        del server.trickle[path]
        assert target.apply(switch_now=True).outcome == "switched"
        assert (path, f"bytes={have}-") in server.ranges


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_trickled_headers_are_cut_at_the_cap(tmp: Path, tls: bool) -> None:
    """Headers without end: the deadline covers the whole exchange, and ``max_download_s`` caps it whatever the
    length (the minimum rate alone would allow 1 + 16 KiB / 1 B/s here)."""
    reports: list[dict[str, Any]] = []
    cert = self_signed(tmp / "tls") if tls else None
    with serve(tmp / "repo", tls_cert=cert) as server:
        server.trickle_headers["metadata/timestamp.json"] = TRICKLE_S
        extra = {"ca_file": str(cert[0])} if cert else {}
        target = updater(tmp, server, reports, min_download_rate=1, max_download_s=1.5, **extra)
        cut_off(target, reports, within_s=3.0)
