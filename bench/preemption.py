"""Clinical pre-emption: clinical latency with and without a shared job running, and the pre-emption bound.

    .venv/bin/python -m bench.preemption [--runs 20] [--job-items 200]

One in-process agent (``build_agent``: the DICOM listener, the pipeline on the CPU with 2 threads, the capacity
service; results delivery off) receives synthetic panoramics from DCMTK's ``storescu``. Clinical latency is the
time from the start of ``storescu`` until the pipeline's result for that image is recorded (polled every 5 ms).
First ``--runs`` images on the idle box (shown, not compared), then a shared job (the reference model on a
batch of ``--job-items`` images, in the limited worker process) is sent and ``--runs`` pairs follow, so that
drift in the machine's load (it is shared) hits both sides alike: "no job", the worker held stopped by the
benchmark for the whole run; "with job", an image sent after the job has run for a second. The job was accepted
through the real path: a signed offer, a job signed by the relay's key, bundle and batch fetched by hash.

The pre-emption bound is measured two ways: from the start of ``storescu`` until the kernel reports the worker
stopped (``/proc/<pid>/stat`` polled every 0.2 ms by the benchmark), and the service's own figure (SIGSTOP sent
until stopped). ``ratio clinical_latency_nojob_vs_with_job`` = median latency without a job / with one (goal:
at least 0.9, i.e. within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

from edge.agent import build_agent
from edge.capacity import CapacityService
from edge.capacity.fetch import DirectoryFetcher
from edge.capacity.jobrun import pack_batch
from edge.capacity.runner import JobProcess, process_state
from edge.capacity.state import open_offer
from edge.config import AgentConfig, with_overrides
from edge.db import DB_FILENAME, connect
from edge.receipts.identity import KeyFiles, provision
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dicom_bytes
from ota.repository import bundle_archive
from protocol.capacity import JOB, sign
from protocol.clock import now_ms
from protocol.keys import generate_key

STORESCU = "/usr/bin/storescu"
ENV = {**os.environ, "TCP_NODELAY": "1"}
REFERENCE = Path("models/bundles/reference-dental")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _blob(directory: Path, data: bytes) -> str:
    return DirectoryFetcher(directory).put(data)


def _bundle_tar() -> bytes:
    return bundle_archive(REFERENCE)[0]


def _batch(items: int) -> bytes:
    return pack_batch(np.random.default_rng(0).normal(0, 1, (items, 1, 512, 1024)))


def _wait_result(db: Path, uid: str, start: float, timeout: float = 120) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while True:
            try:
                row = conn.execute("SELECT 1 FROM pipeline_results WHERE sop_instance_uid = ?", (uid,)).fetchone()
            except sqlite3.OperationalError:
                row = None
            if row is not None:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"no result for {uid} within {timeout} s")
            time.sleep(0.005)
    finally:
        conn.close()


def _watch_stop(pid: int, start: float, out: list[float], done: threading.Event) -> None:
    while not done.is_set():
        if process_state(pid) in ("T", "t"):
            out.append(time.perf_counter() - start)
            return
        time.sleep(0.0002)


def _running_job(capacity: CapacityService) -> JobProcess:
    """The job worker once it runs (not paused by the service)."""
    deadline = time.monotonic() + 120
    while (worker := capacity._job) is None or worker.paused:
        if time.monotonic() > deadline:
            raise SystemExit("the job is not running")
        time.sleep(0.01)
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="pairs of runs without and with a job")
    parser.add_argument("--job-items", type=int, default=200)
    args = parser.parse_args()
    runs: int = args.runs
    root = Path(tempfile.mkdtemp(prefix="btt-preempt-"))
    data_dir, blobs, images = root / "data", root / "blobs", root / "images"
    for d in (data_dir, blobs, images):
        d.mkdir()
    provision(KeyFiles(data_dir / "keys"), manufacturer=generate_key())
    relay = generate_key()
    port = _port()
    config = with_overrides(
        AgentConfig(),
        agent={"data_dir": str(data_dir), "log_level": "WARNING"},
        dicom={"port": port, "bind_address": "127.0.0.1"},
        pipeline={"backend": "onnxruntime-cpu", "threads": 2, "poll_interval_s": 0.05},
        results={"enabled": False},
        control={"enabled": False},
        capacity={
            "enabled": True,
            "relay_key": relay.public.key.hex(),
            "blob_url": blobs.as_uri(),
            "opening_hours": [],
            "idle_minutes": 0.0,
            "max_load": 64.0,
            "max_memory_mb": 2048,
            "max_items": 100_000,
            "max_job_s": 3600.0,
            "resume_after_s": 1.0,
        },
    )
    agent = build_agent(config)
    capacity = next(s for s in agent.services if isinstance(s, CapacityService))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    db = data_dir / DB_FILENAME
    paths: list[tuple[Path, str]] = []
    for i in range(3 * runs + 1):
        path = images / f"{i}.dcm"
        path.write_bytes(synthetic_dicom_bytes(generate(2000 + i), 2000 + i))
        paths.append((path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)))

    def clinical(path: Path, uid: str, watch_pid: int | None) -> tuple[float, float | None]:
        stopped: list[float] = []
        done = threading.Event()
        start = time.perf_counter()
        if watch_pid is not None:
            threading.Thread(target=_watch_stop, args=(watch_pid, start, stopped, done), daemon=True).start()
        subprocess.run([STORESCU, "-aec", "BTT_EDGE", "127.0.0.1", str(port), str(path)], env=ENV, check=True)
        latency = _wait_result(db, uid, start)
        done.set()
        return latency, stopped[0] if stopped else None

    try:
        clinical(*paths[0], None)  # warm-up: model loaded, caches hot
        idle = [clinical(*paths[1 + run], None)[0] for run in range(runs)]
        time.sleep(config.capacity.resume_after_s + 0.5)  # a job is refused right after clinical work
        conn = connect(db)
        deadline = time.monotonic() + 60
        while (offer := open_offer(conn)) is None:
            if time.monotonic() > deadline:
                raise SystemExit("no capacity offer within 60 s")
            time.sleep(0.1)
        conn.close()
        offer_fields = offer["signed"]
        job = sign(
            JOB,
            {
                "job_id": "bench-job",
                "device": offer_fields["device"],
                "offer_id": offer_fields["offer_id"],
                "bundle": _blob(blobs, _bundle_tar()),
                "batch": _blob(blobs, _batch(args.job_items)),
                "items": args.job_items,
                "price_per_item_micro": offer_fields["price_per_item_micro"],
                "issued_ms": now_ms(),
                "expires_ms": now_ms() + 3_600_000,
            },
            relay,
        )
        capacity.submit(json.dumps(job).encode())
        nojob: list[float] = []
        withjob: list[float] = []
        bounds: list[float] = []
        for run in range(runs):
            worker = _running_job(capacity)
            os.killpg(worker.pid, signal.SIGSTOP)  # no job: held stopped (by us) for the whole run
            time.sleep(1.0)
            nojob.append(clinical(*paths[1 + runs + 2 * run], None)[0])
            os.killpg(worker.pid, signal.SIGCONT)
            worker = _running_job(capacity)
            time.sleep(1.0)  # the job has had the cores to itself for a second
            latency, bound = clinical(*paths[2 + runs + 2 * run], worker.pid)
            withjob.append(latency)
            if bound is not None:
                bounds.append(bound)
            stop_ms = f"{bound * 1000:.1f} ms" if bound is not None else "not seen"
            print(
                f"pair {run + 1}: no job {nojob[-1] * 1000:.0f} ms, with job {latency * 1000:.0f} ms "
                f"(worker stopped {stop_ms} after storescu start)"
            )
    finally:
        agent.shutdown()
        runner.join(timeout=30)
    signal_ms = [s * 1000 for s in capacity.preemptions]
    print(f"clinical latency, box idle before the job was sent: median {statistics.median(idle) * 1000:.0f} ms")
    print(f"clinical latency without a job: median {statistics.median(nojob) * 1000:.0f} ms ({len(nojob)} runs)")
    print(f"clinical latency with a job:    median {statistics.median(withjob) * 1000:.0f} ms ({len(withjob)} runs)")
    if bounds:
        print(
            f"pre-emption (storescu start -> worker stopped): max {max(bounds) * 1000:.1f} ms, "
            f"median {statistics.median(bounds) * 1000:.1f} ms"
        )
    if signal_ms:
        print(f"pre-emption (SIGSTOP -> stopped, service): max {max(signal_ms):.2f} ms over {len(signal_ms)} pauses")
    print(f"ratio clinical_latency_nojob_vs_with_job = {statistics.median(nojob) / statistics.median(withjob):.3f}")


if __name__ == "__main__":
    main()
