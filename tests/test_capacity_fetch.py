"""Job blobs over HTTP within a deadline: a server that trickles a blob (each byte in time for the per-read timeout)
is cut off at ``timeout_s`` plus the stated length at ``min_rate``, or at ``max_s`` when it states none, and the
job is refused with that reason while the agent goes on to the next job. The device's :class:`HttpFetcher`
against a real trickling HTTP server on loopback (the OTA tests' :class:`RepoServer`, serving the blob directory),
with limits small enough that each cut comes within about a second (before the fix: 4 KiB at 5 bytes/s, 14 min)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.capacity import CapacityService
from edge.capacity.fetch import DirectoryFetcher, HttpFetcher
from edge.errors import JobRejected
from protocol.keys import generate_key
from tests.conftest import wait_until
from tests.ota_helpers import RepoServer, deadline_timers, serve
from tests.test_capacity import Rig, _accelerator

TRICKLE_S = 0.2
"""A byte every 0.2 s: well inside the 0.5 s per-read timeout, so only the overall deadline can end it."""

BLOB = bytes(range(256)) * 16
"""4 KiB: at :data:`TRICKLE_S` a byte, 14 minutes."""


@pytest.fixture
def blobs(tmp_path: Path) -> Iterator[tuple[RepoServer, str]]:
    """The server of a blob directory holding :data:`BLOB`, and its digest."""
    digest = DirectoryFetcher(tmp_path / "blobs").put(BLOB)
    with serve(tmp_path / "blobs") as server:
        yield server, digest


def refused(fetcher: HttpFetcher, digest: str, max_bytes: int, within_s: float, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(JobRejected, match=match):
        fetcher.fetch(digest, max_bytes)
    assert time.monotonic() - started < within_s
    for timer in deadline_timers():
        timer.join(1.0)
    assert not deadline_timers()  # each deadline's timer has gone with its download


def test_a_blob_arrives_whole_within_its_deadline(blobs: tuple[RepoServer, str]) -> None:
    server, digest = blobs
    assert HttpFetcher(server.url, timeout_s=0.5, max_s=1.0).fetch(digest, len(BLOB)) == BLOB
    refused(HttpFetcher(server.url), digest, len(BLOB) - 1, within_s=1.0, match="larger than")  # stated: not read
    refused(HttpFetcher(server.url), "0" * 64, len(BLOB), within_s=1.0, match="HTTP Error 404")


def test_a_trickled_blob_is_cut_at_the_deadline_of_its_stated_length(blobs: tuple[RepoServer, str]) -> None:
    """The most a blob may hold allows a minute; the 4 KiB the server states at 8 KiB/s allow 0.5 + 0.5 s."""
    server, digest = blobs
    server.trickle[digest] = TRICKLE_S
    fetcher = HttpFetcher(server.url, timeout_s=0.5, min_rate=8192, max_s=60.0)
    refused(fetcher, digest, 1 << 30, within_s=2.0, match=r"deadline of 1 s \(slow retrieval\)")


def test_trickled_headers_are_cut_at_the_cap(blobs: tuple[RepoServer, str]) -> None:
    """Headers without end and no length stated: ``max_s`` caps the download whatever the minimum rate allows."""
    server, digest = blobs
    server.trickle_headers[digest] = TRICKLE_S
    fetcher = HttpFetcher(server.url, timeout_s=0.5, min_rate=1, max_s=1.0)
    refused(fetcher, digest, len(BLOB), within_s=2.0, match="deadline of 1 s")


def test_an_endless_blob_is_refused_at_the_most_it_may_hold(blobs: tuple[RepoServer, str]) -> None:
    server, digest = blobs
    server.endless.add(digest)
    refused(HttpFetcher(server.url, timeout_s=0.5, max_s=5.0), digest, 1 << 20, within_s=2.0, match="larger than")


def test_the_service_fetches_with_the_configured_limits(tmp_path: Path) -> None:
    rig = Rig(tmp_path, generate_key(), blob_url="http://127.0.0.1:9/blobs", min_download_rate=4096)
    service = CapacityService(
        rig.config.capacity, rig.config.agent.data_dir, rig.box.book, rig.outbox, rig.activity, accelerator=_accelerator
    )
    assert service._cache is not None
    fetcher = service._cache.fetcher
    assert isinstance(fetcher, HttpFetcher)
    assert (fetcher.base_url, fetcher.limits.min_rate, fetcher.limits.max_s) == ("http://127.0.0.1:9/blobs", 4096, 1800)


def test_a_job_whose_blob_trickles_is_refused_and_the_next_one_runs(tmp_path: Path) -> None:
    rig = Rig(tmp_path, generate_key())
    with serve(rig.blobs) as server:
        fetcher = HttpFetcher(server.url, timeout_s=0.5, max_s=1.0)
        rig.service = CapacityService(
            rig.config.capacity,
            rig.config.agent.data_dir,
            rig.box.book,
            rig.outbox,
            rig.activity,
            fetcher=fetcher,
            accelerator=_accelerator,
        )
        rig.service.start()
        try:
            offer = rig.offer()
            slow, fine = rig.job(offer, 1, job_id="slow"), rig.job(offer, 2, job_id="fine")
            server.trickle_headers[slow["signed"]["batch"]] = TRICKLE_S
            for job in (slow, fine):
                rig.service.submit(json.dumps(job).encode())
            wait_until(lambda: rig.job_state("slow") == "rejected", 10, "the slow job's refusal")
            wait_until(lambda: rig.job_state("fine") == "done", 60, "the next job")
        finally:
            rig.service.stop()
    reason = rig.box.conn.execute("SELECT reason FROM capacity_jobs WHERE job_id = 'slow'").fetchone()[0]
    assert reason.endswith("deadline of 1 s (slow retrieval)")
