"""Train the reference U-Net on synthetic radiographs (PyTorch, ``train`` extra). Reproducible from one seed.

The training set is ``images`` synthetic radiographs (seeds ``0 .. images - 1``), each prepared by the device's
own :func:`edge.pipeline.preprocess.prepare`. Each step takes ``batch`` random crops (the network is fully
convolutional; the crop's position is passed so that its coordinate channels match the full image). Loss: cross
entropy plus soft Dice for tooth labels, weighted binary cross entropy plus soft Dice for findings.

Up to two stages, each with a fresh optimiser and a one-cycle learning rate: ``steps`` at ``lr``, then, when
``refine_steps`` is not 0, ``refine_steps`` at ``refine_lr`` with a heavier positive weight on the small findings
(caries, periapical lesions). Stage two starts from stage one's weights only, so resuming it from saved stage-one
weights (``resume``) computes the same thing as one uninterrupted run. The committed reference weights are stage
one alone (the default, ``refine_steps = 0``).
"""

from __future__ import annotations

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
from models.reference.data import sample
from models.reference.network import UNet, upsample
from models.reference.spec import CLASSES, INPUT_SPEC

__all__ = ["TrainConfig", "build_network", "load_network", "soft_dice", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run."""

    seed: int = 20260101
    images: int = 240
    steps: int = 700
    batch: int = 4
    crop: tuple[int, int] = (288, 512)
    lr: float = 4e-3
    refine_steps: int = 0
    refine_lr: float = 1.5e-3
    threads: int = 2


def build_network() -> UNet:
    """The untrained reference network for the bundle's input size and classes."""
    return UNet(len(PERMANENT_FDI) + 1, len(CLASSES), INPUT_SPEC.height, INPUT_SPEC.width)


def load_network(weights: Path) -> UNet:
    """The network with trained weights, in eval mode."""
    net = build_network()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def _one(seed: int) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    s = sample(seed, INPUT_SPEC)
    bits = np.zeros(s.teeth.shape, np.uint8)
    for k in range(s.findings.shape[0]):
        bits |= s.findings[k].astype(np.uint8) << k
    return s.image[0].astype(np.float16), s.teeth, bits


def _dataset(count: int, workers: int) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    with get_context("fork").Pool(workers) as pool:
        parts = pool.map(_one, range(count), chunksize=4)
    return (
        np.stack([p[0] for p in parts]),
        np.stack([p[1] for p in parts]),
        np.stack([p[2] for p in parts]),
    )


def soft_dice(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean soft Dice over the channels present in ``target`` (``[N, C, H, W]``); 0 when none is."""
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    present = target.sum(dims) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean() if bool(present.any()) else probs.sum() * 0.0


_DATA = tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]
_SMALL_KINDS = {"caries": 12.0, "periapical_lesion": 8.0}


def _stage(
    net: UNet, data: _DATA, config: TrainConfig, stage: int, *, started: float, log: bool
) -> list[tuple[int, float]]:
    images, teeth, bits = data
    steps, lr = (config.steps, config.lr) if stage == 1 else (config.refine_steps, config.refine_lr)
    rng = np.random.default_rng(config.seed if stage == 1 else [config.seed, stage])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    ch, cw = config.crop
    height, width = images.shape[1:]
    kinds = len(CLASSES)
    shifts = torch.arange(kinds, dtype=torch.uint8).view(1, kinds, 1, 1)
    weights = [(_SMALL_KINDS.get(c.kind, 4.0) if stage == 2 else 4.0) for c in CLASSES]
    pos_weight = torch.tensor(weights).view(1, kinds, 1, 1)
    trace: list[tuple[int, float]] = []
    net.train()
    for step in range(steps):
        oy = int(rng.integers(0, (height - ch) // 8 + 1)) * 8
        ox = int(rng.integers(0, (width - cw) // 8 + 1)) * 8
        idx = rng.integers(0, config.images, size=config.batch)
        x = torch.from_numpy(images[idx, oy : oy + ch, ox : ox + cw].astype(np.float32))[:, None]
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, size=(config.batch, 1, 1, 1)).astype(np.float32))
        x = x * gain
        t = torch.from_numpy(teeth[idx, oy : oy + ch, ox : ox + cw].astype(np.int64))
        f = ((torch.from_numpy(bits[idx, oy : oy + ch, ox : ox + cw])[:, None] >> shifts) & 1).float()
        half_teeth, find_logits = net(x, (oy, ox))
        teeth_logits = upsample(half_teeth)
        teeth_probs = teeth_logits.softmax(1)
        onehot = functional.one_hot(t, teeth_logits.shape[1]).permute(0, 3, 1, 2).float()
        loss = (
            functional.cross_entropy(teeth_logits, t)
            + 0.5 * soft_dice(teeth_probs[:, 1:], onehot[:, 1:])
            + functional.binary_cross_entropy_with_logits(find_logits, f, pos_weight=pos_weight)
            + soft_dice(find_logits.sigmoid(), f)
        )
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            trace.append((step, round(loss.item(), 4)))
            if log:
                print(
                    f"stage {stage} step {step:4d}  loss {loss.item():.4f}  {time.monotonic() - started:.0f} s",
                    flush=True,
                )
    return trace


def train(config: TrainConfig, out: Path, log: bool = True, resume: Path | None = None) -> dict[str, object]:
    """Train from scratch (or stage two from ``resume``, stage one's weights) and write the weights to ``out``."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    data = _dataset(config.images, config.threads)
    if log:
        print(f"dataset: {config.images} images in {time.monotonic() - started:.0f} s", flush=True)
    net = build_network()
    traces: dict[str, list[tuple[int, float]]] = {}
    if resume is None:
        traces["stage1"] = _stage(net, data, config, 1, started=started, log=log)
    else:
        net.load_state_dict(torch.load(resume, map_location="cpu", weights_only=True))
    if config.refine_steps:
        torch.manual_seed(config.seed + 1)
        traces["stage2"] = _stage(net, data, config, 2, started=started, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    summary: dict[str, object] = {
        "config": asdict(config),
        "resumed_from_stage1": resume is not None,
        "seconds": round(time.monotonic() - started, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "loss_trace": traces,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
