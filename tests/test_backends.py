"""Inference backends: ONNX Runtime on the tiny network, selection with golden vectors, TensorRT without a GPU."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import BackendError
from edge.pipeline.analyzer import Analyzer
from edge.pipeline.backends import BackendOptions, select_backend
from edge.pipeline.backends.base import Backend
from edge.pipeline.backends.fake import FakeBackend, FakeFactory
from edge.pipeline.backends.ort import OrtCpuFactory, OrtGpuFactory
from edge.pipeline.backends.registry import BackendKind
from edge.pipeline.backends.trt import CalibrationBatches, GpuIdentity, TensorRtFactory, engine_cache_key
from models.bundle import (
    MODEL_NAME,
    Bundle,
    GoldenSpec,
    Variant,
    pack_bundle,
    parse_bundle,
    write_bundle,
)
from models.golden import build_golden
from ota.errors import HealthCheckFailed
from ota.health import health_check
from tests import fake_gpu
from tests.pipeline_helpers import HEIGHT, MANIFEST, WIDTH, reference_outputs, tiny_bundle, tiny_onnx

GPU_SKIP = "needs an NVIDIA GPU with TensorRT 10"


def _batch(n: int = 1) -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (n, 1, HEIGHT, WIDTH)).astype(np.float32)


# --- ONNX Runtime --------------------------------------------------------------------------------------------


def test_onnxruntime_cpu_runs_the_network(tmp_path: Path) -> None:
    optimised = tmp_path / "optimised.onnx"
    backend = OrtCpuFactory().load(tiny_bundle(), BackendOptions(threads=1, optimized_model_path=optimised))
    assert backend.name == "onnxruntime-cpu"
    batch = _batch(2)
    outputs = backend.run(batch)
    expected = reference_outputs(batch)
    assert set(outputs) == {"teeth", "findings"}
    for name, value in expected.items():
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], value, atol=1e-4)
    assert optimised.stat().st_size > 0
    backend.close()


def test_onnxruntime_errors_are_backend_errors() -> None:
    bundle = tiny_bundle()
    backend = OrtCpuFactory().load(bundle, BackendOptions())
    with pytest.raises(BackendError, match="onnxruntime failed to run"):
        backend.run(np.zeros((1, 3, HEIGHT, WIDTH), np.float32))
    broken = parse_bundle(pack_bundle(MANIFEST, {**bundle.files, MODEL_NAME: b"not onnx"}))
    with pytest.raises(BackendError, match="onnxruntime cannot load tiny-test-model"):
        OrtCpuFactory().load(broken, BackendOptions())


def test_onnxruntime_gpu_is_unavailable_without_a_gpu_provider() -> None:
    factory = OrtGpuFactory()
    reason = factory.unavailable_reason()
    if reason is None:
        pytest.skip("onnxruntime has a GPU execution provider here")
    assert "GPU execution provider" in reason
    with pytest.raises(BackendError):
        factory.load(tiny_bundle(), BackendOptions())


# --- selection -----------------------------------------------------------------------------------------------


def _wrong(batch: np.ndarray) -> dict[str, np.ndarray]:
    out = reference_outputs(batch)
    out["findings"] = out["findings"] + 1.0
    return out


def test_auto_takes_the_best_available_kind_that_passes_golden() -> None:
    trt = FakeFactory("tensorrt", reference_outputs, unavailable="no CUDA device")
    gpu = FakeFactory("onnxruntime-gpu", _wrong)
    cpu = FakeFactory("onnxruntime-cpu", reference_outputs)
    backend = select_backend(tiny_bundle(), "auto", BackendOptions(), [trt, gpu, cpu])
    assert backend.name == "onnxruntime-cpu"
    assert trt.loaded == []
    assert gpu.loaded[0].closed  # failed its golden vectors: loaded, checked, released, not used


def test_auto_prefers_tensorrt_when_it_works() -> None:
    factories = [FakeFactory(kind, reference_outputs) for kind in ("tensorrt", "onnxruntime-gpu", "onnxruntime-cpu")]
    assert select_backend(tiny_bundle(), "auto", BackendOptions(), factories).name == "tensorrt"


def test_forced_kind_is_used_or_refused_with_the_reason() -> None:
    factories = [
        FakeFactory("tensorrt", reference_outputs, unavailable="tensorrt is not installed"),
        FakeFactory("onnxruntime-gpu", _wrong),
        FakeFactory("onnxruntime-cpu", reference_outputs),
    ]
    bundle = tiny_bundle()
    assert select_backend(bundle, "onnxruntime-cpu", BackendOptions(), factories).name == "onnxruntime-cpu"
    with pytest.raises(BackendError, match="tensorrt: tensorrt is not installed"):
        select_backend(bundle, "tensorrt", BackendOptions(), factories)
    with pytest.raises(BackendError, match=r"onnxruntime-gpu: golden vectors fail: golden/a\.npz findings"):
        select_backend(bundle, "onnxruntime-gpu", BackendOptions(), factories)


def test_a_backend_that_fails_while_checking_is_not_used() -> None:
    factory = FakeFactory("onnxruntime-cpu", reference_outputs)
    original = factory.load

    def failing_load(bundle: object, options: BackendOptions) -> object:
        backend = original(bundle, options)  # type: ignore[arg-type]
        backend.fail_with = "device lost"  # type: ignore[attr-defined]
        return backend

    factory.load = failing_load  # type: ignore[method-assign,assignment]
    with pytest.raises(BackendError, match="the backend failed: device lost"):
        select_backend(tiny_bundle(), "auto", BackendOptions(), [factory])


def test_real_default_selection_here_is_onnxruntime_cpu() -> None:
    assert select_backend(tiny_bundle(), "auto", BackendOptions()).name == "onnxruntime-cpu"


def test_bundle_whose_golden_vectors_disagree_with_the_network_is_refused() -> None:
    bad_golden = tiny_bundle(golden_outputs=_wrong(np.zeros((1, 1, HEIGHT, WIDTH), np.float32)))
    with pytest.raises(BackendError, match="onnxruntime-cpu: golden vectors fail"):
        select_backend(bad_golden, "onnxruntime-cpu", BackendOptions())


# --- variants ------------------------------------------------------------------------------------------------

Compute = Callable[[np.ndarray], dict[str, np.ndarray]]


def _with_int8(backends: tuple[str, ...] = ("onnxruntime-cpu",), int8: Compute = reference_outputs) -> Bundle:
    """The tiny bundle with an INT8 variant (the same network; golden vectors of its own, from ``int8``)."""
    base = tiny_bundle()
    inputs = np.random.default_rng(2).normal(0, 1, (1, 1, HEIGHT, WIDTH)).astype(np.float16).astype(np.float32)
    files = {
        **base.files,
        "model.int8.onnx": tiny_onnx(),
        "golden/a.int8.npz": build_golden(inputs, int8(inputs), 256, 0),
    }
    variant = Variant("int8", "model.int8.onnx", backends, (GoldenSpec("golden/a.int8.npz", 1e-3),))
    return parse_bundle(pack_bundle(dataclasses.replace(MANIFEST, variants=(variant,)), files))


def _slow(seconds: float) -> Compute:
    def compute(batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(seconds)
        return reference_outputs(batch)

    return compute


class PerPrecision(FakeFactory):
    """An ONNX Runtime CPU fake that computes each network (by precision) its own way."""

    def __init__(self, computes: dict[str, Compute], kind: BackendKind = "onnxruntime-cpu") -> None:
        super().__init__(kind, reference_outputs)
        self.computes = computes

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        backend = FakeBackend(self.computes[bundle.precision], self.kind, bundle.precision)
        self.loaded.append(backend)
        return backend


@pytest.mark.parametrize(("fp32_s", "int8_s", "chosen"), [(0.02, 0.0, "int8"), (0.0, 0.02, "fp32")])
def test_the_faster_network_that_passes_is_kept(
    fp32_s: float, int8_s: float, chosen: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = PerPrecision({"fp32": _slow(fp32_s), "int8": _slow(int8_s)})
    with caplog.at_level(logging.INFO, "edge.pipeline.backends"):
        backend = select_backend(_with_int8(), "auto", BackendOptions(), [factory])
    assert (backend.name, backend.precision) == ("onnxruntime-cpu", chosen)
    assert [b.precision for b in factory.loaded] == ["fp32", "int8"]
    assert [b.closed for b in factory.loaded] == [b is not backend for b in factory.loaded]
    assert all(b.calls == 1 + 3 for b in factory.loaded)  # the golden check, then the timing rounds
    assert "networks timed" in [r.getMessage() for r in caplog.records]


def test_a_variant_that_fails_its_golden_vectors_is_not_used() -> None:
    factory = PerPrecision({"fp32": _slow(0.01), "int8": _wrong})
    backend = select_backend(_with_int8(), "onnxruntime-cpu", BackendOptions(), [factory])
    assert backend.precision == "fp32"
    assert factory.loaded[1].closed
    assert factory.loaded[0].calls == 1  # nothing to time it against


def _fails_after(calls: int) -> Compute:
    done = [0]

    def compute(batch: np.ndarray) -> dict[str, np.ndarray]:
        done[0] += 1
        if done[0] > calls:
            raise BackendError("device lost")
        return reference_outputs(batch)

    return compute


def test_a_network_that_fails_while_timed_is_not_used() -> None:
    factory = PerPrecision({"fp32": _slow(0.01), "int8": _fails_after(1)})
    assert select_backend(_with_int8(), "auto", BackendOptions(), [factory]).precision == "fp32"
    assert factory.loaded[1].closed
    both = PerPrecision({"fp32": _fails_after(1), "int8": _fails_after(1)})
    with pytest.raises(BackendError, match="fp32 network: failed while timed: device lost; int8 network: failed"):
        select_backend(_with_int8(), "auto", BackendOptions(), [both])
    assert all(b.closed for b in both.loaded)


def test_every_network_failing_names_each() -> None:
    factory = PerPrecision({"fp32": _wrong, "int8": _wrong})
    with pytest.raises(BackendError, match=r"fp32 network: golden vectors fail: .*; int8 network: golden vectors"):
        select_backend(_with_int8(), "onnxruntime-cpu", BackendOptions(), [factory])


def test_variants_off_or_for_another_backend_are_not_loaded() -> None:
    factory = PerPrecision({"fp32": reference_outputs, "int8": reference_outputs})
    assert select_backend(_with_int8(), "auto", BackendOptions(variants=False), [factory]).precision == "fp32"
    trt = PerPrecision({"fp32": reference_outputs, "int8": reference_outputs}, kind="tensorrt")
    assert select_backend(_with_int8(), "auto", BackendOptions(), [trt]).precision == "fp32"
    assert len(factory.loaded) == len(trt.loaded) == 1


def test_the_ota_health_check_holds_a_variant_to_its_own_golden_vectors(tmp_path: Path) -> None:
    bundle = _with_int8(int8=_wrong)  # the INT8 network computes differently; its golden vectors say how
    int8 = Analyzer(bundle, FakeBackend(_wrong, "onnxruntime-cpu", "int8"))
    assert health_check(lambda _: int8, tmp_path) == "onnxruntime-cpu"
    fp32_wrong = Analyzer(bundle, FakeBackend(_wrong, "onnxruntime-cpu", "fp32"))
    with pytest.raises(HealthCheckFailed, match="golden vectors fail on onnxruntime-cpu"):
        health_check(lambda _: fp32_wrong, tmp_path)


def test_verify_reports_a_variant_that_fails_here_without_failing_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _with_int8(int8=_wrong)  # the real INT8 file is the float network: its golden vectors cannot match
    write_bundle(tmp_path, pack_bundle(bundle.manifest, bundle.files))
    assert main(["model", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model.onnx golden golden/a.npz findings" in out
    assert "the int8 variant fails on this CPU; the agent will not use it" in out


def test_onnxruntime_runs_a_variant_and_reports_its_precision() -> None:
    network = _with_int8().networks_for("onnxruntime-cpu")[1]
    backend = OrtCpuFactory().load(network, BackendOptions(threads=1))
    assert backend.precision == "int8"
    backend.close()


# --- TensorRT without a GPU ----------------------------------------------------------------------------------


def test_tensorrt_not_importable_is_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    factory = TensorRtFactory()
    assert "tensorrt is not installed" in (factory.unavailable_reason() or "")
    with pytest.raises(BackendError, match="tensorrt is not installed"):
        factory.load(tiny_bundle(), BackendOptions())


def test_tensorrt_other_major_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "8.6.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert TensorRtFactory().unavailable_reason() == "TensorRT 8.6.1 is installed; this backend needs TensorRT 10"


def test_tensorrt_without_pycuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    assert "pycuda is not installed" in (TensorRtFactory().unavailable_reason() or "")


def test_engine_cache_key_covers_model_version_gpu_and_precision() -> None:
    gpu = GpuIdentity("Orin", (8, 7), "10.3.0")
    key = engine_cache_key("ab" * 32, gpu, "fp16")
    assert key == engine_cache_key("ab" * 32, GpuIdentity("Orin", (8, 7), "10.3.0"), "fp16")
    assert key.startswith("abababababab-fp16-")
    assert all(c.isalnum() or c == "-" for c in key)
    variants = {
        engine_cache_key("cd" * 32, gpu, "fp16"),
        engine_cache_key("ab" * 32, GpuIdentity("Orin", (8, 7), "10.4.0"), "fp16"),
        engine_cache_key("ab" * 32, GpuIdentity("RTX 4090", (8, 9), "10.3.0"), "fp16"),
        engine_cache_key("ab" * 32, GpuIdentity("Orin", (8, 6), "10.3.0"), "fp16"),
        engine_cache_key("ab" * 32, gpu, "int8"),
    }
    assert key not in variants
    assert len(variants) == 5


def test_calibration_batches_are_equal_and_drop_the_tail() -> None:
    images = np.arange(10 * 1 * 2 * 3, dtype=np.float32).reshape(10, 1, 2, 3)
    batches = CalibrationBatches(images, batch_size=4)
    assert batches.shape == (4, 1, 2, 3)
    chunks = list(batches)
    assert len(batches) == len(chunks) == 2
    np.testing.assert_array_equal(np.concatenate(chunks), images[:8])
    assert all(c.flags.c_contiguous and c.dtype == np.float32 for c in chunks)
    few = CalibrationBatches(images[:3], batch_size=8)
    assert few.batch_size == 3
    assert len(list(few)) == 1


@pytest.mark.parametrize("shape", [(0, 1, 2, 2), (4, 2, 2)])
def test_calibration_needs_prepared_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(BackendError, match="INT8 calibration needs prepared images"):
        CalibrationBatches(np.zeros(shape, np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_builds_caches_and_passes_golden(tmp_path: Path, precision: str) -> None:
    factory = TensorRtFactory()
    if factory.unavailable_reason() is not None:
        pytest.skip(f"{GPU_SKIP} ({factory.unavailable_reason()})")
    options = BackendOptions(engine_cache_dir=tmp_path, precision=precision, calibration=_batch(8))  # type: ignore[arg-type]
    backend = select_backend(tiny_bundle(), "tensorrt", options)
    assert backend.name == "tensorrt"
    assert len(list(tmp_path.glob("*.engine"))) == 1
    backend.close()
    again = factory.load(tiny_bundle(), options)  # from the cache this time
    np.testing.assert_allclose(again.run(_batch())["teeth"], reference_outputs(_batch())["teeth"], atol=0.1)
    again.close()


# --- TensorRT logic against CPU stand-ins of tensorrt and pycuda (tests/fake_gpu.py) ------------------------


def test_tensorrt_fp16_builds_caches_and_runs_named_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = fake_gpu.install(monkeypatch)
    factory = TensorRtFactory()
    assert factory.unavailable_reason() is None
    options = BackendOptions(engine_cache_dir=tmp_path, precision="fp16")
    backend = select_backend(tiny_bundle(), "tensorrt", options)  # golden vectors pass through the engine
    assert backend.name == "tensorrt"
    assert "build fp16" in log
    [engine] = tmp_path.glob("*.engine")
    gpu = GpuIdentity("Fake Orin", (8, 7), "10.3.0")
    assert engine.name == engine_cache_key(tiny_bundle().sha256, gpu, "fp16") + ".engine"
    batch = _batch(2)
    outputs = backend.run(batch)
    for name, value in reference_outputs(batch).items():
        np.testing.assert_allclose(outputs[name], value, atol=1e-4)
    assert log.count("ctx.push") == log.count("ctx.pop")
    backend.close()
    log.clear()
    again = factory.load(tiny_bundle(), options)  # the cached engine, no build
    assert "builder" not in log
    assert "deserialize" in log
    again.close()


def test_tensorrt_rebuilds_an_unreadable_cached_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = fake_gpu.install(monkeypatch)
    options = BackendOptions(engine_cache_dir=tmp_path, precision="fp16")
    TensorRtFactory().load(tiny_bundle(), options).close()
    [engine] = tmp_path.glob("*.engine")
    engine.write_bytes(b"garbage")
    log.clear()
    TensorRtFactory().load(tiny_bundle(), options).close()
    assert "builder" in log
    assert engine.read_bytes().startswith(fake_gpu.PLAN_MAGIC)


def test_tensorrt_int8_calibrates_on_the_given_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, seen = fake_gpu.install(monkeypatch)
    images = _batch(9)
    options = BackendOptions(engine_cache_dir=tmp_path, precision="int8", calibration=images)
    TensorRtFactory().load(tiny_bundle(), options).close()
    assert "build fp16,int8" in log
    assert [b.shape for b in seen] == [(4, 1, HEIGHT, WIDTH)] * 2  # 9 images in batches of 4, tail dropped
    np.testing.assert_array_equal(np.concatenate(seen), images[:8])
    assert len(list(tmp_path.glob("*.calib"))) == 1
    with pytest.raises(BackendError, match="INT8 needs calibration images"):
        TensorRtFactory().load(tiny_bundle(), BackendOptions(engine_cache_dir=tmp_path / "x", precision="int8"))


def test_tensorrt_parse_failure_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu.install(monkeypatch)
    broken = parse_bundle(pack_bundle(MANIFEST, {**tiny_bundle().files, MODEL_NAME: b"not onnx"}))
    with pytest.raises(BackendError, match="TensorRT cannot parse tiny-test-model"):
        TensorRtFactory().load(broken, BackendOptions())
