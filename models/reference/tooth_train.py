"""Train the reference bundle's second network on tooth crops of synthetic radiographs (PyTorch, ``train`` extra).

Each training radiograph (seeds ``0 .. images - 1``, as for the first network) gives one crop per tooth present,
placed by :func:`edge.pipeline.crops.tooth_crop` from the tooth's true label on the first network's grid (the box
jittered by a few per cent of the tooth's length, as the first network's labels would move it) and sampled by
:func:`edge.pipeline.crops.sample_crops`, the device's own code. Targets are drawn exactly on the crop's grid by
:func:`models.synthetic.render_labels` with only that tooth's planted findings (a neighbour's caries in the corner
of the crop is not this tooth's): masks at half the crop's resolution and, per kind, whether the tooth has it.
Loss: weighted binary cross entropy plus soft Dice on the masks, binary cross entropy on presence. One-cycle
learning rate, AdamW; reproducible from ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from dental.teeth import PERMANENT_FDI
from edge.pipeline.crops import ToothCrop, sample_crops, tooth_crop
from models.reference.data import sample
from models.reference.spec import CLASSES, CROP_INPUT, INPUT_SPEC
from models.reference.tooth_network import ToothNet
from models.reference.train import soft_dice
from models.synthetic import Scene, render_labels

__all__ = ["ToothTrainConfig", "build_tooth_network", "crop_targets", "load_tooth_network", "train_teeth"]


@dataclass(frozen=True)
class ToothTrainConfig:
    """Everything that determines a training run of the second network."""

    seed: int = 20261203
    images: int = 320
    epochs: int = 8
    batch: int = 32
    lr: float = 3e-3
    jitter: float = 0.04
    threads: int = 2


def build_tooth_network() -> ToothNet:
    """The untrained second network for the reference bundle's classes."""
    return ToothNet(len(CLASSES))


def load_tooth_network(weights: Path) -> ToothNet:
    """The second network with trained weights, in eval mode."""
    net = build_tooth_network()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def crop_targets(scene: Scene, crop: ToothCrop, spacing_mm: float) -> npt.NDArray[np.bool_]:
    """Masks ``[K, H/2, W/2]`` of the crop's own tooth's findings, on the crop's grid (crown first)."""
    own = tuple(p for p in scene.planted if p.tooth.fdi == crop.fdi)
    alone = dataclasses.replace(scene, teeth=(), planted=own)
    step = crop.step * 2.0
    xs = (crop.x0 + (np.arange(crop.width // 2) + 0.5) * step) * spacing_mm
    ys = (crop.y0 + (np.arange(crop.height // 2) + 0.5) * step) * spacing_mm
    _labels, masks = render_labels(alone, xs, ys)
    return masks[:, ::-1] if crop.flip else masks


def _one(args: tuple[int, int]) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8]]:
    seed, jitter_seed = args
    s = sample(seed, INPUT_SPEC)
    rng = np.random.default_rng([jitter_seed, seed])
    pixels = s.synthetic.pixels.astype(np.float32)
    crops: list[ToothCrop] = []
    targets: list[npt.NDArray[np.bool_]] = []
    for k, fdi in enumerate(PERMANENT_FDI, start=1):
        rows, cols = np.nonzero(s.teeth == k)
        if rows.size == 0:
            continue
        (x0, y0), (x1, y1) = s.prepared.to_source([[cols.min(), rows.min()], [cols.max() + 1, rows.max() + 1]])
        length = y1 - y0
        dx, dy0, dy1 = rng.normal(0.0, 1.0, 3) * length * 0.04
        crop = tooth_crop(fdi, (x0 + dx, y0 + dy0, x1 + dx, y1 + dy1), CROP_INPUT)
        if crop is None:
            continue
        crops.append(crop)
        targets.append(crop_targets(s.synthetic.scene, crop, s.synthetic.spacing_mm))
    spec = INPUT_SPEC
    batch = sample_crops(pixels, crops, window=s.prepared.window, mean=spec.mean, std=spec.std)
    bits = np.zeros((len(crops), CROP_INPUT.height // 2, CROP_INPUT.width // 2), np.uint8)
    for i, t in enumerate(targets):
        for k in range(t.shape[0]):
            bits[i] |= t[k].astype(np.uint8) << k
    return batch[:, 0].astype(np.float16), bits


def _dataset(count: int, seed: int, workers: int) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8]]:
    with get_context("fork").Pool(workers) as pool:
        parts = pool.map(_one, [(s, seed) for s in range(count)], chunksize=2)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def train_teeth(config: ToothTrainConfig, out: Path, log: bool = True) -> dict[str, object]:
    """Train the second network from scratch and write its weights to ``out`` (and a summary beside them)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    images, bits = _dataset(config.images, config.seed, config.threads)
    if log:
        spent = time.monotonic() - started
        print(f"dataset: {len(images)} crops of {config.images} images in {spent:.0f} s", flush=True)
    kinds = len(CLASSES)
    shifts = torch.arange(kinds, dtype=torch.uint8).view(1, kinds, 1, 1)
    present_all = np.stack([((bits >> k) & 1).reshape(len(bits), -1).any(axis=1) for k in range(kinds)], axis=1)
    rate = present_all.mean(axis=0).clip(1e-3, None)
    present_weight = torch.tensor(np.clip((1 - rate) / rate, 1.0, 10.0), dtype=torch.float32)
    pos_weight = torch.full((1, kinds, 1, 1), 4.0)
    net = build_tooth_network()
    steps_per_epoch = len(images) // config.batch
    steps = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(config.seed)
    trace: list[tuple[int, float]] = []
    net.train()
    step = 0
    for _epoch in range(config.epochs):
        order = rng.permutation(len(images))
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * config.batch : (b + 1) * config.batch])
            x = torch.from_numpy(images[idx].astype(np.float32))[:, None]
            gain = torch.from_numpy(rng.uniform(0.9, 1.1, size=(len(idx), 1, 1, 1)).astype(np.float32))
            x = x * gain
            f = ((torch.from_numpy(bits[idx])[:, None] >> shifts) & 1).float()
            p = torch.from_numpy(present_all[idx].astype(np.float32))
            masks, present = net(x)
            loss = (
                functional.binary_cross_entropy_with_logits(masks, f, pos_weight=pos_weight)
                + soft_dice(masks.sigmoid(), f)
                + functional.binary_cross_entropy_with_logits(present, p, pos_weight=present_weight)
            )
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
            sched.step()
            if step % 25 == 0 or step == steps - 1:
                trace.append((step, round(loss.item(), 4)))
                if log:
                    spent = time.monotonic() - started
                    print(f"step {step:5d}/{steps}  loss {loss.item():.4f}  {spent:.0f} s", flush=True)
            step += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    summary: dict[str, object] = {
        "config": asdict(config),
        "crops": len(images),
        "seconds": round(time.monotonic() - started, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "loss_trace": trace,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
