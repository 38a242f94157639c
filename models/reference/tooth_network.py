"""The reference bundle's second network: findings on one tooth's full-resolution crop (PyTorch, ``train`` extra).

Input ``[N, 1, H, W]`` crops (:mod:`edge.pipeline.crops`: upright, crown first; ``H`` and ``W`` multiples of 16).
Outputs ``masks`` ``[N, K, H/2, W/2]`` logits (one independent sigmoid per finding kind: where on this tooth) and
``present`` ``[N, K]`` logits (whether this tooth has the finding at all, from the pooled deepest features and each
mask's strongest pixel). A small encoder-decoder: a stride-2 stem (the crop is already at the source's resolution;
half of it keeps a 2 mm caries lesion five pixels across), three stride-2 stages to 1/16, single-convolution
decoder stages back up to 1/2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

__all__ = ["ToothNet"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ToothNet(nn.Module):
    """``forward(crops) -> (masks, present)``."""

    def __init__(self, kinds: int, widths: tuple[int, int, int, int] = (12, 24, 48, 64)) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(_conv(1, w0, 2), _conv(w0, w0))
        self.down1 = nn.Sequential(_conv(w0, w1, 2), _conv(w1, w1))
        self.down2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))
        self.down3 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3))
        self.up2 = _conv(w3 + w2, w2)
        self.up1 = _conv(w2 + w1, w1)
        self.up0 = _conv(w1 + w0, w0)
        self.masks = nn.Conv2d(w0, kinds, 1)
        self.present = nn.Linear(2 * w3 + kinds, kinds)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        d2 = self.up2(torch.cat([_up(s3), s2], 1))
        d1 = self.up1(torch.cat([_up(d2), s1], 1))
        d0 = self.up0(torch.cat([_up(d1), s0], 1))
        masks = self.masks(d0)
        pooled = torch.cat([s3.mean((2, 3)), s3.amax((2, 3)), masks.amax((2, 3))], 1)
        return masks, self.present(pooled)


def _up(x: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(x, scale_factor=2.0, mode="nearest")
