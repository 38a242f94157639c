"""The overlay's picture: the radiograph windowed as it would be displayed."""

from __future__ import annotations

import numpy as np

from edge.pipeline.preprocess import pixels_from_dataset
from edge.results.overlay import _to_grey8
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset


def test_window_from_a_sample_of_the_pixels_matches_the_whole() -> None:
    """The display window is taken over a regular sample of a panoramic's pixels: the picture is the one the
    percentiles of every pixel give, within a grey level."""
    pixels = pixels_from_dataset(synthetic_dataset(generate(3), 3))
    assert pixels.size > 1_000_000
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    whole = np.clip((pixels - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    difference = np.abs(_to_grey8(pixels.copy()).astype(np.int16) - whole)
    assert difference.max() <= 1
