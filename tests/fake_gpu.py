"""Stand-ins for ``tensorrt`` 10 and ``pycuda.driver`` that run on the CPU, for testing the TensorRT backend's logic.

They model only what the backend uses: the ONNX parser, builder config and optimisation profiles, the INT8
calibrator protocol (``get_batch`` until ``None``, then ``write_calibration_cache``), serialised plans, and the
named-tensor execution API (``set_input_shape``, ``get_tensor_shape``, ``set_tensor_address``,
``execute_async_v3``) over "device memory" that is host memory here; the "engine" runs the ONNX with ONNX Runtime.
This proves the call sequence and data flow, not TensorRT itself: that needs an NVIDIA GPU.
"""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any

import numpy as np
import onnxruntime

PLAN_MAGIC = b"FAKEPLAN"


class _Memory:
    """Device allocations by address."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = itertools.count(0x1000, 0x1000000)

    def alloc(self, nbytes: int) -> _Allocation:
        address = next(self._next)
        self.blocks[address] = bytearray(nbytes)
        return _Allocation(address)


class _Allocation:
    def __init__(self, address: int) -> None:
        self.address = address

    def __int__(self) -> int:
        return self.address


def make_pycuda_driver(memory: _Memory, log: list[str]) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")

    class Context:
        current: Context | None = None

        def push(self) -> None:
            log.append("ctx.push")

        def pop(self) -> None:
            log.append("ctx.pop")

        def detach(self) -> None:
            log.append("ctx.detach")

        @staticmethod
        def get_current() -> None:
            return None

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake Orin"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 7)

        def make_context(self) -> Context:
            log.append("ctx.push")  # pycuda: a new context is made current
            return Context()

    class Stream:
        handle = 42

        def synchronize(self) -> None:
            log.append("stream.synchronize")

    def copy_in(dev: _Allocation, host: np.ndarray, stream: Any = None) -> None:
        data = np.ascontiguousarray(host).tobytes()
        memory.blocks[int(dev)][: len(data)] = data

    def copy_out(host: np.ndarray, dev: _Allocation, stream: Any = None) -> None:
        block = memory.blocks[int(dev)]
        host.reshape(-1)[:] = np.frombuffer(bytes(block[: host.nbytes]), dtype=host.dtype)

    cuda.init = lambda: None  # type: ignore[attr-defined]
    cuda.Device = Device  # type: ignore[attr-defined]
    cuda.Context = Context  # type: ignore[attr-defined]
    cuda.Stream = Stream  # type: ignore[attr-defined]
    cuda.mem_alloc = memory.alloc  # type: ignore[attr-defined]
    cuda.memcpy_htod = copy_in  # type: ignore[attr-defined]
    cuda.memcpy_htod_async = copy_in  # type: ignore[attr-defined]
    cuda.memcpy_dtoh_async = copy_out  # type: ignore[attr-defined]
    cuda.pagelocked_empty = np.empty  # type: ignore[attr-defined]
    return cuda


def make_tensorrt(memory: _Memory, log: list[str], calibration_seen: list[np.ndarray]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    class BuilderFlag:
        FP16 = "fp16"
        INT8 = "int8"

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            log.append("calibrator.init")

    class Network:
        model: bytes = b""

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            try:
                onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            except Exception:
                self.num_errors = 1
                return False
            self.network.model = data
            return True

        def get_error(self, i: int) -> str:
            return "In node 0: not an ONNX model"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.profiles: list[Profile] = []
            self.calibration_profile: Profile | None = None
            self.int8_calibrator: Any = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            log.append(f"pool {pool} {size}")

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: Profile) -> None:
            self.calibration_profile = profile

    class Builder:
        def __init__(self, logger: Logger) -> None:
            log.append("builder")

        def create_network(self, flags: int) -> Network:
            assert flags == 0  # explicit batch is the only mode in TensorRT 10
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            assert config.profiles, "dynamic batch needs an optimisation profile"
            if "int8" in config.flags:
                calibrator = config.int8_calibrator
                assert config.calibration_profile is not None
                cached = calibrator.read_calibration_cache()
                if cached is None:
                    size = calibrator.get_batch_size()
                    while (pointers := calibrator.get_batch(["image"])) is not None:
                        shape = config.calibration_profile.shapes["image"][0]
                        assert shape[0] == size
                        block = memory.blocks[pointers[0]]
                        count = int(np.prod(shape))
                        calibration_seen.append(np.frombuffer(bytes(block[: count * 4]), np.float32).reshape(shape))
                    calibrator.write_calibration_cache(b"calibration table")
            log.append("build " + ",".join(sorted(config.flags)))
            return PLAN_MAGIC + network.model

    class ExecutionContext:
        def __init__(self, session: onnxruntime.InferenceSession) -> None:
            self.session = session
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return len(shape) == 4

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            n, _, h, w = self.shapes["image"]
            out = next(o for o in self.session.get_outputs() if o.name == name)
            return (n, int(out.shape[1]), h, w)

        def set_tensor_address(self, name: str, address: int) -> None:
            self.addresses[name] = address

        def execute_async_v3(self, stream: int) -> bool:
            shape = self.shapes["image"]
            count = int(np.prod(shape))
            block = memory.blocks[self.addresses["image"]]
            x = np.frombuffer(bytes(block[: count * 4]), np.float32).reshape(shape)
            names = [o.name for o in self.session.get_outputs()]
            for name, value in zip(names, self.session.run(names, {"image": x}), strict=True):
                data = np.ascontiguousarray(value, np.float32).tobytes()
                memory.blocks[self.addresses[name]][: len(data)] = data
            log.append("execute_async_v3")
            return True

    class Engine:
        def __init__(self, model: bytes) -> None:
            self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
            self.names: list[str] = ["image"] + [o.name for o in self.session.get_outputs()]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self.session)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            if not plan.startswith(PLAN_MAGIC):
                return None
            log.append("deserialize")
            return Engine(plan[len(PLAN_MAGIC) :])

    for name, value in {
        "Logger": Logger,
        "TensorIOMode": TensorIOMode,
        "BuilderFlag": BuilderFlag,
        "MemoryPoolType": MemoryPoolType,
        "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2,
        "OnnxParser": OnnxParser,
        "Builder": Builder,
        "Runtime": Runtime,
        "nptype": lambda dtype: np.float32,
    }.items():
        setattr(trt, name, value)
    return trt


def install(monkeypatch: Any) -> tuple[list[str], list[np.ndarray]]:
    """Put the stand-ins in ``sys.modules``; return the call log and the calibration batches the builder saw."""
    memory = _Memory()
    log: list[str] = []
    seen: list[np.ndarray] = []
    pycuda = types.ModuleType("pycuda")
    driver = make_pycuda_driver(memory, log)
    pycuda.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(memory, log, seen))
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return log, seen
