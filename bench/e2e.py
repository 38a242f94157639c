"""End to end: from the end of a ``storescu`` send of a panoramic to the SR's arrival at ``storescp``.

    .venv/bin/python -m bench.e2e [--runs 20] [--warmup 2] [--bundle models/bundles/reference-dental]

DCMTK's ``storescu`` sends a synthetic panoramic (``models.synthetic``, about 1100 x 2100, 4.6 MB) to ``btt-edge
run --forward PACS@127.0.0.1:<port>`` (CPU backend, 2 threads), and DCMTK's ``storescp`` plays the PACS. Latency is
measured from the moment ``storescu`` exits (the agent has acknowledged the image: it is durable and indexed)
until the agent has the PACS's C-STORE confirmation of the SR (``storescp`` has written it) recorded, observed by
polling the agent's database every 5 ms; the agent's CPU time (all threads, from /proc) over the same interval is
shown beside it: on cores nobody else uses, the latency would be about that (less where inference runs two
threads, plus the polling waits, ``wait`` below). Each image's overlay is delivered
before the next image is sent, so images do not overlap. The stage breakdown comes from the agent's own records:
``store`` (storescu's send, including the durable store), ``wait`` (until the pipeline takes the image), ``decode``,
``preprocess``, ``infer``, ``crops``, ``infer_crops``, ``postprocess`` (the pipeline's timings; the crops stages
for a two-stage bundle), ``write`` (until the SR is built, written
durably and queued; includes the results service's poll) and ``send`` (C-STORE of the SR, confirmed).

The peer, in the same run: ``storescu`` sending the same panoramic straight to ``storescp`` (what the PACS gets
without the box). ``ratio e2e_vs_direct_store`` = direct store time / our latency (p50); ``ratio
p95_vs_goal`` = 2 s / our p95 (at least 1 means the goal "p95 under 2 s" is met).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from models.synthetic import generate
from models.synthetic_dicom import synthetic_dicom_bytes

STORESCU, STORESCP, ECHOSCU = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/echoscu"
ENV = {**os.environ, "TCP_NODELAY": "1"}
PIPELINE = ("decode", "preprocess", "infer", "crops", "infer_crops", "postprocess")
"""The pipeline's own stages (``crops`` and ``infer_crops``: a two-stage bundle's tooth crops and second network)."""
STAGES = ("store", "wait", *PIPELINE, "write", "send")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_echo(port: int, ae: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while subprocess.run(
        [ECHOSCU, "-aec", ae, "127.0.0.1", str(port)], env=ENV, capture_output=True, check=False
    ).returncode:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{ae} on port {port} did not start")
        time.sleep(0.1)


def _store(port: int, ae: str, path: Path) -> float:
    start = time.perf_counter()
    subprocess.run([STORESCU, "-aec", ae, "127.0.0.1", str(port), str(path)], env=ENV, check=True)
    return time.perf_counter() - start


def _epoch(stamp: str) -> float:
    """``2026-11-24T10:00:00.123Z`` -> seconds since the epoch."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


_SENT = (
    "SELECT d.sent_at, o.created_at FROM results_deliveries d JOIN results_objects o ON o.object_uid = d.object_uid "
    "WHERE o.source_sop_uid = ? AND o.kind = ? AND d.state = 'sent'"
)


def _cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latency(db: Path, uid: str, kind: str = "sr", timeout: float = 60) -> tuple[float, sqlite3.Row]:
    """Seconds from now until the ``kind`` object of ``uid`` is confirmed by the PACS, and its row."""
    start = time.perf_counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        while True:
            try:
                row = conn.execute(_SENT, (uid, kind)).fetchone()
            except sqlite3.OperationalError:  # tables not created yet
                row = None
            if row is not None:
                return time.perf_counter() - start, row
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"no {kind} for {uid} within {timeout} s")
            time.sleep(0.005)
    finally:
        conn.close()


def _stages(db: Path, uid: str, store_s: float, sr: sqlite3.Row) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        received_at = conn.execute("SELECT received_at FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()[0]
        recorded_at, timings = conn.execute(
            "SELECT recorded_at, timings_json FROM pipeline_results WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
    finally:
        conn.close()
    t = {k: v / 1000 for k, v in json.loads(timings).items()}
    analysed = sum(t.get(k, 0.0) for k in PIPELINE)
    return {
        "store": store_s,
        "wait": max(0.0, _epoch(recorded_at) - _epoch(received_at) - t.get("total", analysed)),
        **{k: t.get(k, 0.0) for k in PIPELINE},
        "write": _epoch(sr["created_at"]) - _epoch(recorded_at),
        "send": _epoch(sr["sent_at"]) - _epoch(sr["created_at"]),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=Path("models/bundles/reference-dental"))
    args = parser.parse_args()
    if not args.bundle.exists():
        raise SystemExit(f"no model bundle at {args.bundle}")
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        images = []
        for seed in range(args.warmup + args.runs):
            path = root / f"pano{seed}.dcm"
            path.write_bytes(synthetic_dicom_bytes(generate(1000 + seed), 1000 + seed))
            images.append(path)
        from pydicom import dcmread

        uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in images]
        pacs_port, agent_port = _port(), _port()
        (root / "pacs").mkdir()
        pacs = subprocess.Popen([STORESCP, "-aet", "PACS", "-od", str(root / "pacs"), str(pacs_port)], env=ENV)
        env = {
            **{k: v for k, v in ENV.items() if not k.startswith("BTT_EDGE_")},
            "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(args.bundle.resolve()),
            "BTT_EDGE_PIPELINE_BACKEND": "onnxruntime-cpu",
        }
        data = root / "data"
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--data-dir", str(data), "--port", str(agent_port),
             "--forward", f"PACS@127.0.0.1:{pacs_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=(root / "agent.log").open("wb"),
        )  # fmt: skip
        try:
            _wait_echo(pacs_port, "PACS", pacs)
            _wait_echo(agent_port, "BTT_EDGE", agent)
            db = data / "edge.db"
            ours: list[float] = []
            stages: list[dict[str, float]] = []
            direct: list[float] = []
            cpu: list[float] = []
            for i, (path, uid) in enumerate(zip(images, uids, strict=True)):
                store_s = _store(agent_port, "BTT_EDGE", path)
                cpu_start = _cpu_s(agent.pid)
                latency, sr = _latency(db, uid)
                cpu.append(_cpu_s(agent.pid) - cpu_start)
                _latency(db, uid, "overlay")  # the overlay follows; let it finish before the next image
                direct_s = _store(pacs_port, "PACS", path)  # the peer, interleaved
                if i >= args.warmup:
                    ours.append(latency)
                    stages.append(_stages(db, uid, store_s, sr))
                    direct.append(direct_s)
        finally:
            agent.terminate()
            agent.wait(30)
            pacs.terminate()
            pacs.wait(10)
    p50, p95 = statistics.median(ours), _pct(ours, 0.95)
    print(f"e2e: {args.runs} panoramics (1104 x 2086, 4.6 MB), CPU, after {args.warmup} warm-up")
    print(f"  end of storescu send -> SR at storescp   p50 {p50 * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms"
          f"   max {max(ours) * 1000:7.0f} ms")  # fmt: skip
    cpu = cpu[args.warmup :]
    print(f"  agent CPU time in that interval          p50 {statistics.median(cpu) * 1000:7.0f} ms   p95 "
          f"{_pct(cpu, 0.95) * 1000:7.0f} ms   (all threads)")  # fmt: skip
    print(f"  direct storescu -> storescp (peer)       p50 {statistics.median(direct) * 1000:7.0f} ms")
    print(
        "  stages (p50 ms):  " + "  ".join(f"{s} {statistics.median(x[s] for x in stages) * 1000:.0f}" for s in STAGES)
    )
    print("  stages (p95 ms):  " + "  ".join(f"{s} {_pct([x[s] for x in stages], 0.95) * 1000:.0f}" for s in STAGES))
    print(f"ratio e2e_vs_direct_store = {statistics.median(direct) / p50:.2f}")
    print(f"ratio p95_vs_goal = {2.0 / p95:.2f}")


if __name__ == "__main__":
    main()
