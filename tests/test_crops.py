"""Two-stage bundles: tooth crops of the source image, the crop stage in the manifest, crop outputs -> findings."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from dental.teeth import PERMANENT_FDI
from edge.errors import BundleError, PipelineError
from edge.pipeline.crops import apex_row, crop_boxes, sample_crops, tooth_crop
from edge.pipeline.postprocess import findings_from_crops
from edge.pipeline.preprocess import Prepared
from models.bundle import (
    MANIFEST_NAME,
    CropInput,
    CropStage,
    FindingsOutput,
    GoldenSpec,
    Manifest,
    manifest_to_json,
    pack_bundle,
    parse_bundle,
)
from models.reference.spec import CLASSES
from tests.test_model_bundle import MANIFEST, _doc, _with_doc

KINDS = [c.kind for c in CLASSES]
LAYOUT = CropInput(name="crops", height=32, width=16, crown_margin=0.25, apex_margin=0.5)
"""A crop 32 x 16 for a tooth of length L: L / 4 above the crown, L / 2 beyond the apex (total 1.75 L)."""


def test_a_lower_tooth_crop_is_the_source_as_it_is_and_an_upper_one_is_flipped() -> None:
    lower = tooth_crop("36", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    assert lower is not None
    assert not lower.flip
    # length 56, total 98 source pixels over 32 rows; starts 14 above the crown tip, centred across
    assert lower.step == pytest.approx(98 / 32)
    assert lower.source_box() == pytest.approx((120 - 8 * 98 / 32, 186.0, 120 + 8 * 98 / 32, 284.0))
    # crop row 0 is the crown side: source top for a lower tooth
    assert lower.to_source([[0.0, 0.0]])[0] == pytest.approx([lower.x0, 186.0])
    upper = tooth_crop("16", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    assert upper is not None
    assert upper.flip
    # apex up: the crop reaches 28 above the apex and 14 below the crown; row 0 is the crown, at the bottom
    assert upper.source_box()[1] == pytest.approx(172.0)
    assert upper.to_source([[0.0, 0.0]])[0][1] == pytest.approx(270.0)
    assert upper.to_source([[0.0, 32.0]])[0][1] == pytest.approx(172.0)
    # the apex row maps to the apex for both
    assert lower.to_source([[0.0, apex_row(LAYOUT)]])[0][1] == pytest.approx(256.0)
    assert upper.to_source([[0.0, apex_row(LAYOUT)]])[0][1] == pytest.approx(200.0)


def test_a_fragment_of_the_labels_gets_no_crop() -> None:
    assert tooth_crop("36", (0.0, 0.0, 10.0, 10.0), LAYOUT) is None


def test_crops_sample_the_source_windowed_and_normalised() -> None:
    rows = np.arange(300, dtype=np.float32)[:, None] * np.ones((1, 400), np.float32)  # value = row
    lower = tooth_crop("36", (100.0, 100.0, 140.0, 156.0), LAYOUT)
    upper = tooth_crop("16", (100.0, 100.0, 140.0, 156.0), LAYOUT)
    assert lower is not None
    assert upper is not None
    batch = sample_crops(rows, [lower, upper], window=(0.0, 299.0), mean=0.0, std=1.0)
    assert batch.shape == (2, 1, 32, 16)
    centre_y = lower.y0 + 0.5 * lower.step
    assert batch[0, 0, 0, 0] == pytest.approx((centre_y - 0.5) / 299.0, abs=1e-4)
    # the upper crop runs bottom to top: its first row is its source box's last
    assert batch[1, 0, 0, 5] > batch[1, 0, -1, 5]
    assert batch[0, 0, 0, 5] < batch[0, 0, -1, 5]
    # outside the image: 0 before normalisation, as the first network's letterbox
    far = dataclasses.replace(lower, x0=-1000.0)
    assert float(sample_crops(rows, [far], window=(0.0, 299.0), mean=0.5, std=0.25).max()) == pytest.approx(-2.0)


def test_crop_boxes_give_one_crop_per_tooth_label_in_source_pixels() -> None:
    labels = np.zeros((64, 128), np.intp)
    k36, k11 = PERMANENT_FDI.index("36") + 1, PERMANENT_FDI.index("11") + 1
    labels[40:60, 10:20] = k36
    labels[5:25, 60:66] = k11
    labels[0:2, 100:101] = PERMANENT_FDI.index("21") + 1  # a fragment
    prepared = Prepared(np.zeros((1, 1, 64, 128), np.float32), source_shape=(120, 256), scale=(0.5, 0.5), offset=(0, 4))
    crops = crop_boxes(labels, PERMANENT_FDI, prepared.to_source, LAYOUT)
    assert [c.fdi for c in crops] == ["11", "36"]  # Universal order; the fragment has none
    eleven = crops[0]
    assert eleven.flip
    assert eleven.step == pytest.approx(40 * 1.75 / 32)
    assert (eleven.x0 + eleven.width * eleven.step / 2) == pytest.approx(126.0)  # centred on columns 60-66 -> 120-132


def _stage() -> CropStage:
    return CropStage(
        file="crops.onnx",
        input=LAYOUT,
        masks="masks",
        present="present",
        golden=(GoldenSpec("golden/crops.npz", 0.05),),
    )


def _two_stage() -> Manifest:
    return dataclasses.replace(MANIFEST, findings=FindingsOutput("", CLASSES), crops=_stage())


def _crop_outputs(count: int) -> dict[str, Any]:
    masks = np.full((count, len(KINDS), 16, 8), -6.0, np.float32)
    present = np.full((count, len(KINDS)), -6.0, np.float32)
    return {"masks": masks, "present": present}


def test_crop_outputs_become_findings_on_the_crops_tooth_in_source_pixels() -> None:
    manifest = _two_stage()
    lower = tooth_crop("36", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    upper = tooth_crop("16", (300.0, 200.0, 340.0, 256.0), LAYOUT)
    assert lower is not None
    assert upper is not None
    out = _crop_outputs(2)
    caries = KINDS.index("caries")
    out["present"][0, caries] = 3.0
    out["masks"][0, caries, 2:4, 3:5] = 4.0  # crop rows 4-8, columns 6-10 (mask at 1/2)
    out["masks"][0, caries, 10:12, 6:8] = 4.0  # a smaller second part: not the region
    out["present"][1, KINDS.index("implant")] = -1.0  # below the threshold: nothing
    out["masks"][1, KINDS.index("implant")] = 5.0
    found = findings_from_crops(out, [lower, upper], manifest, (400, 600), (0.1, 0.1))
    assert [(f.kind, f.tooth_fdi) for f in found] == [("caries", "36")]
    (f,) = found
    assert f.confidence == pytest.approx(1 / (1 + np.exp(-3.0)))
    x0, y0 = lower.to_source([[6.0, 4.0]])[0]
    x1, y1 = lower.to_source([[10.0, 8.0]])[0]
    assert f.bbox == (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    assert f.area_px == round(16 * lower.step**2)


def test_a_present_finding_without_a_mask_region_takes_the_strongest_pixels() -> None:
    manifest = _two_stage()
    crop = tooth_crop("36", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    assert crop is not None
    out = _crop_outputs(1)
    k = KINDS.index("periapical_lesion")
    out["present"][0, k] = 2.0
    out["masks"][0, k, 13, 4] = -1.0  # the peak, below 0.5
    (f,) = findings_from_crops(out, [crop], manifest, (400, 600), None)
    assert f.kind == "periapical_lesion"
    assert f.area_mm2 is None
    assert f.bbox[3] - f.bbox[1] <= int(np.ceil(2 * crop.step)) + 1


def test_bone_loss_in_a_crop_is_measured_from_the_junction_in_mm_and_percent() -> None:
    manifest = _two_stage()
    crop = tooth_crop("36", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    assert crop is not None
    out = _crop_outputs(1)
    k = KINDS.index("bone_loss")
    out["present"][0, k] = 2.0
    # the junction: crown margin (32 / 7 rows) + a crown of 1/3 the tooth; the band 2 mask rows (4 crop rows) deep
    out["masks"][0, k, 4:6, :] = 3.0
    (f,) = findings_from_crops(out, [crop], manifest, (400, 600), (0.1, 0.1))
    assert f.bone_loss_mm == pytest.approx(4 * crop.step * 0.1)
    root = apex_row(LAYOUT) - 8.0
    assert f.bone_loss_pct == pytest.approx(100 * 4 / root)
    out["masks"][0, k] = -6.0
    out["masks"][0, k, 14:16, :] = 3.0  # beyond the apex: no junction, no percentage
    (f,) = findings_from_crops(out, [crop], manifest, (400, 600), (0.1, 0.1))
    assert f.bone_loss_pct is None
    assert f.bone_loss_mm == pytest.approx(4 * crop.step * 0.1)


def test_crop_outputs_of_the_wrong_shape_are_a_pipeline_error() -> None:
    manifest = _two_stage()
    crop = tooth_crop("36", (100.0, 200.0, 140.0, 256.0), LAYOUT)
    assert crop is not None
    out = _crop_outputs(2)
    with pytest.raises(PipelineError, match=r"expected \(1, 7\)"):
        findings_from_crops(out, [crop], manifest, (400, 600), None)
    with pytest.raises(PipelineError, match="no crop stage"):
        findings_from_crops(out, [crop], MANIFEST, (400, 600), None)


def _two_stage_files() -> dict[str, bytes]:
    manifest = _two_stage()
    files = {"model.onnx": b"first", "crops.onnx": b"second", "golden/crops.npz": b"g"}
    files.update({g.file: b"golden" for g in MANIFEST.golden})
    return pack_bundle(manifest, files)


def test_a_crop_stage_round_trips_and_its_view_is_the_second_network() -> None:
    bundle = parse_bundle(_two_stage_files())
    stage = bundle.manifest.crops
    assert stage is not None
    assert stage.input == LAYOUT
    assert parse_bundle(_two_stage_files()).manifest == bundle.manifest
    assert json.loads(_two_stage_files()[MANIFEST_NAME]) == manifest_to_json(bundle.manifest)
    view = bundle.crop_stage()
    assert view.model_bytes == b"second"
    assert view.golden == stage.golden
    assert (view.manifest.input.name, view.manifest.input.height, view.manifest.input.width) == ("crops", 32, 16)
    assert view.networks_for("onnxruntime-cpu") == (view,)
    assert bundle.model_bytes == b"first"
    with pytest.raises(BundleError, match="no crop stage"):
        dataclasses.replace(bundle, manifest=MANIFEST).crop_stage()


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["crops"].update(file="missing.onnx"), "crops.file"),
        (lambda d: d["crops"].update(golden=[]), "golden"),
        (lambda d: d["crops"]["outputs"].update(present="masks"), "must differ"),
        (lambda d: d["crops"]["input"].update(height=4), "height"),
        (lambda d: d["crops"].update(extra=1), "extra"),
        (lambda d: d["outputs"].update(kind="detection"), "segmentation"),
    ],
)
def test_a_bad_crop_stage_names_the_problem(edit: Any, reason: str) -> None:
    files = _two_stage_files()
    doc = _doc(files)
    edit(doc)
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_with_doc(files, doc))


def test_a_tensorrt_engine_admits_all_of_an_images_crops_in_one_batch() -> None:
    """TensorRT's optimisation profile fixes the largest batch: whole images one at a time (up to 4), the reference
    bundle's tooth crops all at once (the analyzer runs them in batches of CROP_BATCH)."""
    from edge.pipeline.analyzer import CROP_BATCH
    from edge.pipeline.backends.trt import MAX_BATCH, max_batch
    from models.reference.spec import CROP_INPUT, INPUT_SPEC

    assert max_batch(INPUT_SPEC.height, INPUT_SPEC.width) == MAX_BATCH == 4
    assert max_batch(CROP_INPUT.height, CROP_INPUT.width) >= CROP_BATCH
