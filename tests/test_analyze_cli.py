"""``btt-edge analyze``: JSON array per file, skipped images with reasons, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from models.bundle import pack_bundle, write_bundle
from tests.pipeline_helpers import MANIFEST, bright_spot_image, tiny_bundle, write_radiograph


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
    assert "modality XC" in docs[1]["reason"]
    assert "not a readable DICOM file" in docs[2]["reason"]


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
        assert finding["kind"] in {
            "caries",
            "periapical_lesion",
            "restoration",
            "crown",
            "root_canal_filling",
            "implant",
            "bone_loss",
        }
