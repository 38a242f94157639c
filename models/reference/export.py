"""Export trained weights to ONNX and write the reference bundle (PyTorch, ``train`` extra).

The bundle holds ``model.onnx`` (input ``image`` ``[N, 1, 512, 1024]``, outputs ``teeth`` at 1/2 resolution and
``findings``, batch dimension dynamic; the full-resolution stages padded for ONNX Runtime's layout, same outputs),
its INT8 variant ``model.int8.onnx`` for ONNX Runtime on the CPU (:mod:`models.reference.quantize`), golden vectors
of each computed with ONNX Runtime on a synthetic radiograph outside the training and held-out sets, and the
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
    Variant,
    load_bundle,
    pack_bundle,
    write_bundle,
)
from models.golden import build_golden
from models.reference.data import EVAL_SEED_BASE, sample
from models.reference.network import UNet
from models.reference.quantize import quantize_int8
from models.reference.spec import ACCEPTS, BUNDLE_ID, CLASSES, DESCRIPTION, INPUT_SPEC, REQUIRES_AGENT, TASK, VERSION
from models.reference.train import load_network

__all__ = [
    "CHANNEL_BLOCK",
    "GOLDEN_ATOL",
    "GOLDEN_SEEDS",
    "INT8_NAME",
    "export_bundle",
    "export_onnx",
    "pad_full_resolution",
]

GOLDEN_SEEDS = (EVAL_SEED_BASE - 1,)
"""Golden inputs: synthetic radiographs outside both the training and the held-out evaluation seeds."""
GOLDEN_ATOL = 0.05
"""Largest difference in logits a backend may show on the golden vectors."""
_GOLDEN_SAMPLES = 4096
INT8_NAME = "model.int8.onnx"


CHANNEL_BLOCK = 16
"""ONNX Runtime's NCHWc layout block on AVX-512 (8 on AVX2): the full-resolution stages are padded up to it."""


def pad_full_resolution(net: UNet, block: int = CHANNEL_BLOCK) -> UNet:
    """The same function as ``net`` with its full-resolution width padded with zero channels to a multiple of ``block``.

    ONNX Runtime computes convolutions in blocks of ``block`` channels anyway; an 8-channel tensor is padded for each
    convolution and reordered back to plain NCHW for the skip connection's concatenation, which cost ~15 ms of a
    ~95 ms run at 512x1024 (bench/RESULTS.md). Padded channels have zero weights, zero bias and BatchNorm mean 0,
    variance 1, scale 0, so they stay zero after ReLU and add exact zeros to every sum: the outputs are unchanged.
    """
    w0 = net.stem[0].out_channels
    padded = -(-w0 // block) * block
    if padded == w0:
        return net
    widths = (padded, *(getattr(net, f"down{i}")[0].out_channels for i in range(1, 5)))
    height, width = (size * 8 for size in net.coords.shape[2:])
    wide = UNet(net.teeth_head.out_channels, net.findings_head.out_channels, height, width, widths)
    w1 = widths[1]
    trained, state = net.state_dict(), {}
    for key, target in wide.state_dict().items():
        old = trained[key]
        new = torch.ones_like(target) if key.endswith("running_var") else torch.zeros_like(target)
        if key == "up0.0.weight":  # inputs are cat([upsampled d1 (w1), stem (w0 -> padded)])
            new[:w0, :w1] = old[:, :w1]
            new[:w0, w1 : w1 + w0] = old[:, w1:]
        else:
            new[tuple(slice(0, n) for n in old.shape)] = old
        state[key] = new
    wide.load_state_dict(state)
    return wide.eval()


def export_onnx(weights: Path) -> bytes:
    """The ONNX graph of the trained network, channel-padded (opset 17, batch dimension dynamic)."""
    net = pad_full_resolution(copy.deepcopy(load_network(weights)))
    dummy = torch.zeros(1, INPUT_SPEC.channels, INPUT_SPEC.height, INPUT_SPEC.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_NAME
        _to_onnx(net.eval(), dummy, path)
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
    int8 = quantize_int8(model)
    files = {MODEL_NAME: model, INT8_NAME: int8}
    golden = _golden(model, "", files)
    variant = Variant(
        precision="int8", file=INT8_NAME, backends=("onnxruntime-cpu",), golden=_golden(int8, ".int8", files)
    )
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
        golden=golden,
        variants=(variant,),
        accepts=ACCEPTS,
    )
    write_bundle(out, pack_bundle(manifest, files))
    load_bundle(out)
    return out


def _golden(network: bytes, suffix: str, files: dict[str, bytes]) -> tuple[GoldenSpec, ...]:
    """Golden vectors of ``network`` on :data:`GOLDEN_SEEDS`, stored in ``files`` (``golden/*<suffix>.npz``)."""
    session = ort.InferenceSession(network, providers=["CPUExecutionProvider"])
    golden = []
    for seed in GOLDEN_SEEDS:
        inputs = sample(seed, INPUT_SPEC).image[np.newaxis].astype(np.float16).astype(np.float32)
        teeth, findings = session.run(["teeth", "findings"], {INPUT_SPEC.name: inputs})
        name = f"golden/synthetic-{seed}{suffix}.npz"
        files[name] = build_golden(inputs, {"teeth": teeth, "findings": findings}, _GOLDEN_SAMPLES, seed)
        golden.append(GoldenSpec(file=name, atol=GOLDEN_ATOL))
    return tuple(golden)
