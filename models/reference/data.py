"""One synthetic radiograph as the model sees it: input through the device's preprocessing, exact targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.pipeline.preprocess import Prepared, prepare
from models.bundle import InputSpec
from models.synthetic import SyntheticImage, generate, render_labels

__all__ = ["EVAL_SEED_BASE", "Sample", "sample"]

EVAL_SEED_BASE = 1_000_000
"""Held-out images use seeds from here on; training uses seeds below it."""


@dataclass(frozen=True)
class Sample:
    """Model input ``[1, H, W]``, tooth labels ``[H, W]`` (Universal number, 0 none), finding masks ``[K, H, W]``."""

    image: npt.NDArray[np.float32]
    teeth: npt.NDArray[np.uint8]
    findings: npt.NDArray[np.bool_]
    prepared: Prepared
    synthetic: SyntheticImage


def sample(seed: int, spec: InputSpec) -> Sample:
    """Generate the radiograph for ``seed``, prepare it as the device does, and draw its targets on the model grid."""
    synthetic = generate(seed)
    prepared = prepare(synthetic.pixels.astype(np.float32), spec)
    (off_x, off_y), (scale_x, scale_y) = prepared.offset, prepared.scale
    xs = (np.arange(spec.width) + 0.5 - off_x) / scale_x * synthetic.spacing_mm
    ys = (np.arange(spec.height) + 0.5 - off_y) / scale_y * synthetic.spacing_mm
    teeth, findings = render_labels(synthetic.scene, xs, ys)
    return Sample(
        image=prepared.tensor[0],
        teeth=teeth,
        findings=findings,
        prepared=prepared,
        synthetic=synthetic,
    )
