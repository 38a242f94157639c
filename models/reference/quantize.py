"""The reference network's INT8 variant for ONNX Runtime on the CPU (``train`` extra: needs ``onnx``).

Static quantisation in ONNX's QDQ form: weights signed 8-bit per output channel, activations unsigned 8-bit with
ranges from the minimum and maximum seen on :data:`CALIBRATION_SEEDS` (training radiographs), every convolution but
the stem's, whose single input channel makes an 8-bit convolution slower than the float one. Deterministic for a
given ONNX Runtime version. On the held-out set its Dice scores are within 0.003 of the float network's (README); on
the VM with AVX-512 VNNI it ran 10-25 % faster, on another VM slower, and a CPU whose 8-bit kernels round otherwise
computes different values: so it ships as a variant that the agent checks against its own golden vectors and times
before using it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from models.reference.data import sample
from models.reference.spec import INPUT_SPEC

__all__ = ["CALIBRATION_SEEDS", "EXCLUDED_NODES", "quantize_int8"]

CALIBRATION_SEEDS = range(8)
"""Synthetic radiographs whose activations set the quantisation ranges: the first training images."""
EXCLUDED_NODES = ("/stem/stem.0/Conv",)
"""Left in float: the stem convolution (one input channel)."""


class _Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        self._seeds = iter(CALIBRATION_SEEDS)

    def get_next(self) -> dict[str, np.ndarray] | None:
        seed = next(self._seeds, None)
        return None if seed is None else {INPUT_SPEC.name: sample(seed, INPUT_SPEC).image[np.newaxis]}


def quantize_int8(model: bytes) -> bytes:
    """The INT8 (QDQ) graph of the float ONNX ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        quantize_static(
            str(source),
            str(target),
            _Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(EXCLUDED_NODES),
            calibrate_method=CalibrationMethod.MinMax,
        )
        return target.read_bytes()
