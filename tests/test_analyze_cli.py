"""``btt-edge analyze``: JSON array per file, each routed to the bundle that accepts it, skipped images with
reasons, exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from edge.cli import main
from edge.cli.model import DEFAULT_BUNDLE
from models.bundle import pack_bundle, write_bundle
from models.synthetic import KINDS, generate
from models.synthetic_dicom import synthetic_dataset
from tests.pipeline_helpers import (
    BITEWING_MANIFEST,
    MANIFEST,
    as_intra_oral,
    bitewing_bundle,
    bright_spot_image,
    tiny_bundle,
    write_radiograph,
)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bundle"
    write_bundle(directory, pack_bundle(MANIFEST, {k: v for k, v in tiny_bundle().files.items()}))
    return directory


def test_analyze_json(tmp_path: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.dcm"
    uid = write_radiograph(good, bright_spot_image())
    photo = tmp_path / "photo.dcm"
    write_radiograph(photo, bright_spot_image(), modality="XC")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    code = main(["analyze", str(good), str(photo), str(junk), "--json", "--bundle", str(bundle_dir), "--threads", "1"])
    assert code == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["status"] for d in docs] == ["analysed", "skipped", "skipped"]
    first = docs[0]
    assert first["sop_instance_uid"] == uid
    assert first["model"] == {"id": "tiny-test-model", "version": "0.0.1", "clinical": False}
    assert first["backend"] == "onnxruntime-cpu"
    assert first["timings_ms"]["total"] > 0
    [finding] = first["findings"]
    assert {"kind", "tooth_fdi", "tooth_universal", "confidence", "bbox"} <= set(finding)
    assert (finding["kind"], finding["tooth_fdi"], finding["tooth_universal"]) == ("caries", "21", "9")
    assert docs[1]["reason"].startswith("no model for modality XC images; active: tiny-test-model (panoramic PX/DX)")
    assert "not a readable DICOM file" in docs[2]["reason"]
    assert [d["model"] for d in docs[1:]] == [None, None]  # skipped before any model ran


def test_analyze_text_and_missing_file_fails(
    tmp_path: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.dcm"
    write_radiograph(good, bright_spot_image())
    assert main(["analyze", str(good), "--bundle", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "analysed" in out
    assert "caries" in out
    assert "not a clinical diagnosis" in out
    assert main(["analyze", str(tmp_path / "missing.dcm"), "--json", "--bundle", str(bundle_dir)]) == 1
    assert json.loads(capsys.readouterr().out)[0]["status"] == "failed"


def test_analyze_with_a_broken_bundle_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "x.dcm"), "--bundle", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow
def test_analyze_with_the_committed_reference_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "synth", "--out", str(tmp_path), "--count", "1", "--seed", "11"]) == 0
    capsys.readouterr()
    [image] = tmp_path.glob("*.dcm")
    assert main(["analyze", str(image), "--json"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["status"] == "analysed"
    assert doc["model"]["id"] == "btt-reference-dental-pano"
    assert doc["model"]["clinical"] is False
    assert doc["backend"] == "onnxruntime-cpu"
    assert doc["findings"]
    for finding in doc["findings"]:
        x0, y0, x1, y1 = finding["bbox"]
        assert 0 <= x0 <= x1
        assert 0 <= y0 <= y1
        assert finding["kind"] in KINDS


def test_analyze_routes_each_file_to_the_bundle_that_accepts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committed panoramic bundle and an intra-oral bitewing one, active together: the generator's panoramic
    goes to the first, the same image made an intra-oral bitewing to the second; an intra-oral periapical, a
    16x16 CR and pydicom's CT and MR are skipped with their reason and name no model."""
    bitewing_dir = tmp_path / "bitewing"
    write_bundle(bitewing_dir, pack_bundle(BITEWING_MANIFEST, dict(bitewing_bundle().files)))
    pano = synthetic_dataset(generate(31), 31)
    files = {"pano": tmp_path / "pano.dcm", "bitewing": tmp_path / "bw.dcm", "periapical": tmp_path / "pa.dcm"}
    pano.save_as(files["pano"], enforce_file_format=True)
    as_intra_oral(copy.deepcopy(pano), "bitewing").save_as(files["bitewing"], enforce_file_format=True)
    as_intra_oral(copy.deepcopy(pano), "periapical").save_as(files["periapical"], enforce_file_format=True)
    files["cr"] = tmp_path / "cr.dcm"
    write_radiograph(files["cr"], bright_spot_image(16, 16), modality="CR")
    files["ct"] = Path(str(get_testdata_file("CT_small.dcm")))
    files["mr"] = Path(str(get_testdata_file("MR_small.dcm")))
    args = ["analyze", *map(str, files.values()), "--json", "--threads", "1", "--backend", "onnxruntime-cpu"]
    assert main([*args, "--bundle", str(DEFAULT_BUNDLE), "--bundle", str(bitewing_dir)]) == 0
    docs = dict(zip(files, json.loads(capsys.readouterr().out), strict=True))
    assert {k: d["status"] for k, d in docs.items()} == {
        "pano": "analysed",
        "bitewing": "analysed",
        "periapical": "skipped",
        "cr": "skipped",
        "ct": "skipped",
        "mr": "skipped",
    }
    assert docs["pano"]["model"]["id"] == "btt-reference-dental-pano"
    assert docs["pano"]["findings"]
    assert docs["bitewing"]["model"] == {"id": "tiny-bitewing-model", "version": "0.0.1", "clinical": False}
    assert docs["periapical"]["reason"].startswith("no model for intra-oral periapicals; active: ")
    assert docs["cr"]["reason"].startswith("image too small for btt-reference-dental-pano: 16 x 16 pixels")
    assert docs["ct"]["reason"].startswith("no model for CBCT images (modality CT)")
    assert docs["mr"]["reason"].startswith("no model for modality MR images")
    for key in ("periapical", "cr", "ct", "mr"):
        assert (docs[key]["model"], docs[key]["backend"], docs[key]["findings"]) == (None, None, [])
    # the panoramic bundle alone: the bitewing has no model
    assert main(["analyze", str(files["bitewing"]), "--json", "--bundle", str(DEFAULT_BUNDLE)]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["status"] == "skipped"
    assert doc["reason"].startswith("no model for intra-oral bitewings; active: btt-reference-dental-pano")
