"""ONNX Runtime backends: the CPU default and, when the GPU build is installed, its TensorRT and CUDA providers.

The session gets the bundle's verified bytes, never a path, so what runs is what was hashed. Graph optimisation
is at ``ORT_ENABLE_ALL`` (constant folding, conv/batch-norm/activation fusions, NCHWc layout on x86), execution
is sequential with ``threads`` intra-op threads (not spinning) and one inter-op thread, and CPU memory comes from
one process-wide arena whose first chunk holds a whole panoramic's activations (speed and peak memory; see
:func:`session_options`).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import BackendError
from edge.pipeline.backends.base import Backend, BackendOptions, Outputs
from edge.pipeline.backends.registry import BackendKind
from models.bundle import Bundle

__all__ = ["GPU_PROVIDERS", "OrtBackend", "OrtCpuFactory", "OrtGpuFactory", "session_options"]

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
"""ONNX Runtime's GPU execution providers, preferred first."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise BackendError(f"onnxruntime is not importable: {exc}") from exc
    return onnxruntime


ARENA_INITIAL_CHUNK_MB = 256
"""The CPU arena's first chunk. Measured at 512x1024 with the reference U-Net (bench/RESULTS.md): without an arena,
every run page-faults ~300 MB of fresh activations and the model step takes 2.4x as long; ONNX Runtime's default
arena grows by powers of two and peaked at ~530 MB; one chunk this size that the memory pattern fits in peaked at
~390 MB at the same speed. A bigger network simply extends the arena."""

_arena_lock = threading.Lock()


@functools.cache
def _register_arena(ort: Any) -> None:
    """Register the process-wide CPU arena, once (sessions opt in with ``session.use_env_allocators``)."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # (max memory: unlimited, extend strategy: next power of two, initial chunk, max dead bytes: default)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, ARENA_INITIAL_CHUNK_MB * 1024 * 1024, -1))


def session_options(options: BackendOptions) -> Any:
    """The ``SessionOptions`` every ONNX Runtime backend uses."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    # The arena keeps a panoramic's activations resident between runs (see ARENA_INITIAL_CHUNK_MB); one arena for
    # the process, so an A/B model switch reuses it instead of holding two.
    with _arena_lock:  # functools.cache alone may call it twice from two threads; registering twice fails
        _register_arena(ort)
    so.enable_cpu_mem_arena = True
    so.add_session_config_entry("session.use_env_allocators", "1")
    # Worker threads sleep instead of spinning between operators: the box runs the SCP, sync and other jobs beside
    # the model, and on a busy 2-core machine spinning threads took CPU from the ones doing the work.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if options.optimized_model_path is not None:
        so.optimized_model_filepath = str(options.optimized_model_path)
    return so


class OrtBackend:
    """One ONNX Runtime inference session."""

    def __init__(self, bundle: Bundle, options: BackendOptions, providers: list[str], name: str) -> None:
        ort = _ort()
        try:
            self._session = ort.InferenceSession(
                bundle.model_bytes, sess_options=session_options(options), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise BackendError(f"onnxruntime cannot load {bundle.manifest.id}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{bundle.manifest.id}: the network has {len(inputs)} inputs, expected 1")
        self._input = str(inputs[0].name)
        self._outputs = [str(o.name) for o in self._session.get_outputs()]
        self._name = name
        self._precision = bundle.precision

    @property
    def name(self) -> str:
        return self._name

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return list(self._session.get_providers())

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        try:
            values = self._session.run(self._outputs, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        except Exception as exc:
            raise BackendError(f"onnxruntime failed to run: {exc}") from exc
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        del self._session


class OrtCpuFactory:
    """ONNX Runtime on the CPU: always available."""

    @property
    def kind(self) -> BackendKind:
        return "onnxruntime-cpu"

    def unavailable_reason(self) -> str | None:
        try:
            _ort()
        except BackendError as exc:  # pragma: no cover - a runtime dependency
            return str(exc)
        return None

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        return OrtBackend(bundle, options, ["CPUExecutionProvider"], self.kind)


class OrtGpuFactory:
    """ONNX Runtime with its TensorRT or CUDA execution provider (the ``onnxruntime-gpu`` build)."""

    @property
    def kind(self) -> BackendKind:
        return "onnxruntime-gpu"

    def _providers(self) -> list[str]:
        available = set(_ort().get_available_providers())
        return [p for p in GPU_PROVIDERS if p in available]

    def unavailable_reason(self) -> str | None:
        try:
            providers = self._providers()
        except BackendError as exc:  # pragma: no cover - a runtime dependency
            return str(exc)
        if not providers:
            return "onnxruntime has no GPU execution provider here (install onnxruntime-gpu on a CUDA host)"
        return None

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        providers = self._providers()
        if not providers:
            raise BackendError(self.unavailable_reason() or "no GPU execution provider")
        backend = OrtBackend(bundle, options, [*providers, "CPUExecutionProvider"], self.kind)
        if not set(backend.providers) & set(GPU_PROVIDERS):
            backend.close()
            raise BackendError("onnxruntime fell back to the CPU: no GPU execution provider could start")
        return backend
