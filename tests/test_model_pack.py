"""``btt-edge model pack``: a bundle from a manufacturer's ONNX model of each output kind (segmentation, detection
after or before NMS, per-tooth classification) or from a MONAI Bundle, analysed end to end on a generator
panoramic with ``btt-edge analyze --json``: the per-tooth findings are what the model's constant outputs say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dental.teeth import PERMANENT_FDI
from edge.cli import main
from edge.pipeline.preprocess import prepare
from models.bundle import ToothClassificationOutput, load_bundle
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dicom_bytes
from tests.pipeline_helpers import HEIGHT, WIDTH, constant_onnx, split_teeth

SEED = 3
CARIES = {
    "kind": "caries",
    "code": {"scheme": "SCT", "value": "80967001", "meaning": "Dental caries"},
    "threshold": 0.5,
}
CROWN = {"kind": "crown", "code": {"scheme": "99TEST", "value": "2", "meaning": "Crown"}, "threshold": 0.5}
BASE: dict[str, Any] = {
    "id": "acme-dental",
    "version": "1.0.0",
    "task": "dental-panoramic",
    "description": "a manufacturer's model (test)",
    "input": {"name": "image", "height": HEIGHT, "width": WIDTH, "modalities": ["PX", "DX"]},
    "accepts": {"views": ["panoramic"], "modalities": ["PX", "DX"]},
}
TEETH = {"name": "teeth", "labels_fdi": list(PERMANENT_FDI)}
LEFT_BOX, RIGHT_BOX = (10.0, 8.0, 16.0, 14.0), (40.0, 8.0, 48.0, 14.0)
"""Model-pixel boxes on the image's left half (tooth 16 in :func:`split_teeth`) and right half (tooth 26)."""


@pytest.fixture(scope="module")
def panoramic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pano") / "pano.dcm"
    path.write_bytes(synthetic_dicom_bytes(generate(SEED), SEED))
    return path


def _pack(tmp_path: Path, model: bytes, description: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> Path:
    (tmp_path / "m.onnx").write_bytes(model)
    (tmp_path / "d.json").write_text(json.dumps(description))
    out = tmp_path / "bundle"
    code = main(
        ["model", "pack", "--onnx", str(tmp_path / "m.onnx"), "--describe", str(tmp_path / "d.json"), "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "golden golden/pack.npz" in text
    assert "FAIL" not in text
    return out


def _analyse(bundle: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["analyze", str(image), "--json", "--bundle", str(bundle), "--threads", "1"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["status"] == "analysed", doc
    assert doc["model"]["id"] == "acme-dental"
    findings: list[dict[str, Any]] = doc["findings"]
    return findings


def _model_to_source(bundle: Path, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A model-pixel box on the generator panoramic in source pixels, through the bundle's own letterbox."""
    return prepare(generate(SEED).pixels, load_bundle(bundle).manifest.input).box_to_source(box)


def _segmentation_outputs() -> dict[str, np.ndarray]:
    findings = np.full((1, 2, HEIGHT, WIDTH), -10.0, np.float32)
    for channel, (x0, y0, x1, y1) in enumerate((LEFT_BOX, RIGHT_BOX)):
        findings[0, channel, int(y0) : int(y1), int(x0) : int(x1)] = 10.0
    return {"teeth": split_teeth("16", "26"), "findings": findings}


def test_segmentation_model_packs_and_finds_per_tooth(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = {"kind": "segmentation", "teeth": TEETH, "findings": {"name": "findings", "classes": [CARIES, CROWN]}}
    bundle = _pack(tmp_path, constant_onnx(_segmentation_outputs()), {**BASE, "outputs": outputs}, capsys)
    manifest = load_bundle(bundle).manifest
    assert (manifest.output_kind, manifest.requires_agent, manifest.golden[0].atol) == (
        "segmentation",
        ">=0.1,<1",
        0.05,
    )
    found = _analyse(bundle, panoramic, capsys)
    assert sorted((f["kind"], f["tooth_fdi"]) for f in found) == [("caries", "16"), ("crown", "26")]
    caries = next(f for f in found if f["kind"] == "caries")
    assert caries["bbox"] == list(_model_to_source(bundle, LEFT_BOX))
    assert caries["confidence"] == pytest.approx(1.0, abs=1e-3)


def test_detection_after_nms_takes_the_tooth_from_the_tooth_segmentation(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = constant_onnx(
        {
            "teeth": split_teeth("16", "26"),
            "boxes": np.asarray([LEFT_BOX, RIGHT_BOX, (0, 0, 0, 0)], np.float32),
            "scores": np.asarray([0.9, 0.8, 0.0], np.float32),
            "labels": np.asarray([0, 1, -1], np.float32),  # the last row is padding
        }
    )
    outputs = {
        "kind": "detection",
        "teeth": TEETH,
        "detection": {"boxes": "boxes", "scores": "scores", "classes": "labels"},
        "findings": {"classes": [CARIES, CROWN]},
    }
    bundle = _pack(tmp_path, model, {**BASE, "outputs": outputs}, capsys)
    found = _analyse(bundle, panoramic, capsys)
    assert sorted((f["kind"], f["tooth_fdi"], f["confidence"]) for f in found) == [
        ("caries", "16", 0.9),
        ("crown", "26", 0.8),
    ]
    crown = next(f for f in found if f["kind"] == "crown")
    assert crown["bbox"] == list(_model_to_source(bundle, RIGHT_BOX))
    assert len(crown["polygon"]) == 4
    assert crown["area_px"] > 0


def test_detection_before_nms_is_suppressed_and_takes_the_models_own_tooth(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # centre/size normalised boxes: three overlapping caries (teeth 36, 37, 37), one crown elsewhere (tooth 37)
    cxcywh = [(0.2, 0.35, 0.1, 0.2), (0.21, 0.36, 0.1, 0.2), (0.2, 0.34, 0.11, 0.2), (0.7, 0.35, 0.1, 0.2)]
    model = constant_onnx(
        {
            "boxes": np.asarray(cxcywh, np.float32),
            "class_scores": np.asarray([[3.0, -3.0], [2.0, -3.0], [1.0, -3.0], [-3.0, 2.5]], np.float32),
            "tooth_index": np.asarray([0, 1, 1, 1], np.float32),
        }
    )
    outputs = {
        "kind": "detection",
        "detection": {
            "boxes": "boxes",
            "box_format": "cxcywh",
            "box_units": "normalized",
            "class_scores": "class_scores",
            "score_activation": "sigmoid",
            "nms": True,
            "iou_threshold": 0.5,
            "tooth": {"name": "tooth_index", "labels_fdi": ["36", "37"]},
        },
        "findings": {"classes": [CARIES, CROWN]},
    }
    bundle = _pack(tmp_path, model, {**BASE, "outputs": outputs}, capsys)
    assert main(["model", "verify", str(bundle)]) == 0
    assert (
        "  outputs detection: boxes cxcywh in normalized, NMS by the agent (IoU 0.5), tooth from the model's tooth "
        "per box; classes caries/crown\n" in capsys.readouterr().out
    )
    found = _analyse(bundle, panoramic, capsys)
    assert sorted((f["kind"], f["tooth_fdi"]) for f in found) == [("caries", "36"), ("crown", "37")]
    caries = next(f for f in found if f["kind"] == "caries")
    assert caries["confidence"] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-4)


def test_tooth_classification_reports_each_flagged_tooth(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = np.full((32, 3), -5.0, np.float32)
    logits[PERMANENT_FDI.index("36"), 1] = 5.0
    logits[PERMANENT_FDI.index("11"), 2] = 5.0
    logits[:, 0] = 5.0  # the "healthy" column names no finding, however sure
    restoration = {**CROWN, "kind": "restoration"}
    outputs = {
        "kind": "tooth_classification",
        "tooth_classification": {
            "name": "tooth_logits",
            "teeth_fdi": list(PERMANENT_FDI),
            "columns": ["", "caries", "restoration"],
        },
        "findings": {"classes": [CARIES, restoration]},
    }
    bundle = _pack(tmp_path, constant_onnx({"tooth_logits": logits}), {**BASE, "outputs": outputs}, capsys)
    found = _analyse(bundle, panoramic, capsys)
    assert sorted((f["kind"], f["tooth_fdi"]) for f in found) == [("caries", "36"), ("restoration", "11")]
    rows, columns = generate(SEED).pixels.shape
    assert all(f["bbox"] == [0, 0, columns, rows] for f in found)  # no tooth location: the finding spans the image


def _tensor_format(kind: str, fmt: str, channels: list[str], shape: list[int]) -> dict[str, Any]:
    """A MONAI tensor format specifier (the mandatory keys of the MONAI Bundle specification)."""
    return {
        "type": kind,
        "format": fmt,
        "num_channels": len(channels),
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": {str(i): name for i, name in enumerate(channels)},
    }


def _monai_bundle(tmp_path: Path, model: bytes, outputs: dict[str, Any]) -> Path:
    """A MONAI Bundle directory: configs/metadata.json (network_data_format) and models/model.onnx."""
    monai = tmp_path / "acme_pano_model"
    (monai / "configs").mkdir(parents=True)
    (monai / "models").mkdir()
    (monai / "models" / "model.onnx").write_bytes(model)
    image = {**_tensor_format("image", "magnitude", ["image"], [HEIGHT, WIDTH]), "value_range": [0, 1]}
    metadata = {
        "version": "2.1.0",
        "monai_version": "1.3.0",
        "pytorch_version": "2.1.0",
        "numpy_version": "1.26.0",
        "optional_packages_version": {},
        "task": "Dental panoramic segmentation",
        "description": "teeth and findings on panoramic radiographs",
        "authors": "ACME",
        "copyright": "ACME",
        "network_data_format": {"inputs": {"image": {**image, "modality": "XR"}}, "outputs": outputs},
    }
    (monai / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return monai


DESCRIBE_TOML = (
    'id = "acme-dental"\n'
    '[input]\nmodalities = ["PX", "DX"]\n'
    '[accepts]\nviews = ["panoramic"]\nmodalities = ["PX", "DX"]\n'
    # listed in another order than the channels: the import orders them by channel_def
    '[[outputs.findings.classes]]\nkind = "crown"\nthreshold = 0.5\n'
    'code = { scheme = "99TEST", value = "2", meaning = "Crown" }\n'
    '[[outputs.findings.classes]]\nkind = "caries"\nthreshold = 0.6\n'
    'code = { scheme = "SCT", value = "80967001", meaning = "Dental caries" }\n'
)
SEGMENTATION_NDF = {
    "teeth": _tensor_format("image", "labels", ["background", *PERMANENT_FDI], [HEIGHT, WIDTH]),
    "findings": _tensor_format("image", "classes", ["caries", "crown"], [HEIGHT, WIDTH]),
}


def _pack_monai(tmp_path: Path, monai: Path, describe: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp_path / "describe.toml").write_text(describe)
    out = tmp_path / "bundle"
    code = main(
        ["model", "pack", "--monai", str(monai), "--describe", str(tmp_path / "describe.toml"), "--out", str(out)]
    )
    return code, capsys.readouterr().err


def test_monai_bundle_imports_with_codes_from_the_description(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monai = _monai_bundle(tmp_path, constant_onnx(_segmentation_outputs()), SEGMENTATION_NDF)
    assert _pack_monai(tmp_path, monai, DESCRIBE_TOML, capsys) == (0, "")
    out = tmp_path / "bundle"
    manifest = load_bundle(out).manifest
    assert (manifest.version, manifest.task) == ("2.1.0", "Dental panoramic segmentation")
    assert [(c.kind, c.threshold) for c in manifest.findings.classes] == [("caries", 0.6), ("crown", 0.5)]
    assert (manifest.input.mean, manifest.input.std, manifest.teeth and manifest.teeth.name) == (0.0, 1.0, "teeth")
    found = _analyse(out, panoramic, capsys)
    assert sorted((f["kind"], f["tooth_fdi"]) for f in found) == [("caries", "16"), ("crown", "26")]


def test_monai_per_tooth_classifier_imports_its_columns(
    tmp_path: Path, panoramic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probs = np.full((32, 3), 0.1, np.float32)
    probs[PERMANENT_FDI.index("47"), 2] = 0.9
    ndf = {"probs": _tensor_format("probabilities", "classes", ["healthy", "caries", "crown"], [32])}
    monai = _monai_bundle(tmp_path, constant_onnx({"probs": probs}), ndf)
    describe = (
        DESCRIBE_TOML + f'[outputs.tooth_classification]\nactivation = "none"\nteeth_fdi = {list(PERMANENT_FDI)}\n'
    )
    assert _pack_monai(tmp_path, monai, describe, capsys) == (0, "")
    decoder = load_bundle(tmp_path / "bundle").manifest.decoder
    assert isinstance(decoder, ToothClassificationOutput)
    assert decoder.columns == ("", "caries", "crown")
    found = _analyse(tmp_path / "bundle", panoramic, capsys)
    assert [(f["kind"], f["tooth_fdi"], f["confidence"]) for f in found] == [("crown", "47", pytest.approx(0.9))]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: (m / "models" / "model.onnx").unlink(), "no models/model.onnx"),
        (lambda m: (m / "configs" / "metadata.json").write_text("{}"), "network_data_format with inputs and outputs"),
        (
            lambda m: _rewrite(
                m, lambda ndf: ndf["outputs"]["findings"].update(channel_def={"0": "caries", "1": "cap"})
            ),
            "channel_def names caries, cap",
        ),
        (
            lambda m: _rewrite(m, lambda ndf: ndf["inputs"]["image"].update(spatial_shape=["*", "*"])),
            "the agent needs a fixed 2-D [H, W]",
        ),
    ],
)
def test_monai_import_names_what_it_cannot_read(
    tmp_path: Path, edit: Any, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monai = _monai_bundle(tmp_path, constant_onnx(_segmentation_outputs()), SEGMENTATION_NDF)
    edit(monai)
    code, err = _pack_monai(tmp_path, monai, DESCRIBE_TOML, capsys)
    assert code != 0
    assert reason in err


def _rewrite(monai: Path, edit: Any) -> None:
    path = monai / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    edit(metadata["network_data_format"])
    path.write_text(json.dumps(metadata))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["outputs"]["detection"].update(scores="confidence"), "model output 'confidence' is missing"),
        (lambda d: d["input"].update(name="pixels"), "the description's input.name is 'pixels'"),
        (lambda d: d["outputs"].pop("teeth"), "has no tooth source"),
        (lambda d: d.update(colour="blue"), "colour is not a description field"),
        (lambda d: d["outputs"]["detection"].update(nms=True), "iou_threshold is missing"),
    ],
)
def test_pack_refuses_a_description_that_does_not_fit_the_model(
    tmp_path: Path, edit: Any, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = constant_onnx(
        {
            "teeth": split_teeth("16", "26"),
            "boxes": np.asarray([LEFT_BOX], np.float32),
            "scores": np.asarray([0.9], np.float32),
            "labels": np.asarray([0], np.float32),
        }
    )
    description: dict[str, Any] = json.loads(json.dumps(BASE))
    description["outputs"] = {
        "kind": "detection",
        "teeth": TEETH,
        "detection": {"boxes": "boxes", "scores": "scores", "classes": "labels"},
        "findings": {"classes": [CARIES]},
    }
    edit(description)
    (tmp_path / "m.onnx").write_bytes(model)
    (tmp_path / "d.json").write_text(json.dumps(description))
    out = tmp_path / "bundle"
    code = main(
        ["model", "pack", "--onnx", str(tmp_path / "m.onnx"), "--describe", str(tmp_path / "d.json"), "--out", str(out)]
    )
    assert code != 0
    assert reason in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
