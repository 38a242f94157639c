"""Ingest throughput: DCMTK's ``storescu`` sends panoramic-sized images to three receivers in one run.

* ``ours``: :class:`~edge.ingest.scp.StorageSCP` + :class:`~edge.store.image_store.ImageStore`, exactly as the
  agent runs them: fsync'd file, rename, fsync'd directory, index row committed (SQLite WAL, synchronous=FULL)
  before each success response;
* ``storescp``: DCMTK's ``storescp``, tuned (largest PDU it accepts, bit-preserving, no host lookup,
  ``TCP_NODELAY=1``); it does not fsync;
* ``bare pynetdicom``: a pynetdicom SCP whose handler only writes ``event.encoded_dataset()`` to a file (no
  fsync, no index), with the same maximum PDU as ours.

Each receiver runs in its own process; ``storescu`` sends the whole corpus over one association, the receivers
take turns ``--rounds`` times and the best round counts. Run from the repository root::

    nice -n 10 .venv/bin/python -m bench.ingest [--images 40] [--rounds 5]

It also times writing the corpus with the store's durability protocol alone (no network, no DICOM), the
ceiling for any receiver that fsyncs on this disk. The last lines are ``ratio ingest_vs_storescp = X`` and
``ratio ingest_vs_bare_pynetdicom = Y``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DCMTK = Path("/usr/bin")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ROWS, COLUMNS = 1400, 2900


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

    from edge.config import DicomConfig

    def on_store(event: object) -> int:
        uid = event.request.AffectedSOPInstanceUID  # type: ignore[attr-defined]
        with (out / f"{uid}.dcm").open("wb") as fh:
            fh.write(event.encoded_dataset())  # type: ignore[attr-defined]
        return 0

    ae = AE(ae_title="BTT_EDGE")
    ae.maximum_pdu_size = DicomConfig().max_pdu_bytes
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    signal.sigwait({signal.SIGTERM})
    server.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(kind: str, out: Path, port: int) -> subprocess.Popen[bytes]:
    if kind == "storescp":
        cmd = [str(DCMTK / "storescp"), "-pdu", "131072", "-dhl", "+B", "-od", str(out), str(port)]
    else:
        cmd = [sys.executable, "-m", "bench.ingest", "--serve", kind, str(out), str(port)]
    process = subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = [str(DCMTK / "echoscu"), "-aec", "BTT_EDGE", "127.0.0.1", str(port)]
    deadline = time.monotonic() + 60
    while subprocess.run(echo, env=DCMTK_ENV, capture_output=True, check=False).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{kind} did not start")
        time.sleep(0.1)
    return process


def _round(kind: str, corpus: list[Path], work: Path) -> float:
    """Seconds for storescu to send the corpus to a fresh receiver of ``kind``."""
    out = work / kind.replace(" ", "_")
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
    from edge.durable import atomic_write_bytes

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
        kinds = ("ours", "storescp", "bare pynetdicom")
        best = dict.fromkeys(kinds, float("inf"))
        for _ in range(args.rounds):
            for kind in kinds:
                best[kind] = min(best[kind], _round(kind, corpus, work))
        ceiling = min(durable_write_seconds(corpus, work / "disk") for _ in range(args.rounds))
        rate = {kind: total_mb / seconds for kind, seconds in best.items()}
        for kind, seconds in best.items():
            print(f"{kind:<16} {seconds:6.2f} s  {rate[kind]:7.1f} MB/s  {len(corpus) / seconds:6.1f} images/s")
        print(
            f"(disk alone: writing the corpus with fsync, rename and directory fsync per file, no network, takes "
            f"{ceiling:.2f} s = {total_mb / ceiling:.0f} MB/s, the ceiling of any receiver that fsyncs here)"
        )
        print(f"ratio ingest_vs_storescp = {rate['ours'] / rate['storescp']:.2f}")
        print(f"ratio ingest_vs_bare_pynetdicom = {rate['ours'] / rate['bare pynetdicom']:.2f}")


if __name__ == "__main__":
    main()
