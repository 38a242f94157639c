"""Native TensorRT 10 (``tensorrt`` + ``pycuda``, the ``gpu`` extra): build an engine from the bundle's ONNX, cache it,
run it with the named-tensor API.

NOT RUN ON A GPU: no accelerator was available to this project. The GPU path (:meth:`TensorRtFactory.load` and
:class:`TensorRtBackend`) is written against TensorRT 10's documented Python API (``OnnxParser``,
``build_serialized_network``, ``IInt8EntropyCalibrator2``, ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``); what runs without a GPU (cache keys, calibration batching, availability) is unit-tested.

An engine is specific to the network, the TensorRT version, the GPU model and the precision, so the cache key
(:func:`engine_cache_key`) hashes all four; a stale or unreadable cached engine is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import BackendError
from edge.pipeline.backends.base import Backend, BackendOptions, Outputs, Precision
from edge.pipeline.backends.registry import BackendKind
from models.bundle import Bundle
from runtime.durable import atomic_write_bytes
from runtime.logs import event

__all__ = [
    "CalibrationBatches",
    "GpuIdentity",
    "TensorRtBackend",
    "TensorRtFactory",
    "engine_cache_key",
    "max_batch",
]

log = logging.getLogger("edge.pipeline.tensorrt")

MAX_BATCH = 4
"""Largest batch the engine's optimisation profile admits for a whole-image network (the pipeline runs batch 1)."""
MAX_BATCH_PIXELS = MAX_BATCH * 512 * 1024
"""The profile's largest batch holds this many input pixels at most (:func:`max_batch`): four 512x1024 images, or
the 32 tooth crops of a two-stage bundle's second network (``CROP_BATCH`` in :mod:`edge.pipeline.analyzer`)."""
MAX_CROP_BATCH = 32


def max_batch(height: int, width: int) -> int:
    """The largest batch an engine for ``height`` x ``width`` inputs admits: :data:`MAX_BATCH` for a whole image,
    up to :data:`MAX_CROP_BATCH` for small inputs (one run for all of an image's tooth crops)."""
    return max(MAX_BATCH, min(MAX_CROP_BATCH, MAX_BATCH_PIXELS // max(1, height * width)))


WORKSPACE_BYTES = 1 << 30
CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine depends on besides the network: the GPU model and the TensorRT version."""

    name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str


def engine_cache_key(model_sha256: str, gpu: GpuIdentity, precision: Precision) -> str:
    """The file stem of a cached engine: a hash of the network, TensorRT version, GPU and precision."""
    doc = {
        "model_sha256": model_sha256,
        "tensorrt": gpu.tensorrt_version,
        "gpu": gpu.name,
        "sm": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
        "precision": precision,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return f"{model_sha256[:12]}-{precision}-{digest[:24]}"


class CalibrationBatches:
    """Prepared images cut into equal batches for the INT8 calibrator (a trailing partial batch is dropped)."""

    def __init__(self, images: npt.NDArray[np.float32], batch_size: int = CALIBRATION_BATCH) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise BackendError(f"INT8 calibration needs prepared images [N, C, H, W], got shape {images.shape}")
        if batch_size < 1:
            raise BackendError(f"calibration batch size must be at least 1, got {batch_size}")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch_size = min(batch_size, int(images.shape[0]))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of every batch."""
        _, c, h, w = self.images.shape
        return self.batch_size, c, h, w

    def __len__(self) -> int:
        return int(self.images.shape[0]) // self.batch_size

    def __iter__(self) -> Iterator[npt.NDArray[np.float32]]:
        for i in range(len(self)):
            yield self.images[i * self.batch_size : (i + 1) * self.batch_size]


def _import_gpu_stack() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)``, initialised; BackendError naming what is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"tensorrt is not installed (the gpu extra): {exc}") from exc
    version = str(getattr(tensorrt, "__version__", "0"))
    if version.split(".", maxsplit=1)[0] != "10":
        raise BackendError(f"TensorRT {version} is installed; this backend needs TensorRT 10")
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError(f"pycuda is not installed (the gpu extra): {exc}") from exc
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises pycuda._driver.Error and subclasses
        raise BackendError(f"CUDA is not usable: {exc}") from exc
    if count < 1:
        raise BackendError("no CUDA device")
    return tensorrt, cuda


def _make_calibrator(trt: Any, cuda: Any, batches: CalibrationBatches, cache: Path | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` that feeds ``batches`` through one device buffer."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._iter = iter(batches)
            self._device = cuda.mem_alloc(int(np.prod(batches.shape)) * 4)

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._iter, None)
            if batch is None:
                return None
            cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.exists() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                atomic_write_bytes(cache, bytes(data))

    return _Calibrator()


class TensorRtBackend:
    """A deserialised engine with one execution context, CUDA context and stream."""

    def __init__(self, trt: Any, cuda: Any, cuda_context: Any, engine: Any, precision: str) -> None:
        self._trt, self._cuda, self._ctx, self._engine = trt, cuda, cuda_context, engine
        self._precision = precision
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if len(self._inputs) != 1:
            raise BackendError(f"the engine has {len(self._inputs)} inputs, expected 1")
        self._ctx.push()
        try:
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
        finally:
            self._ctx.pop()
        self._buffers: dict[str, tuple[int, Any]] = {}

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def precision(self) -> str:
        return self._precision

    def _device(self, name: str, nbytes: int) -> Any:
        size, buf = self._buffers.get(name, (0, None))
        if size < nbytes:
            buf = self._cuda.mem_alloc(nbytes)
            self._buffers[name] = (nbytes, buf)
        return buf

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        trt, cuda = self._trt, self._cuda
        host_in = np.ascontiguousarray(batch, dtype=np.float32)
        self._ctx.push()
        try:
            name_in = self._inputs[0]
            if not self._context.set_input_shape(name_in, tuple(host_in.shape)):
                raise BackendError(f"the engine does not accept input shape {host_in.shape}")
            dev_in = self._device(name_in, host_in.nbytes)
            cuda.memcpy_htod_async(dev_in, host_in, self._stream)
            self._context.set_tensor_address(name_in, int(dev_in))
            hosts: dict[str, npt.NDArray[Any]] = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                host = cuda.pagelocked_empty(shape, trt.nptype(self._engine.get_tensor_dtype(name)))
                dev = self._device(name, host.nbytes)
                self._context.set_tensor_address(name, int(dev))
                hosts[name] = host
            if not self._context.execute_async_v3(self._stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed")
            for name, host in hosts.items():
                cuda.memcpy_dtoh_async(host, self._buffers[name][1], self._stream)
            self._stream.synchronize()
        except BackendError:
            raise
        except Exception as exc:  # tensorrt and pycuda raise their own types
            raise BackendError(f"TensorRT failed to run: {exc}") from exc
        finally:
            self._ctx.pop()
        return {name: np.array(host, dtype=np.float32) for name, host in hosts.items()}

    def close(self) -> None:
        self._ctx.push()
        try:
            self._buffers.clear()
            del self._context
            del self._engine
        finally:
            self._ctx.pop()
            self._ctx.detach()


class TensorRtFactory:
    """Builds (or loads from the cache) a TensorRT engine for a bundle."""

    @property
    def kind(self) -> BackendKind:
        return "tensorrt"

    def unavailable_reason(self) -> str | None:
        try:
            _import_gpu_stack()
        except BackendError as exc:
            return str(exc)
        return None

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        trt, cuda = _import_gpu_stack()
        try:
            device = cuda.Device(0)
            gpu = GpuIdentity(str(device.name()), tuple(device.compute_capability()), str(trt.__version__))
            cuda_context = device.make_context()
        except Exception as exc:
            raise BackendError(f"cannot open the CUDA device: {exc}") from exc
        try:
            engine = self._engine(trt, cuda, bundle, options, gpu)
            cuda_context.pop()
            return TensorRtBackend(trt, cuda, cuda_context, engine, options.precision)
        except BaseException:
            if cuda.Context.get_current() is not None:
                cuda_context.pop()
            cuda_context.detach()
            raise

    def _engine(self, trt: Any, cuda: Any, bundle: Bundle, options: BackendOptions, gpu: GpuIdentity) -> Any:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        key = engine_cache_key(bundle.sha256, gpu, options.precision)
        cached = None if options.engine_cache_dir is None else options.engine_cache_dir / f"{key}.engine"
        if cached is not None and cached.exists():
            engine = runtime.deserialize_cuda_engine(cached.read_bytes())
            if engine is not None:
                event(log, "engine loaded", path=cached)
                return engine
            event(log, "cached engine unreadable, rebuilding", level=logging.WARNING, path=cached)
        plan = self._build(trt, cuda, logger, bundle, options=options, key=key)
        if cached is not None:
            atomic_write_bytes(cached, plan)
            event(log, "engine built", path=cached, precision=options.precision, gpu=gpu.name)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError("TensorRT could not deserialise the engine it just built")
        return engine

    def _build(self, trt: Any, cuda: Any, logger: Any, bundle: Bundle, *, options: BackendOptions, key: str) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(bundle.model_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {bundle.manifest.id}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        spec = bundle.manifest.input
        chw = (spec.channels, spec.height, spec.width)
        profile = builder.create_optimization_profile()
        largest = max_batch(spec.height, spec.width)
        typical = 1 if largest == MAX_BATCH else largest  # whole images come one at a time, crops all at once
        profile.set_shape(spec.name, (1, *chw), (typical, *chw), (largest, *chw))
        config.add_optimization_profile(profile)
        if options.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            if options.calibration is None:
                raise BackendError("TensorRT INT8 needs calibration images (prepared [N, C, H, W])")
            batches = CalibrationBatches(options.calibration)
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(spec.name, batches.shape, batches.shape, batches.shape)
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_calibration_profile(calibration_profile)
            cache = None if options.engine_cache_dir is None else options.engine_cache_dir / f"{key}.calib"
            config.int8_calibrator = _make_calibrator(trt, cuda, batches, cache)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT could not build an engine for {bundle.manifest.id}")
        return bytes(plan)
