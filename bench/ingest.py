"""Ingest throughput: DCMTK's ``storescu`` sends panoramic-sized images to three receivers in one run.

* ``ours``: :class:`~edge.ingest.scp.StorageSCP` + :class:`~edge.store.image_store.ImageStore`, exactly as the
  agent runs them: fsync'd file, rename, fsync'd directory, index row committed (SQLite WAL, synchronous=FULL)
  before each success response;
* ``storescp``: DCMTK's ``storescp``, tuned (largest PDU it accepts, bit-preserving, no host lookup,
  ``TCP_NODELAY=1``); it does not fsync;
* ``bare pynetdicom``: a pynetdicom SCP whose handler only writes ``event.encoded_dataset()`` to a file (no
  fsync, no index), with the same maximum PDU as ours;
* ``agent, no AI`` and ``agent, analysing``: the whole agent, ``btt-edge run`` (results off, the reference bundle
  on ONNX Runtime's CPU backend), with ``[pipeline] enabled`` false and true. The analysing agent's model is
  loaded before the batch is sent; its round ends when ``storescu`` is done, then the bench waits until every
  image is analysed and counts them (the batch is refused as a result if one is not). With ``--no-yield`` a third,
  ``agent, no yield``, analyses with ``[pipeline] ingest_quiet_s = 0`` (analysis does not wait for ingest: how the
  agent ran before it yielded).

Each receiver runs in its own process; ``storescu`` sends the whole corpus over one association, the receivers
take turns ``--rounds`` times and the best round counts. Run from the repository root::

    nice -n 10 .venv/bin/python -m bench.ingest [--images 40] [--rounds 5] [--no-yield]

It also times writing the corpus with the store's durability protocol alone (no network, no DICOM), the
ceiling for any receiver that fsyncs on this disk. The last lines are ``ratio ingest_vs_storescp = X``,
``ratio ingest_vs_bare_pynetdicom = Y`` and ``ratio ingest_with_analysis_vs_without = Z`` (the analysing agent's
rate over the agent's without analysis; best rounds, then the same of the median rounds).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

DCMTK = Path("/usr/bin")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ROWS, COLUMNS = 1400, 2900
BUNDLE = Path(__file__).resolve().parent.parent / "models" / "bundles" / "reference-dental"
AGENT_ENV = {
    **{k: v for k, v in DCMTK_ENV.items() if not k.startswith("BTT_EDGE_")},
    "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(BUNDLE),
    "BTT_EDGE_PIPELINE_BACKEND": "onnxruntime-cpu",
    "BTT_EDGE_RESULTS_ENABLED": "false",
}
AGENTS = {  # kind -> environment of its `btt-edge run`
    "agent, no AI": {**AGENT_ENV, "BTT_EDGE_PIPELINE_ENABLED": "false"},
    "agent, analysing": AGENT_ENV,
    "agent, no yield": {**AGENT_ENV, "BTT_EDGE_PIPELINE_INGEST_QUIET_S": "0"},
}
DONE_STATES = ("analysed", "skipped", "failed")


def make_corpus(directory: Path, count: int) -> list[Path]:
    """``count`` 16-bit panoramic-sized DX images with distinct UIDs, explicit VR little endian."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (ROWS, COLUMNS), dtype=np.uint16).tobytes()
    study = generate_uid()
    paths = []
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Panoramic", "PX"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        paths.append(directory / f"pano{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


# --- receivers (each runs in a child process: `python -m bench.ingest --serve KIND DIR PORT`) ---------------


def _serve_ours(out: Path, port: int) -> None:
    from edge.config import DicomConfig
    from edge.ingest.scp import StorageSCP
    from edge.store.image_store import ImageStore

    store = ImageStore(out, min_free_mb=0, duplicate_policy="keep")
    scp = StorageSCP(DicomConfig(bind_address="127.0.0.1", port=port), store)
    store.start()
    scp.start()
    signal.sigwait({signal.SIGTERM})
    scp.stop()
    store.stop()


def _serve_bare(out: Path, port: int) -> None:
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from edge.config import DicomConfig

    def on_store(event: Event) -> int:
        assert isinstance(event.request, C_STORE)
        uid = event.request.AffectedSOPInstanceUID
        with (out / f"{uid}.dcm").open("wb") as fh:
            fh.write(event.encoded_dataset())
        return 0

    ae = AE(ae_title="BTT_EDGE")
    ae.maximum_pdu_size = DicomConfig().max_pdu_bytes
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None  # not blocking: the server is returned
    signal.sigwait({signal.SIGTERM})
    server.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(kind: str, out: Path, port: int) -> subprocess.Popen[bytes]:
    env = DCMTK_ENV
    log: int | IO[bytes] = subprocess.DEVNULL
    if kind == "storescp":
        cmd = [str(DCMTK / "storescp"), "-pdu", "131072", "-dhl", "+B", "-od", str(out), str(port)]
    elif kind in AGENTS:
        cmd = [sys.executable, "-m", "edge", "run", "--data-dir", str(out), "--port", str(port)]
        env, log = AGENTS[kind], (out.parent / f"{out.name}.log").open("wb")
    else:
        cmd = [sys.executable, "-m", "bench.ingest", "--serve", kind, str(out), str(port)]
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    echo = [str(DCMTK / "echoscu"), "-aec", "BTT_EDGE", "127.0.0.1", str(port)]
    deadline = time.monotonic() + 120
    while subprocess.run(echo, env=DCMTK_ENV, capture_output=True, check=False).returncode != 0 or (
        env.get("BTT_EDGE_PIPELINE_ENABLED") != "false" and kind in AGENTS and not _model_loaded(out)
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{kind} did not start")
        time.sleep(0.1)
    if kind in AGENTS:
        time.sleep(1.0)  # past the agent's start-up (its services' first passes), as when a unit sends later
    return process


def _model_loaded(out: Path) -> bool:
    """Whether the agent writing to ``out`` has its model loaded (it logs each active model once it has)."""
    return "model active" in (out.parent / f"{out.name}.log").read_text(errors="replace")


def _analysed(out: Path, count: int) -> tuple[int, float]:
    """Wait until the agent on ``out`` has finished every one of ``count`` instances; how many were analysed, and
    the seconds that took from now."""
    started = time.perf_counter()
    deadline = time.monotonic() + 60 + 30 * count
    conn = sqlite3.connect(f"file:{out / 'edge.db'}?mode=ro", uri=True)
    try:
        while True:
            states = [str(r[0]) for r in conn.execute("SELECT pipeline_state FROM instances")]
            if len(states) == count and all(s in DONE_STATES for s in states):
                return states.count("analysed"), time.perf_counter() - started
            if time.monotonic() > deadline:
                raise SystemExit(f"not analysed in time: {collections.Counter(states)}")
            time.sleep(0.1)
    finally:
        conn.close()


def _round(kind: str, corpus: list[Path], work: Path, analysed: dict[str, list[tuple[int, float]]]) -> float:
    """Seconds for storescu to send the corpus to a fresh receiver of ``kind``; an analysing agent's count of
    analysed images and the seconds it took after the batch go to ``analysed[kind]``."""
    out = work / kind.replace(" ", "_").replace(",", "")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = _free_port()
    process = _start(kind, out, port)
    try:
        subprocess.run(["sync"], check=True)  # start every round with clean page cache write-back
        cmd = [str(DCMTK / "storescu"), "-aec", "BTT_EDGE", "127.0.0.1", str(port), *map(str, corpus)]
        started = time.perf_counter()
        result = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if result.returncode == 0 and kind in analysed:
            analysed[kind].append(_analysed(out, len(corpus)))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    if result.returncode != 0:
        raise SystemExit(f"storescu to {kind} failed: {result.stderr[-2000:]}")
    smallest = min(p.stat().st_size for p in corpus) - 4096  # file meta differs a little between receivers
    stored = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size >= smallest]
    if len(stored) < len(corpus):
        raise SystemExit(f"{kind} stored {len(stored)} of {len(corpus)} images")
    return elapsed


def durable_write_seconds(corpus: list[Path], out: Path) -> float:
    """Seconds to write the corpus with our durability protocol alone (no network, no DICOM): the ceiling of
    any receiver that fsyncs on this disk. Each file: write, fsync, rename, fsync the directory."""
    from runtime.durable import atomic_write_bytes

    out.mkdir(exist_ok=True)
    data = [p.read_bytes() for p in corpus]
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    for path, content in zip(corpus, data, strict=True):
        atomic_write_bytes(out / path.name, content)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40, help="images in the corpus (default 40, ~8 MB each)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per receiver; the best counts")
    parser.add_argument("--work-dir", type=Path, help="where corpus and receivers write (default: system temp)")
    parser.add_argument("--no-yield", action="store_true", help="also an analysing agent that does not yield")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, out, port = args.serve
        serve: Callable[[Path, int], None] = _serve_ours if kind == "ours" else _serve_bare
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        serve(Path(out), int(port))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        (work / "corpus").mkdir()
        corpus = make_corpus(work / "corpus", args.images)
        total_mb = sum(p.stat().st_size for p in corpus) / 1e6
        print(f"corpus: {len(corpus)} images of {ROWS}x{COLUMNS} 16-bit, {total_mb:.0f} MB; storescu, one association")
        kinds = ["ours", "storescp", "bare pynetdicom", "agent, no AI", "agent, analysing"]
        kinds += ["agent, no yield"] if args.no_yield else []
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        analysed: dict[str, list[tuple[int, float]]] = {k: [] for k in kinds if k in AGENTS and k != "agent, no AI"}
        for _ in range(args.rounds):  # the receivers take turns, so each sees the machine's load alike
            for kind in kinds:
                seconds[kind].append(_round(kind, corpus, work, analysed))
        ceiling = min(durable_write_seconds(corpus, work / "disk") for _ in range(args.rounds))
        rate = {kind: total_mb / min(rounds) for kind, rounds in seconds.items()}
        median = {kind: total_mb / statistics.median(rounds) for kind, rounds in seconds.items()}
        for kind, rounds in seconds.items():
            print(
                f"{kind:<17} {min(rounds):6.2f} s  {rate[kind]:7.1f} MB/s  {len(corpus) / min(rounds):6.1f} images/s"
                f"   (median round {median[kind]:6.1f} MB/s)"
            )
        print(
            f"(disk alone: writing the corpus with fsync, rename and directory fsync per file, no network, takes "
            f"{ceiling:.2f} s = {total_mb / ceiling:.0f} MB/s, the ceiling of any receiver that fsyncs here)"
        )
        for kind, outcomes in analysed.items():
            counts = " ".join(str(n) for n, _ in outcomes)
            after = " ".join(f"{s:.1f}" for _, s in outcomes)
            print(f"{kind}: analysed {counts} of {len(corpus)} per round; the last finished {after} s after the batch")
        print(f"ratio ingest_vs_storescp = {rate['ours'] / rate['storescp']:.2f}")
        print(f"ratio ingest_vs_bare_pynetdicom = {rate['ours'] / rate['bare pynetdicom']:.2f}")
        if "agent, no yield" in rate:
            no_yield = rate["agent, no yield"] / rate["agent, no AI"]
            print(f"ratio ingest_without_yield_vs_without_analysis = {no_yield:.2f}")
        print(f"ratio ingest_with_analysis_vs_without = {rate['agent, analysing'] / rate['agent, no AI']:.2f}")
        with_analysis = median["agent, analysing"] / median["agent, no AI"]
        print(f"ratio ingest_with_analysis_vs_without_median = {with_analysis:.2f}")
        if any(n < len(corpus) for rounds in analysed.values() for n, _ in rounds):
            raise SystemExit("an analysing agent did not analyse every image")


if __name__ == "__main__":
    main()
