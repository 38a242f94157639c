"""The synthetic generator: deterministic, plausible contrast, and ground truth that matches what it drew."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dental.findings import Finding
from dental.teeth import PERMANENT_FDI
from edge.cli import main
from models.synthetic import KINDS, SyntheticImage, generate, render_labels


@pytest.fixture(scope="module")
def images() -> list[SyntheticImage]:
    return [generate(seed) for seed in range(6)]


def _grid(image: SyntheticImage) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = image.pixels.shape
    return (np.arange(cols) + 0.5) * image.spacing_mm, (np.arange(rows) + 0.5) * image.spacing_mm


def test_same_seed_same_image() -> None:
    a, b = generate(11), generate(11)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.findings == b.findings
    assert not np.array_equal(a.pixels, generate(12).pixels)


def test_pixels_and_teeth_are_plausible(images: list[SyntheticImage]) -> None:
    for image in images:
        assert image.pixels.dtype == np.uint16
        rows, cols = image.pixels.shape
        assert 900 <= rows <= 1150
        assert 1.8 <= cols / rows <= 2.3
        assert 0.13 <= image.spacing_mm <= 0.15
        assert 24 <= len(image.teeth_fdi) <= 32
        assert set(image.teeth_fdi) <= set(PERMANENT_FDI)
        assert int(image.pixels.max()) - int(image.pixels.min()) > 20000


def test_every_kind_is_planted_somewhere(images: list[SyntheticImage]) -> None:
    assert {f.kind for image in images for f in image.findings} == set(KINDS)


def test_ground_truth_is_consistent(images: list[SyntheticImage]) -> None:
    for image in images:
        rows, cols = image.pixels.shape
        for f in image.findings:
            assert f.kind in KINDS
            assert f.tooth_fdi in image.teeth_fdi
            assert f.confidence == 1.0
            x0, y0, x1, y1 = f.bbox
            assert 0 <= x0 < x1 <= cols
            assert 0 <= y0 < y1 <= rows
            assert 0 < f.area_px <= (x1 - x0) * (y1 - y0)
            assert f.area_mm2 == pytest.approx(f.area_px * image.spacing_mm**2)
            assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in f.polygon)
            if f.kind == "bone_loss":
                assert f.bone_loss_mm is not None
                assert f.bone_loss_pct is not None
                assert 1.5 <= f.bone_loss_mm <= 12.0
                assert 0.0 < f.bone_loss_pct < 100.0
            else:
                assert f.bone_loss_mm is None
            assert Finding.from_json(json.loads(json.dumps(f.to_json()))).bbox == f.bbox
        implants = {f.tooth_fdi for f in image.findings if f.kind == "implant"}
        crowns = {f.tooth_fdi for f in image.findings if f.kind == "crown"}
        assert implants <= crowns


def test_labels_match_the_truth_and_the_pixels(images: list[SyntheticImage]) -> None:
    """Masks drawn on the source grid cover the truth exactly; planted findings change the pixels as they should."""
    for image in images[:3]:
        xs, ys = _grid(image)
        labels, masks = render_labels(image.scene, xs, ys)
        present = {PERMANENT_FDI[k - 1] for k in np.unique(labels) if k}
        assert present == set(image.teeth_fdi)
        pixels = image.pixels.astype(np.float64)
        teeth = labels > 0
        for kind in KINDS:
            truth = [f for f in image.findings if f.kind == kind]
            mask = masks[KINDS.index(kind)]
            assert mask.any() == bool(truth)
            assert mask.sum() <= sum(f.area_px for f in truth)
            if not truth:
                continue
            inside = pixels[mask].mean()
            if kind in ("restoration", "crown", "root_canal_filling", "implant"):
                assert inside > pixels[teeth & ~mask].mean()  # radiopaque
            if kind == "caries":
                assert inside < pixels[teeth & ~masks.any(axis=0)].mean()  # radiolucent


def test_render_labels_outside_the_image_is_empty(images: list[SyntheticImage]) -> None:
    image = images[0]
    xs = np.array([-5.0, -1.0, image.scene.cols * image.spacing_mm + 1.0])
    ys = np.linspace(0, image.scene.rows * image.spacing_mm, 50)
    labels, masks = render_labels(image.scene, xs, ys)
    assert not labels.any()
    assert not masks.any()


def test_synth_cli_writes_dicom_and_truth(tmp_path: Path) -> None:
    assert main(["model", "synth", "--out", str(tmp_path), "--count", "2", "--seed", "40"]) == 0
    for seed in (40, 41):
        ds = pydicom.dcmread(tmp_path / f"synthetic-{seed:06d}.dcm")
        image = generate(seed)
        assert ds.Modality == "PX"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([image.spacing_mm] * 2, abs=1e-6)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert np.array_equal(ds.pixel_array, image.pixels)
        truth = json.loads((tmp_path / f"synthetic-{seed:06d}.json").read_text())
        assert truth["sop_instance_uid"] == ds.SOPInstanceUID
        assert truth["status"] == "analysed"
        assert truth["model"]["id"] == "synthetic-ground-truth"
        findings = truth["findings"]
        assert [Finding.from_json(doc) for doc in findings] == [Finding.from_json(f.to_json()) for f in image.findings]
        assert all({"kind", "tooth_fdi", "tooth_universal", "confidence", "bbox"} <= set(doc) for doc in findings)


def test_synth_cli_rejects_a_bad_count(tmp_path: Path) -> None:
    assert main(["model", "synth", "--out", str(tmp_path), "--count", "0"]) == 2


@pytest.mark.integration
def test_synthetic_dicom_passes_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy", path="/usr/bin")
    assert dciodvfy is not None, "dicom3tools' /usr/bin/dciodvfy is required"
    assert main(["model", "synth", "--out", str(tmp_path), "--count", "1", "--seed", "3"]) == 0
    result = subprocess.run(
        [dciodvfy, str(tmp_path / "synthetic-000003.dcm")], capture_output=True, text=True, check=False
    )
    report = result.stdout + result.stderr
    assert "DXImageForPresentation" in report
    assert "Error" not in report, report
