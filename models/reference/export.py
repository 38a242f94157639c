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

from dental.teeth import PERMANENT_FDI
from edge.pipeline.crops import crop_boxes, sample_crops
from edge.pipeline.decoders import repeat_labels, tooth_labels
from models.bundle import (
    MODEL_NAME,
    CropStage,
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
from models.reference.quantize import CALIBRATION_SEEDS, quantize_int8
from models.reference.spec import (
    ACCEPTS,
    BUNDLE_ID,
    CLASSES,
    CROP_INPUT,
    DESCRIPTION,
    INPUT_SPEC,
    REQUIRES_AGENT,
    TASK,
    VERSION,
)
from models.reference.tooth_train import load_tooth_network
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
GOLDEN_CROP_STRIDE = 7
"""Every 7th crop of a golden radiograph is a golden crop (four or five teeth: molars, premolars, incisors)."""
CROPS_NAME = "crops.onnx"
CROPS_INT8_NAME = "crops.int8.onnx"


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
    return _to_onnx(net.eval(), dummy, INPUT_SPEC.name, ("teeth", "findings"))


class _TeethOnly(torch.nn.Module):
    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.teeth(x)


def export_teeth_onnx(weights: Path) -> bytes:
    """The first network of the two-stage bundle: the tooth output alone (``teeth`` at 1/2 resolution)."""
    dummy = torch.zeros(1, INPUT_SPEC.channels, INPUT_SPEC.height, INPUT_SPEC.width)
    return _to_onnx(_TeethOnly(load_network(weights)).eval(), dummy, INPUT_SPEC.name, ("teeth",))


def export_crops_onnx(weights: Path) -> bytes:
    """The second network: tooth crops ``[N, 1, H, W]`` in, ``masks`` and ``present`` out."""
    dummy = torch.zeros(2, 1, CROP_INPUT.height, CROP_INPUT.width)
    return _to_onnx(load_tooth_network(weights).eval(), dummy, CROP_INPUT.name, ("masks", "present"))


def _to_onnx(module: torch.nn.Module, dummy: torch.Tensor, name: str, outputs: tuple[str, ...]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_NAME
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[name],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=17,
            dynamo=False,
        )
        return path.read_bytes()


def export_bundle(weights: Path, out: Path, tooth_weights: Path | None = None) -> Path:
    """Write the reference bundle for ``weights`` into directory ``out`` and verify it loads.

    With ``tooth_weights`` (the second network's) the bundle has two stages: ``model.onnx`` gives the teeth and
    ``crops.onnx`` the findings on each tooth's crop, each with its INT8 variant and golden vectors.
    """
    model = export_onnx(weights) if tooth_weights is None else export_teeth_onnx(weights)
    int8 = quantize_int8(model)
    files = {MODEL_NAME: model, INT8_NAME: int8}
    golden = _golden(model, "", files)
    variant = Variant(
        precision="int8", file=INT8_NAME, backends=("onnxruntime-cpu",), golden=_golden(int8, ".int8", files)
    )
    crops = None if tooth_weights is None else _crop_stage(export_crops_onnx(tooth_weights), model, files)
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
        findings=FindingsOutput(name="findings" if crops is None else "", classes=CLASSES),
        files={},
        golden=golden,
        variants=(variant,),
        accepts=ACCEPTS,
        crops=crops,
    )
    write_bundle(out, pack_bundle(manifest, files))
    load_bundle(out)
    return out


def _golden(
    network: bytes, suffix: str, files: dict[str, bytes], inputs: dict[int, np.ndarray] | None = None
) -> tuple[GoldenSpec, ...]:
    """Golden vectors of ``network`` on :data:`GOLDEN_SEEDS` (or the given ``inputs`` per seed), stored in
    ``files`` (``golden/*<suffix>.npz``)."""
    session = ort.InferenceSession(network, providers=["CPUExecutionProvider"])
    name_in = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    golden = []
    for seed in GOLDEN_SEEDS:
        batch = sample(seed, INPUT_SPEC).image[np.newaxis] if inputs is None else inputs[seed]
        batch = batch.astype(np.float16).astype(np.float32)
        values = session.run(names, {name_in: batch})
        name = f"golden/synthetic-{seed}{suffix}.npz"
        files[name] = build_golden(batch, dict(zip(names, values, strict=True)), _GOLDEN_SAMPLES, seed)
        golden.append(GoldenSpec(file=name, atol=GOLDEN_ATOL))
    return tuple(golden)


def golden_crops(teeth_network: bytes, seed: int) -> np.ndarray:
    """The crops the device makes of synthetic radiograph ``seed`` with ``teeth_network`` as first network."""
    s = sample(seed, INPUT_SPEC)
    session = ort.InferenceSession(teeth_network, providers=["CPUExecutionProvider"])
    (teeth,) = session.run(["teeth"], {INPUT_SPEC.name: s.image[np.newaxis]})
    labels = repeat_labels(tooth_labels(teeth[0], PERMANENT_FDI), (INPUT_SPEC.height, INPUT_SPEC.width))
    crops = crop_boxes(labels, PERMANENT_FDI, s.prepared.to_source, CROP_INPUT)
    pixels = s.synthetic.pixels.astype(np.float32)
    return sample_crops(pixels, crops, window=s.prepared.window, mean=INPUT_SPEC.mean, std=INPUT_SPEC.std)


def _crop_stage(network: bytes, teeth_network: bytes, files: dict[str, bytes]) -> CropStage:
    """The crop stage's files (network, INT8 variant, golden vectors of each) into ``files``, and its block."""
    int8 = quantize_int8(network, (golden_crops(teeth_network, seed) for seed in CALIBRATION_SEEDS))
    files[CROPS_NAME], files[CROPS_INT8_NAME] = network, int8
    # a few teeth of each golden radiograph (all of them would make the golden files most of the bundle)
    inputs = {seed: golden_crops(teeth_network, seed)[::GOLDEN_CROP_STRIDE] for seed in GOLDEN_SEEDS}
    variant = Variant(
        precision="int8",
        file=CROPS_INT8_NAME,
        backends=("onnxruntime-cpu",),
        golden=_golden(int8, ".crops.int8", files, inputs),
    )
    return CropStage(
        file=CROPS_NAME,
        input=CROP_INPUT,
        masks="masks",
        present="present",
        golden=_golden(network, ".crops", files, inputs),
        variants=(variant,),
    )
