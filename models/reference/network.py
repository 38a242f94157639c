"""The reference network: a small U-Net with a tooth-label head and a findings head (PyTorch, ``train`` extra).

Input ``[N, 1, H, W]`` (``H`` and ``W`` multiples of 16). A full-resolution stem and four stride-2 stages down
to 1/16; at 1/8 two coordinate channels (the position across and down the full image, in [-1, 1]) are projected
and added so that the network can tell the patient's right from left and name teeth; a decoder back up with
skips. The tooth head
works at, and returns, 1/2 resolution (tooth labels need context, not the last pixel; training upsamples them with
:func:`upsample` for its loss, the agent repeats the labels): at full resolution the 33 tooth channels would be
the largest tensor the model makes. The findings head works at full resolution (caries are a few pixels across).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

__all__ = ["UNet", "upsample"]


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Small U-Net; ``forward`` returns ``(teeth_logits, findings_logits)`` at 1/2 and at input resolution."""

    coords: torch.Tensor

    def __init__(
        self, teeth: int, findings: int, height: int, width: int, widths: tuple[int, ...] = (8, 16, 32, 48, 64)
    ) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        self.down1 = _block(w0, w1, 2)
        self.down2 = _block(w1, w2, 2)
        self.down3 = _block(w2, w3, 2)
        self.down4 = _block(w3, w4, 2)
        self.position = nn.Conv2d(2, w3, 1)
        self.up3 = _block(w4 + w3, w3)
        self.up2 = _block(w3 + w2, w2)
        self.up1 = _block(w2 + w1, w1)
        self.up0 = _block(w1 + w0, w0)
        self.teeth_head = nn.Conv2d(w1, teeth, 1)
        self.findings_head = nn.Conv2d(w0, findings, 1)
        ys = torch.linspace(-1.0, 1.0, height // 8)
        xs = torch.linspace(-1.0, 1.0, width // 8)
        grid = torch.stack([xs[None, :].expand(ys.numel(), -1), ys[:, None].expand(-1, xs.numel())])
        self.register_buffer("coords", grid[None], persistent=True)

    def forward(self, x: torch.Tensor, offset: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset``: ``(row, col)`` of a crop within the full image (training; multiple of 16); None: the image."""
        s0, d1 = self._half(x, offset)
        d0 = self.up0(torch.cat([upsample(d1), s0], 1))
        return self.teeth_head(d1), self.findings_head(d0)

    def teeth(self, x: torch.Tensor) -> torch.Tensor:
        """The tooth logits alone (a two-stage bundle's first network: its findings come from tooth crops, so the
        full-resolution decoder stage and the findings head are not computed)."""
        return self.teeth_head(self._half(x, None)[1])

    def _half(self, x: torch.Tensor, offset: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stem features, decoder features at 1/2)``."""
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        coords = self.coords
        if offset is not None:
            oy, ox = offset[0] // 8, offset[1] // 8
            coords = coords[:, :, oy : oy + s3.shape[2], ox : ox + s3.shape[3]]
        s4 = self.down4(s3 + self.position(coords))
        d3 = self.up3(torch.cat([upsample(s4), s3], 1))
        d2 = self.up2(torch.cat([upsample(d3), s2], 1))
        d1 = self.up1(torch.cat([upsample(d2), s1], 1))
        return s0, d1


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Twice the size, bilinear."""
    return functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
