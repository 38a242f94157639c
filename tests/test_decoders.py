"""The decoders of each output kind (pure), the manifest's outputs block, and the per-tooth rules that apply to
boxed candidates (the tooth from the segmentation or the model, one finding per kind per tooth)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from dental.teeth import PERMANENT_FDI
from edge.errors import BundleError, PipelineError
from edge.pipeline.decoders import decode, nms, xyxy_boxes
from edge.pipeline.postprocess import findings_from_outputs
from edge.pipeline.preprocess import prepare
from models.bundle import (
    MANIFEST_NAME,
    MODEL_NAME,
    DetectionOutput,
    FindingsOutput,
    ToothClassificationOutput,
    ToothIndexOutput,
    manifest_to_json,
    pack_bundle,
    parse_manifest,
)
from tests.pipeline_helpers import HEIGHT, MANIFEST, WIDTH, bright_spot_image, split_teeth

CLASSES = MANIFEST.findings.classes  # caries, periapical_lesion; threshold 0.5, min_area_px 1
DETECTION = dataclasses.replace(
    MANIFEST,
    teeth=None,
    findings=FindingsOutput("", CLASSES),
    decoder=DetectionOutput(boxes="boxes", scores="scores", classes="labels", untoothed=True),
)
CLASSIFIER = dataclasses.replace(
    MANIFEST,
    teeth=None,
    findings=FindingsOutput("", CLASSES),
    decoder=ToothClassificationOutput(
        name="scores", teeth_fdi=("36", "46"), columns=("", "caries", "periapical_lesion"), activation="softmax"
    ),
)
PREPARED = prepare(bright_spot_image(), MANIFEST.input)  # 100 x 200 into 32 x 64: 0.32 model pixels per pixel


def _detections(boxes: list[Any], scores: list[float], labels: list[int]) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray([boxes], np.float32),  # with the batch dimension, as a model gives it
        "scores": np.asarray([scores], np.float32),
        "labels": np.asarray([labels], np.int64),
    }


def test_box_formats_and_units_become_model_pixel_corners() -> None:
    size = (HEIGHT, WIDTH)
    raw = np.asarray([[0.5, 0.5, 0.25, 0.5]], np.float32)
    assert xyxy_boxes(raw, "cxcywh", "normalized", size).tolist() == [[24.0, 8.0, 40.0, 24.0]]
    assert xyxy_boxes(raw * 8, "xywh", "pixels", size).tolist() == [[4.0, 4.0, 6.0, 8.0]]
    assert xyxy_boxes(np.asarray([[9, 8, 1, 2]], np.float32), "xyxy", "pixels", size).tolist() == [[1, 2, 9, 8]]
    with pytest.raises(PipelineError, match=r"expected \[N, 4\]"):
        xyxy_boxes(np.zeros((2, 5), np.float32), "xyxy", "pixels", size)


def test_nms_keeps_the_most_confident_of_each_overlapping_group() -> None:
    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [0, 0, 10, 10.5]], np.float64)
    assert nms(boxes, np.asarray([0.6, 0.9, 0.5, 0.7]), 0.5) == [1, 2]
    assert nms(boxes, np.asarray([0.6, 0.9, 0.5, 0.7]), 0.99) == [1, 3, 0, 2]


def test_detection_drops_padding_weak_and_small_boxes_and_suppresses_only_when_declared() -> None:
    outputs = _detections(
        [[2, 2, 8, 8], [2.5, 2, 8, 8], [20, 2, 26, 8], [30, 2, 31, 2.5], [0, 0, 0, 0]],
        [0.9, 0.8, 0.4, 0.95, 0.0],
        [0, 0, 1, 1, -1],
    )
    small = dataclasses.replace(CLASSES[1], min_area_px=4)
    manifest = dataclasses.replace(DETECTION, findings=FindingsOutput("", (CLASSES[0], small)))
    # the model did NMS: both caries stay; the weak lesion (0.4 < 0.5) and the 1 x 0.5 box (< 4 px) go
    kept = decode(outputs, manifest).boxes
    assert [b.kind for b in kept] == ["caries", "caries"]
    assert [b.confidence for b in kept] == pytest.approx([0.9, 0.8])
    assert isinstance(DETECTION.decoder, DetectionOutput)
    suppressed = dataclasses.replace(manifest, decoder=dataclasses.replace(DETECTION.decoder, nms=True))
    assert [b.box for b in decode(outputs, suppressed).boxes] == [(2.0, 2.0, 8.0, 8.0)]
    [finding] = findings_from_outputs(outputs, suppressed, PREPARED, (0.1, 0.1))
    assert (finding.kind, finding.tooth_fdi, finding.bbox) == ("caries", None, PREPARED.box_to_source((2, 2, 8, 8)))
    assert finding.area_mm2 == pytest.approx(finding.area_px * 0.01)


def test_detection_outputs_that_disagree_with_the_manifest_are_refused() -> None:
    with pytest.raises(PipelineError, match="class 5; the manifest has 2 classes"):
        decode(_detections([[0, 0, 1, 1]], [0.9], [5]), DETECTION)
    bad = _detections([[0, 0, 1, 1]], [0.9], [0])
    bad["scores"] = np.asarray([0.9, 0.8], np.float32)
    with pytest.raises(PipelineError, match="disagree in length"):
        decode(bad, DETECTION)
    with pytest.raises(PipelineError, match="'labels' is missing"):
        decode({"boxes": bad["boxes"], "scores": bad["scores"][:1]}, DETECTION)


def test_boxes_take_the_segmentation_tooth_and_one_kind_on_one_tooth_is_one_finding() -> None:
    manifest = dataclasses.replace(
        DETECTION, teeth=MANIFEST.teeth, decoder=DetectionOutput("boxes", scores="scores", classes="labels")
    )
    outputs = _detections([[2, 2, 8, 8], [10, 4, 14, 9], [40, 2, 46, 8]], [0.7, 0.9, 0.8], [0, 0, 0])
    outputs["teeth"] = split_teeth("16", "26")
    found = findings_from_outputs(outputs, manifest, PREPARED, None)
    assert sorted(f.tooth_fdi or "" for f in found) == ["16", "26"]
    assert sorted(f.confidence for f in found) == pytest.approx([0.8, 0.9])
    merged = next(f for f in found if f.tooth_fdi == "16")
    assert merged.bbox == PREPARED.box_to_source((2, 2, 14, 9))  # the union of the two boxes on tooth 16


def test_detection_with_its_own_tooth_output_and_score_matrix() -> None:
    spec = DetectionOutput(
        boxes="boxes",
        class_scores="matrix",
        score_activation="softmax",
        tooth=ToothIndexOutput("tooth", ("36", "46")),
    )
    manifest = dataclasses.replace(DETECTION, decoder=spec)
    outputs = {
        "boxes": np.asarray([[2, 2, 8, 8], [20, 2, 26, 8], [40, 2, 46, 8]], np.float32),
        "matrix": np.asarray([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]], np.float32),  # the last: 0.5 each, caries
        "tooth": np.asarray([1, 0, 7], np.float32),  # 7 is outside labels_fdi: no tooth
    }
    found = findings_from_outputs(outputs, manifest, PREPARED, None)
    assert [(f.kind, f.tooth_fdi) for f in found] == [("caries", "46"), ("periapical_lesion", "36"), ("caries", None)]


def test_tooth_classification_boxes_outlines_and_shape() -> None:
    scores = np.asarray([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]], np.float32)  # 36: caries; 46: the no-finding column
    [whole] = findings_from_outputs({"scores": scores}, CLASSIFIER, PREPARED, None)
    assert (whole.kind, whole.tooth_fdi, whole.bbox) == ("caries", "36", (0, 0, 200, 100))
    assert isinstance(CLASSIFIER.decoder, ToothClassificationOutput)
    boxed = dataclasses.replace(CLASSIFIER, decoder=dataclasses.replace(CLASSIFIER.decoder, boxes="where"))
    where = np.asarray([[4, 4, 12, 12], [20, 20, 30, 30]], np.float32)
    [finding] = findings_from_outputs({"scores": scores, "where": where}, boxed, PREPARED, None)
    assert finding.bbox == PREPARED.box_to_source((4, 4, 12, 12))
    segmented = dataclasses.replace(CLASSIFIER, teeth=MANIFEST.teeth)
    teeth = np.zeros((1, 33, HEIGHT, WIDTH), np.float32)
    teeth[0, PERMANENT_FDI.index("36") + 1, 20:30, 10:20] = 10.0
    [outlined] = findings_from_outputs({"scores": scores, "teeth": teeth}, segmented, PREPARED, None)
    assert outlined.bbox == PREPARED.box_to_source((10, 20, 20, 30))
    assert len(outlined.polygon) >= 4
    with pytest.raises(PipelineError, match=r"expects \[2, 3\]"):
        decode({"scores": np.zeros((32, 3), np.float32)}, CLASSIFIER)


def _doc(manifest: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(pack_bundle(manifest, {MODEL_NAME: b"x", "golden/a.npz": b"y"})[MANIFEST_NAME])
    return doc


@pytest.mark.parametrize("manifest", [DETECTION, CLASSIFIER, MANIFEST])
def test_outputs_block_round_trips(manifest: Any) -> None:
    parsed = parse_manifest(json.dumps(_doc(manifest)).encode())
    assert (parsed.teeth, parsed.findings, parsed.decoder) == (manifest.teeth, manifest.findings, manifest.decoder)


def test_a_segmentation_manifest_is_written_as_before() -> None:
    assert list(manifest_to_json(MANIFEST)["outputs"]) == ["teeth", "findings"]  # no kind: old readers, same bytes


@pytest.mark.parametrize(
    ("manifest", "edit", "reason"),
    [
        (DETECTION, lambda o: o.update(kind="keypoints"), "'keypoints' is not one of segmentation"),
        (DETECTION, lambda o: o["detection"].update(nms_iou=0.5), "nms_iou is not a field of outputs.detection"),
        (DETECTION, lambda o: o["detection"].pop("classes"), "needs scores and classes"),
        (DETECTION, lambda o: o["detection"].update(class_scores="m"), "give one or the other"),
        (DETECTION, lambda o: o["detection"].update(score_activation="softmax"), "softmax needs class_scores"),
        (DETECTION, lambda o: o["detection"].update(untoothed=False), "has no tooth source"),
        (DETECTION, lambda o: o["detection"].update(box_units="mm"), "'mm' is not one of pixels, normalized"),
        (DETECTION, lambda o: o["detection"].update(scores="boxes"), "names one tensor twice"),
        (CLASSIFIER, lambda o: o["tooth_classification"].update(columns=["", "caries"]), "every finding class"),
        (CLASSIFIER, lambda o: o["tooth_classification"].update(columns=["x", "caries"]), "'x', which outputs"),
        (CLASSIFIER, lambda o: o["tooth_classification"].update(teeth_fdi=["36", "99"]), "'99', not an FDI"),
        (MANIFEST, lambda o: o.pop("teeth"), "missing outputs.teeth"),
    ],
)
def test_bad_outputs_block_names_the_problem(manifest: Any, edit: Any, reason: str) -> None:
    doc = _doc(manifest)
    edit(doc["outputs"])
    with pytest.raises(BundleError, match=reason):
        parse_manifest(json.dumps(doc).encode())


def test_non_finite_boxes_and_scores_are_no_findings() -> None:
    outputs = _detections([[np.nan, 2, 8, 8], [2, 2, 8, 8], [20, 2, 26, 8]], [0.9, np.nan, 0.8], [0, 0, 0])
    assert [b.box for b in decode(outputs, DETECTION).boxes] == [(20.0, 2.0, 26.0, 8.0)]
    scores = np.asarray([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]], np.float32)
    assert decode({"scores": scores}, CLASSIFIER).boxes == ()
