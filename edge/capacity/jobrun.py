"""The job worker: runs one shared job in its own process (``python -m edge.capacity.jobrun BUNDLE BATCH OUT``).

It loads the model bundle (verified against its manifest's hashes), runs the network with ONNX Runtime on every
item of the input batch (``items`` in an ``.npz``: float32 ``[N, C, H, W]`` as the bundle's input expects) and
writes the per-item outputs atomically to ``OUT`` as JSON ``{"items": N, "outputs": [[int, ...], ...]}``: for each
network output, in name order, its mean, minimum and maximum in micro-units. Nothing here knows about patients,
the index or the network; the parent (:mod:`edge.capacity.runner`) sets its limits, pauses and kills it.
Exit status 0 on success, 2 with a message on standard error when the bundle or batch is unusable.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "pack_batch", "summarise"]


def pack_batch(items: np.ndarray) -> bytes:
    """An input batch as :func:`main` reads it: ``items`` (float32 ``[N, C, H, W]``) in an ``.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, items=np.asarray(items, dtype=np.float32))
    return buffer.getvalue()


def summarise(outputs: dict[str, np.ndarray]) -> list[int]:
    """One item's outputs as integers: mean, min and max of each output (name order), in micro-units."""
    values: list[int] = []
    for name in sorted(outputs):
        array = outputs[name].astype(np.float64)
        values.extend(round(float(stat) * 1e6) for stat in (array.mean(), array.min(), array.max()))
    return values


def main(argv: list[str]) -> int:
    from edge.errors import BundleError
    from models.bundle import load_bundle
    from runtime.durable import atomic_write_bytes

    if len(argv) != 3:
        print("usage: python -m edge.capacity.jobrun BUNDLE BATCH OUT", file=sys.stderr)
        return 2
    bundle_path, batch_path, out_path = (Path(arg) for arg in argv)
    threads = int(os.environ.get("BTT_JOB_THREADS", "1"))
    try:
        bundle = load_bundle(bundle_path)
        with np.load(batch_path, allow_pickle=False) as batch:
            items = np.asarray(batch["items"], dtype=np.float32)
    except (BundleError, OSError, KeyError, ValueError) as exc:
        print(f"job: cannot load the bundle or batch: {exc}", file=sys.stderr)
        return 2
    spec = bundle.manifest.input
    if items.ndim != 4 or items.shape[1:] != (spec.channels, spec.height, spec.width):
        print(
            f"job: batch shape {items.shape} does not match [N, {spec.channels}, {spec.height}, {spec.width}]",
            file=sys.stderr,
        )
        return 2
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(bundle.model_bytes, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = []
    for item in items:
        result = session.run(names, {spec.name: item[None]})
        outputs.append(summarise(dict(zip(names, result, strict=True))))
    atomic_write_bytes(out_path, json.dumps({"items": len(outputs), "outputs": outputs}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
