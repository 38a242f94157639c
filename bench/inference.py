"""Inference benchmark: the reference model through our pipeline (ONNX Runtime backend) beside PyTorch eager.

Both sides analyse the same synthetic panoramic radiographs (DICOM, written once per run) with the same decoding,
the same ``prepare`` and the same post-processing, ``--threads`` threads each; only the model step differs: (a) our
ONNX Runtime CPU backend as the agent selects it (the bundle's float network or its INT8 variant, whichever passes
its golden vectors and is faster here), (a') the same backend held to the float network, (b) the same weights in
PyTorch eager (``models/reference/reference.pt`` and ``tooth.pt``, needs the ``train`` extra). For the two-stage
reference bundle the model step is both networks: the first (teeth) and the second on every tooth crop. Latency is
measured in one process that runs the sides image by image, rotating which goes first, so all see the same load
on a shared machine; peak RSS is measured in a process per side that loads and runs only that side.

Figures: p50/p95 latency of the model step and of end to end (read the file -> findings), per image; peak RSS of
the analysing process; and the peak RSS (VmHWM) of a whole agent (``btt-edge run``: SCP, store, pipeline,
receipts, outbox) that receives the same images from DCMTK's ``storescu`` and analyses them. Ratios are
peer / ours for times and memory (higher is better for us).

    .venv/bin/python -m bench.inference [--images 6] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "bundles" / "reference-dental"
WEIGHTS = REPO / "models" / "reference" / "reference.pt"
CROP_WEIGHTS = REPO / "models" / "reference" / "tooth.pt"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


Analyse = Callable[[Path], tuple[float, int]]
"""Analyse one file: ``(model step ms, number of findings)``."""


def _ours(bundle: Path, threads: int, variants: bool) -> tuple[str, Analyse]:
    from edge.config import PipelineConfig
    from edge.pipeline.analyzer import open_analyzer, read_dataset

    config = PipelineConfig(bundle_path=bundle, backend="onnxruntime-cpu", threads=threads, variants=variants)
    analyzer = open_analyzer(config)

    def analyse(path: Path) -> tuple[float, int]:
        result = analyzer.analyse(read_dataset(path))
        return result.timings_ms["infer"] + result.timings_ms.get("infer_crops", 0.0), len(result.findings)

    return f"{analyzer.backend.name} {analyzer.backend.precision}", analyse


def _torch(bundle: Path, weights: Path, threads: int) -> tuple[str, Analyse]:
    """The same weights in PyTorch eager through the device's own inference path (``infer_findings``): the first
    network (for a two-stage bundle its tooth output alone, as exported), then the tooth crops through the second."""
    import torch

    from edge.pipeline.analyzer import infer_findings, read_dataset
    from edge.pipeline.preprocess import pixel_spacing_mm, pixels_from_dataset
    from models.bundle import load_bundle
    from models.reference.tooth_train import load_tooth_network
    from models.reference.train import load_network

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    manifest = load_bundle(bundle).manifest
    assert manifest.teeth is not None  # the reference network has a tooth output
    net = load_network(weights)
    crops_net = None if manifest.crops is None else load_tooth_network(CROP_WEIGHTS)
    spent = [0.0]

    def run(batch: Any) -> dict[str, Any]:
        start = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if crops_net is not None:
                out = {"teeth": net.teeth(x).numpy()}
            else:
                teeth, findings = net(x)
                out = {"teeth": teeth.numpy(), manifest.findings.name: findings.numpy()}
        spent[0] += (time.perf_counter() - start) * 1000.0
        return out

    def run_crops(batch: Any) -> dict[str, Any]:
        assert crops_net is not None
        start = time.perf_counter()
        with torch.inference_mode():
            masks, present = crops_net(torch.from_numpy(batch))
        spent[0] += (time.perf_counter() - start) * 1000.0
        return {"masks": masks.numpy(), "present": present.numpy()}

    def analyse(path: Path) -> tuple[float, int]:
        ds = read_dataset(path)
        pixels = pixels_from_dataset(ds, modalities=manifest.input.modalities)
        spent[0] = 0.0
        found = infer_findings(
            pixels, manifest, spacing=pixel_spacing_mm(ds), run=run, run_crops=None if crops_net is None else run_crops
        )
        return spent[0], len(found)

    return f"torch {torch.__version__} eager", analyse


def _side(args: argparse.Namespace) -> None:
    """One measuring process: ``ours`` or ``torch`` alone (for its peak RSS), or ``paired`` (for latency)."""
    files = sorted(Path(args.dir).glob("*.dcm"))
    sides: dict[str, tuple[str, Analyse]] = {}
    if args.side in ("ours", "paired"):
        sides["ours"] = _ours(args.bundle, args.threads, variants=True)
    if args.side == "paired":
        sides["fp32"] = _ours(args.bundle, args.threads, variants=False)
    if args.side in ("torch", "paired"):
        sides["torch"] = _torch(args.bundle, args.weights, args.threads)
    out: dict[str, Any] = {
        k: {"name": name, "model_ms": [], "e2e_ms": [], "findings": []} for k, (name, _) in sides.items()
    }
    for _, analyse in sides.values():
        analyse(files[0])  # warm-up
    order = list(sides)
    for _ in range(args.rounds if args.side == "paired" else 1):
        for i, path in enumerate(files):
            # alternate which side goes first, so both see the same machine load on average
            for key in order[i % len(order) :] + order[: i % len(order)]:
                start = time.perf_counter()
                model_ms, count = sides[key][1](path)
                out[key]["e2e_ms"].append((time.perf_counter() - start) * 1000.0)
                out[key]["model_ms"].append(model_ms)
                out[key]["findings"].append(count)
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def _write_images(directory: Path, count: int) -> None:
    from models.synthetic import generate
    from models.synthetic_dicom import synthetic_dicom_bytes

    for i in range(count):
        seed = 900_000 + i  # far from the training seeds
        (directory / f"{i:03d}.dcm").write_bytes(synthetic_dicom_bytes(generate(seed), seed))


def _agent_peak_rss_mb(images: Path, work: Path, bundle: Path, threads: int) -> tuple[float, int]:
    """Run ``btt-edge run``, send every image with storescu, wait until all are analysed; its VmHWM and count."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
    env.update(
        BTT_EDGE_PIPELINE_BUNDLE_PATH=str(bundle),
        BTT_EDGE_PIPELINE_BACKEND="onnxruntime-cpu",
        BTT_EDGE_PIPELINE_THREADS=str(threads),
        BTT_EDGE_PIPELINE_POLL_INTERVAL_S="0.2",
        TCP_NODELAY="1",
    )
    data = work / "agent"
    with (work / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--data-dir", str(data), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        echo = ["/usr/bin/echoscu", "-aec", "BTT_EDGE", "127.0.0.1", str(port)]
        while subprocess.run(echo, env=env, capture_output=True, check=False).returncode != 0:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("btt-edge run did not start:\n" + (work / "agent.log").read_text())
            time.sleep(0.2)
        files = sorted(str(p) for p in images.glob("*.dcm"))
        store = ["/usr/bin/storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(port), *files]
        subprocess.run(store, env=env, capture_output=True, check=True)
        conn = sqlite3.connect(f"file:{data / 'edge.db'}?mode=ro", uri=True)
        while True:
            states = [r[0] for r in conn.execute("SELECT pipeline_state FROM instances")]
            if len(states) == len(files) and all(s in ("analysed", "skipped", "failed", "forwarded") for s in states):
                break
            if agent.poll() is not None or time.monotonic() > deadline + 600:
                raise RuntimeError("the agent did not analyse the images:\n" + (work / "agent.log").read_text())
            time.sleep(0.5)
        conn.close()
        status = Path(f"/proc/{agent.pid}/status").read_text()
        hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return hwm_kb / 1024.0, len(states) - states.count("skipped") - states.count("failed")
    finally:
        agent.terminate()
        agent.wait(30)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--side", choices=("paired", "ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        _side(args)
        return 0
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _write_images(Path(tmp), args.images)
        for side in ("paired", "ours", "torch"):
            cmd = [sys.executable, "-m", "bench.inference", "--side", side, "--dir", tmp, "--rounds", str(args.rounds)]
            cmd += ["--threads", str(args.threads), "--bundle", str(args.bundle), "--weights", str(args.weights)]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return 1
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])
        agent_rss, analysed = _agent_peak_rss_mb(Path(tmp), Path(tmp), args.bundle, args.threads)
    paired = results["paired"]
    figures: dict[str, dict[str, float]] = {}
    for side in ("ours", "fp32", "torch"):
        figures[side] = {
            "model_p50": _pct(paired[side]["model_ms"], 50),
            "model_p95": _pct(paired[side]["model_ms"], 95),
            "e2e_p50": _pct(paired[side]["e2e_ms"], 50),
            "e2e_p95": _pct(paired[side]["e2e_ms"], 95),
            "rss": results.get(side, {}).get("peak_rss_mb", float("nan")),
        }
    ours, fp32, peer = figures["ours"], figures["fp32"], figures["torch"]
    print(
        f"inference: {args.images} synthetic panoramics (512x1024 model input) x {args.rounds} rounds, "
        f"{args.threads} threads, ours and torch alternating image by image in one process"
    )
    for side in ("ours", "fp32", "torch"):
        f = figures[side]
        print(
            f"  {paired[side]['name']:<25} model p50 {f['model_p50']:7.1f} ms  p95 {f['model_p95']:7.1f} ms   "
            f"end-to-end p50 {f['e2e_p50']:7.1f} ms  p95 {f['e2e_p95']:7.1f} ms   peak RSS {f['rss']:6.1f} MB"
        )
    same = {side: paired[side]["findings"] == paired["torch"]["findings"] for side in ("ours", "fp32")}
    print(
        f"  findings per image, ours {paired['ours']['findings'][: args.images]} same as torch: {same['ours']}; "
        f"torch {paired['torch']['findings'][: args.images]}; float network same as torch: {same['fp32']}"
    )
    print(f"  peak RSS of the analysing process (ours alone): {ours['rss']:.0f} MB (budget 600 MB)")
    print(f"  peak RSS of btt-edge run receiving and analysing {analysed} images: {agent_rss:.0f} MB (budget 600 MB)")
    print(f"ratio model_step_vs_torch_eager = {peer['model_p50'] / ours['model_p50']:.2f}")
    print(f"ratio model_step_p95_vs_torch_eager = {peer['model_p95'] / ours['model_p95']:.2f}")
    print(f"ratio model_step_fp32_vs_torch_eager = {peer['model_p50'] / fp32['model_p50']:.2f}")
    print(f"ratio end_to_end_vs_torch_eager = {peer['e2e_p50'] / ours['e2e_p50']:.2f}")
    print(f"ratio peak_rss_vs_torch_eager = {peer['rss'] / ours['rss']:.2f}")
    print(f"ratio agent_peak_rss_vs_600mb_budget = {600.0 / agent_rss:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
