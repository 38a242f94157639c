"""Export trained weights to ONNX and write the reference bundle (PyTorch, ``train`` extra).

The bundle holds ``model.onnx`` (input ``image`` ``[N, 1, 512, 1024]``, outputs ``teeth`` and ``findings``,
batch dimension dynamic), golden vectors computed with ONNX Runtime on held-out synthetic radiographs, and the
manifest with the sha256 of every file.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge.pipeline.teeth import PERMANENT_FDI
from models.bundle import (
    MODEL_NAME,
    FindingsOutput,
    GoldenSpec,
    Manifest,
    TeethOutput,
    load_bundle,
    pack_bundle,
    write_bundle,
)
from models.golden import build_golden
from models.reference.data import EVAL_SEED_BASE, sample
from models.reference.spec import BUNDLE_ID, CLASSES, DESCRIPTION, INPUT_SPEC, REQUIRES_AGENT, TASK, VERSION
from models.reference.train import load_network

__all__ = ["GOLDEN_ATOL", "GOLDEN_SEEDS", "export_bundle", "export_onnx"]

GOLDEN_SEEDS = (EVAL_SEED_BASE - 1,)
"""Golden inputs: synthetic radiographs outside both the training and the held-out evaluation seeds."""
GOLDEN_ATOL = 0.05
"""Largest difference in logits a backend may show on the golden vectors."""
_GOLDEN_SAMPLES = 4096


class _Exported(torch.nn.Module):
    """The network with the full-image coordinate offset fixed, so the graph has one input."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out: tuple[torch.Tensor, torch.Tensor] = self.net(image)
        return out


def export_onnx(weights: Path) -> bytes:
    """The ONNX graph of the trained network (opset 17, batch dimension dynamic)."""
    net = copy.deepcopy(load_network(weights))
    dummy = torch.zeros(1, INPUT_SPEC.channels, INPUT_SPEC.height, INPUT_SPEC.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_NAME
        _to_onnx(_Exported(net).eval(), dummy, path)
        return path.read_bytes()


def _to_onnx(module: torch.nn.Module, dummy: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        input_names=[INPUT_SPEC.name],
        output_names=["teeth", "findings"],
        dynamic_axes={INPUT_SPEC.name: {0: "batch"}, "teeth": {0: "batch"}, "findings": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def export_bundle(weights: Path, out: Path) -> Path:
    """Write the reference bundle for ``weights`` into directory ``out`` and verify it loads."""
    model = export_onnx(weights)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    files = {MODEL_NAME: model}
    golden = []
    for seed in GOLDEN_SEEDS:
        inputs = sample(seed, INPUT_SPEC).image[np.newaxis].astype(np.float16).astype(np.float32)
        teeth, findings = session.run(["teeth", "findings"], {INPUT_SPEC.name: inputs})
        name = f"golden/synthetic-{seed}.npz"
        files[name] = build_golden(inputs, {"teeth": teeth, "findings": findings}, _GOLDEN_SAMPLES, seed)
        golden.append(GoldenSpec(file=name, atol=GOLDEN_ATOL))
    manifest = Manifest(
        format=1,
        id=BUNDLE_ID,
        version=VERSION,
        task=TASK,
        requires_agent=REQUIRES_AGENT,
        clinical=False,
        description=DESCRIPTION,
        input=INPUT_SPEC,
        teeth=TeethOutput(name="teeth", labels_fdi=PERMANENT_FDI),
        findings=FindingsOutput(name="findings", classes=CLASSES),
        files={},
        golden=tuple(golden),
    )
    write_bundle(out, pack_bundle(manifest, files))
    load_bundle(out)
    return out
