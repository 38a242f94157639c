"""Inference backends: one interface, the kinds in one registry, and the choice between them.

* :mod:`.registry` — the kinds, best first, each with its factory and options: the one list of backends.
* :mod:`.base` — :class:`Backend` (``name``, ``run(batch) -> {output: array}``, ``close``) and
  :class:`BackendFactory` (``kind``, ``unavailable_reason``, ``load``).
* :mod:`.ort` — ONNX Runtime on the CPU (the default) and with its TensorRT/CUDA execution providers.
* :mod:`.trt` — native TensorRT 10 engines (FP16, INT8 with an entropy calibrator), cached per model/GPU/version.
* :mod:`.selection` — best available by default, forced by configuration, golden vectors checked on each.
* :mod:`.fake` — a working fake for tests.
"""

from edge.pipeline.backends.base import Backend, BackendFactory, BackendOptions, Outputs, Precision
from edge.pipeline.backends.registry import BACKENDS, KINDS, BackendChoice, BackendKind
from edge.pipeline.backends.selection import default_factories, select_backend

__all__ = [
    "BACKENDS",
    "KINDS",
    "Backend",
    "BackendChoice",
    "BackendFactory",
    "BackendKind",
    "BackendOptions",
    "Outputs",
    "Precision",
    "default_factories",
    "select_backend",
]
