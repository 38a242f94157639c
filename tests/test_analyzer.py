"""The analyser: one DICOM image to one result, through the real ONNX Runtime backend and B's post-processing; with
several bundles active, each image on the model that accepts it."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dental.findings import Finding
from edge.config import PipelineConfig
from edge.errors import BackendError, BundleError, UnsupportedImage
from edge.pipeline.analyzer import ActiveModel, Analyzer, open_analyzer, read_dataset
from edge.pipeline.backends import BackendOptions
from edge.pipeline.backends.fake import FakeBackend
from edge.pipeline.backends.ort import OrtCpuFactory
from models.bundle import Bundle, pack_bundle, write_bundle
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.pipeline_helpers import (
    BITEWING_MANIFEST,
    MANIFEST,
    as_intra_oral,
    bitewing_bundle,
    bright_spot_image,
    reference_outputs,
    tiny_bundle,
    write_radiograph,
)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return tiny_bundle()


@pytest.fixture(scope="module")
def analyzer(bundle: Bundle) -> Analyzer:
    return Analyzer(bundle, OrtCpuFactory().load(bundle, BackendOptions(threads=1)))


def test_bright_spot_is_found_where_it_is(tmp_path: Path, analyzer: Analyzer) -> None:
    uid = write_radiograph(tmp_path / "a.dcm", bright_spot_image())
    result = analyzer.analyse(read_dataset(tmp_path / "a.dcm"))
    assert result.status == "analysed"
    assert result.sop_instance_uid == uid
    assert result.backend == "onnxruntime-cpu"
    assert (result.model_id, result.model_version, result.clinical) == ("tiny-test-model", "0.0.1", False)
    assert set(result.timings_ms) == {"decode", "preprocess", "infer", "postprocess", "total"}
    caries = [f for f in result.findings if f.kind == "caries"]
    assert len(caries) == 1
    x0, y0, x1, y1 = caries[0].bbox
    assert abs(x0 - 120) <= 4
    assert abs(y0 - 40) <= 4
    assert abs(x1 - 150) <= 4
    assert abs(y1 - 60) <= 4
    assert caries[0].tooth_fdi == "21"
    assert caries[0].area_mm2 is not None
    doc = result.to_json()
    assert doc["status"] == "analysed"
    assert "reason" not in doc
    assert doc["model"] == {"id": "tiny-test-model", "version": "0.0.1", "clinical": False}
    assert Finding.from_json(doc["findings"][0]).kind == "caries"


@pytest.mark.parametrize(
    ("modality", "pixels", "reason"),
    [
        ("US", bright_spot_image(), "no model for modality US images"),
        ("PX", None, "no pixel data"),
    ],
)
def test_unreadable_images_are_skipped_with_reason(
    tmp_path: Path, analyzer: Analyzer, modality: str, pixels: np.ndarray | None, reason: str
) -> None:
    write_radiograph(tmp_path / "a.dcm", bright_spot_image(), modality=modality)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    if pixels is None:
        del ds.PixelData
    result = analyzer.analyse(ds)
    assert result.status == "skipped"
    assert reason in (result.reason or "")
    assert result.findings == ()
    assert result.to_json()["reason"] == result.reason


def test_backend_failure_raises_for_the_caller(tmp_path: Path, bundle: Bundle) -> None:
    fake = FakeBackend(reference_outputs)
    fake.fail_with = "device lost"
    write_radiograph(tmp_path / "a.dcm", bright_spot_image())
    with pytest.raises(BackendError, match="device lost"):
        Analyzer(bundle, fake).analyse(read_dataset(tmp_path / "a.dcm"))


def test_not_a_dicom_file_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(UnsupportedImage, match="not a readable DICOM file"):
        read_dataset(tmp_path / "x.dcm")


def test_multichannel_bundle_is_refused(bundle: Bundle) -> None:
    spec = dataclasses.replace(bundle.manifest.input, channels=3)
    odd = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, input=spec))
    with pytest.raises(BundleError, match="1-channel"):
        Analyzer(odd, FakeBackend(reference_outputs))


def _two(bitewing: Bundle, bundle: Bundle) -> tuple[Analyzer, FakeBackend, FakeBackend]:
    pano_backend, bitewing_backend = FakeBackend(reference_outputs), FakeBackend(reference_outputs, "fake-io")
    analyzer = Analyzer(bundle, pano_backend, others=(ActiveModel(bitewing, bitewing_backend),))
    return analyzer, pano_backend, bitewing_backend


def test_each_image_runs_on_the_model_that_accepts_it(tmp_path: Path, bundle: Bundle) -> None:
    analyzer, pano_backend, bitewing_backend = _two(bitewing_bundle(), bundle)
    write_radiograph(tmp_path / "pano.dcm", bright_spot_image())
    pano = analyzer.analyse(read_dataset(tmp_path / "pano.dcm"))
    assert (pano.status, pano.model_id, pano.backend) == ("analysed", "tiny-test-model", "fake")
    panoramic = synthetic_dataset(generate(77), 77)
    bitewing = analyzer.analyse(as_intra_oral(copy.deepcopy(panoramic), "bitewing"))
    assert (bitewing.status, bitewing.model_id, bitewing.backend) == ("analysed", "tiny-bitewing-model", "fake-io")
    assert bitewing.to_json()["model"]["id"] == "tiny-bitewing-model"
    assert (pano_backend.calls, bitewing_backend.calls) == (1, 1)
    periapical = analyzer.analyse(as_intra_oral(copy.deepcopy(panoramic), "periapical"))
    assert periapical.status == "skipped"
    assert (periapical.reason or "").startswith("no model for intra-oral periapicals")
    assert periapical.findings == ()
    doc = periapical.to_json()
    assert (doc["model"], doc["backend"], doc["precision"]) == (None, None, None)  # no model ran
    assert (pano_backend.calls, bitewing_backend.calls) == (1, 1)
    analyzer.close()
    assert pano_backend.closed
    assert bitewing_backend.closed


def test_two_active_bundles_with_one_id_are_refused(bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="two active bundles share an id"):
        Analyzer(bundle, FakeBackend(reference_outputs), others=(ActiveModel(bundle, FakeBackend(reference_outputs)),))


def test_open_analyzer_loads_the_extra_bundles_after_the_configured_one(tmp_path: Path) -> None:
    pano_dir, bitewing_dir = tmp_path / "pano", tmp_path / "bitewing"
    write_bundle(pano_dir, pack_bundle(MANIFEST, dict(tiny_bundle().files)))
    write_bundle(bitewing_dir, pack_bundle(BITEWING_MANIFEST, dict(bitewing_bundle().files)))
    config = PipelineConfig(bundle_path=pano_dir, extra_bundles=(bitewing_dir,), backend="onnxruntime-cpu", threads=1)
    analyzer = open_analyzer(config)
    try:
        assert [m.bundle.manifest.id for m in analyzer.models] == ["tiny-test-model", "tiny-bitewing-model"]
        assert analyzer.bundle.manifest.id == "tiny-test-model"  # the primary: the one OTA updates
    finally:
        analyzer.close()
    with pytest.raises(BundleError, match="no such directory"):
        open_analyzer(dataclasses.replace(config, extra_bundles=(bitewing_dir, tmp_path / "missing")))
