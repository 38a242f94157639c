"""Bundle loading: a packed bundle loads from a directory or a tar archive; anything off is refused with why."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge
from dental.teeth import PERMANENT_FDI
from edge.errors import BundleError
from models.bundle import (
    AGENT_VERSION,
    LEGACY_PANORAMIC,
    MANIFEST_NAME,
    MODEL_NAME,
    Accepts,
    Code,
    FindingClass,
    FindingsOutput,
    GoldenSpec,
    InputSpec,
    Manifest,
    TeethOutput,
    Variant,
    accepts_of,
    describe_accepts,
    load_bundle,
    manifest_to_json,
    pack_bundle,
    parse_bundle,
    parse_manifest,
    version_satisfies,
    write_bundle,
)

MANIFEST = Manifest(
    format=1,
    id="test-bundle",
    version="1.2.3",
    task="dental-panoramic-segmentation",
    requires_agent=">=0.1,<1",
    clinical=False,
    description="test",
    input=InputSpec("image", 64, 128, 1, (0.5, 99.5), 0.5, 0.25, ("PX",)),
    teeth=TeethOutput("teeth", PERMANENT_FDI),
    findings=FindingsOutput("findings", (FindingClass("caries", Code("SCT", "80967001", "Dental caries"), 0.5, 4),)),
    files={},
    golden=(GoldenSpec("golden/a.npz", 0.05),),
)
FILES = {MODEL_NAME: b"onnx bytes", "golden/a.npz": b"golden bytes"}


INT8 = Variant("int8", "model.int8.onnx", ("onnxruntime-cpu",), (GoldenSpec("golden/a.int8.npz", 0.05),))
WITH_INT8 = dataclasses.replace(MANIFEST, variants=(INT8,))
FILES_INT8 = {**FILES, "model.int8.onnx": b"int8 onnx bytes", "golden/a.int8.npz": b"int8 golden bytes"}


def _doc(files: dict[str, bytes]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(files[MANIFEST_NAME])
    return doc


def _with_doc(files: dict[str, bytes], doc: dict[str, object]) -> dict[str, bytes]:
    return {**files, MANIFEST_NAME: json.dumps(doc).encode()}


def test_packed_bundle_round_trips(tmp_path: Path) -> None:
    packed = pack_bundle(MANIFEST, FILES)
    write_bundle(tmp_path / "b", packed)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.model_bytes == b"onnx bytes"
    assert bundle.manifest.input == MANIFEST.input
    assert bundle.manifest.findings == MANIFEST.findings
    assert dict(bundle.files) == FILES
    assert len(bundle.sha256) == 64
    assert manifest_to_json(bundle.manifest) == _doc(packed)


def test_tar_archive_loads(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in pack_bundle(MANIFEST, FILES).items():
            info = tarfile.TarInfo(f"reference/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert load_bundle(archive).model_bytes == b"onnx bytes"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path, pack_bundle(MANIFEST, FILES))
    (tmp_path / MODEL_NAME).write_bytes(b"onnx bytez")
    with pytest.raises(BundleError, match=r"model\.onnx has sha256 .* \(tampered or corrupt\)"):
        load_bundle(tmp_path)


def test_missing_file_is_refused() -> None:
    packed = pack_bundle(MANIFEST, FILES)
    del packed["golden/a.npz"]
    with pytest.raises(BundleError, match=r"golden/a\.npz is listed in the manifest but missing"):
        parse_bundle(packed)


def test_unlisted_file_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path, pack_bundle(MANIFEST, FILES))
    (tmp_path / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"extra\.bin not listed in the manifest"):
        load_bundle(tmp_path)


def test_symlink_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", pack_bundle(MANIFEST, FILES))
    (tmp_path / "b" / "link").symlink_to(tmp_path / "b" / MODEL_NAME)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(tmp_path / "b")


def test_incompatible_agent_is_refused() -> None:
    packed = pack_bundle(dataclasses.replace(MANIFEST, requires_agent=">=2.0"), FILES)
    with pytest.raises(BundleError, match=r"test-bundle 1\.2\.3 requires agent >=2\.0; this agent is 0\.1\.0"):
        parse_bundle(packed, agent_version="0.1.0")
    assert parse_bundle(packed, agent_version="2.1.0").manifest.id == "test-bundle"


def test_bundles_are_checked_against_the_agents_own_version() -> None:
    assert edge.__version__ == AGENT_VERSION
    with pytest.raises(BundleError, match=f"this agent is {AGENT_VERSION}"):
        parse_bundle(pack_bundle(dataclasses.replace(MANIFEST, requires_agent=">=99"), FILES))


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such directory or archive"):
        load_bundle(tmp_path / "nope")


def test_no_manifest_is_refused() -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        parse_bundle(FILES)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.update(format=2), "format 2 is not supported"),
        (lambda d: d.pop("id"), "missing id"),
        (lambda d: d.update(version="1.2"), "not a semantic version"),
        (lambda d: d.update(requires_agent="~=1"), "not a version clause"),
        (lambda d: d.update(clinical="no"), "clinical has the wrong type"),
        (lambda d: d["input"].update(std=0), "input.std must be positive"),
        (lambda d: d["input"].update(window_percentiles=[99, 1]), "window_percentiles"),
        (lambda d: d["input"].update(height=True), "input.height has the wrong type"),
        (lambda d: d["outputs"]["teeth"].update(labels_fdi=["19"]), "'19', not an FDI tooth number"),
        (lambda d: d["outputs"]["findings"]["classes"][0].update(threshold=1.0), "strictly between 0 and 1"),
        (lambda d: d["outputs"]["findings"]["classes"][0].update(kind="Caries!"), "is not a code name"),
        (lambda d: d["outputs"]["findings"].update(classes=[]), "classes is empty"),
        (lambda d: d["files"].update({"../evil": "0" * 64}), "not a plain relative path"),
        (lambda d: d["files"].update({"model.onnx": "XYZ"}), "not a lower-case sha256"),
        (lambda d: d["golden"][0].update(file="golden/b.npz"), "is not listed in files"),
    ],
)
def test_bad_manifest_names_the_problem(edit: Callable[[Any], object], reason: str) -> None:
    packed = pack_bundle(MANIFEST, FILES)
    doc = _doc(packed)
    edit(doc)
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_with_doc(packed, doc))


def test_variant_round_trips_and_gives_a_view_per_backend() -> None:
    bundle = parse_bundle(pack_bundle(WITH_INT8, FILES_INT8))
    assert bundle.manifest.variants == (INT8,)
    assert parse_manifest(pack_bundle(WITH_INT8, FILES_INT8)[MANIFEST_NAME]).variants == (INT8,)
    assert (bundle.precision, bundle.model_bytes, bundle.golden) == ("fp32", b"onnx bytes", MANIFEST.golden)
    base, int8 = bundle.networks_for("onnxruntime-cpu")
    assert base == bundle
    assert (int8.precision, int8.model_bytes, int8.golden) == ("int8", b"int8 onnx bytes", INT8.golden)
    assert int8.sha256 == bundle.manifest.files["model.int8.onnx"] != bundle.sha256
    assert int8.networks_for("tensorrt") == (bundle,)  # a view's networks start from the bundle's own
    assert bundle.network_for("onnxruntime-cpu", "int8") == int8
    assert bundle.network_for("onnxruntime-cpu", "fp32") == bundle.network_for("tensorrt", "int8") == bundle
    assert "variants" not in _doc(pack_bundle(MANIFEST, FILES))  # a bundle without variants reads as before


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda v: v.update(precision="int4"), r"variants\[0\].precision 'int4' is not one of fp16, int8"),
        (lambda v: v.update(file="model.int4.onnx"), r"variants\[0\].file 'model.int4.onnx' is not listed"),
        (lambda v: v.update(file="model.onnx"), "two networks"),
        (lambda v: v.update(backends=[]), "backends must be a non-empty list"),
        (lambda v: v.update(golden=[]), "has no golden vectors"),
        (lambda v: v["golden"][0].update(file="golden/b.npz"), r"variants\[0\].golden\[0\].file"),
    ],
)
def test_bad_variant_names_the_problem(edit: Callable[[Any], object], reason: str) -> None:
    packed = pack_bundle(WITH_INT8, FILES_INT8)
    doc = _doc(packed)
    edit(doc["variants"][0])
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_with_doc(packed, doc))


BITEWINGS = Accepts(views=("bitewing",), modalities=("PX",), rows=(200, 3000), columns=(200, 3000), aspect=(0.5, 2.0))
WITH_ACCEPTS = dataclasses.replace(MANIFEST, accepts=BITEWINGS)


def test_accepts_round_trips_and_a_manifest_without_is_read_as_panoramic() -> None:
    packed = pack_bundle(WITH_ACCEPTS, FILES)
    manifest = parse_bundle(packed).manifest
    assert manifest.accepts == BITEWINGS
    assert accepts_of(manifest) == BITEWINGS
    assert _doc(packed)["accepts"] == {
        "views": ["bitewing"],
        "modalities": ["PX"],
        "photometric": ["MONOCHROME1", "MONOCHROME2"],
        "rows": [200, 3000],
        "columns": [200, 3000],
        "aspect": [0.5, 2.0],
    }
    doc = _doc(packed)
    doc["accepts"] = {"views": ["periapical"], "modalities": ["PX"]}  # the ranges are optional
    minimal = parse_bundle(_with_doc(packed, doc)).manifest.accepts
    assert minimal == Accepts(views=("periapical",), modalities=("PX",))
    legacy = parse_bundle(pack_bundle(MANIFEST, FILES)).manifest
    assert "accepts" not in _doc(pack_bundle(MANIFEST, FILES))
    assert legacy.accepts is None
    assert accepts_of(legacy) == dataclasses.replace(LEGACY_PANORAMIC, modalities=("PX",))
    assert not accepts_of(legacy).declared
    assert describe_accepts(accepts_of(legacy)).startswith("panoramic PX, MONOCHROME1/MONOCHROME2, 512-4096 rows")
    assert describe_accepts(accepts_of(legacy)).endswith("(no accepts block: read as a panoramic model)")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda a: a.update(views=["lateral"]), r"accepts.views has 'lateral', not one of panoramic, "),
        (lambda a: a.update(views=[]), r"accepts.views must be a non-empty list"),
        (lambda a: a.update(views=["bitewing", "bitewing"]), r"accepts.views repeats a name"),
        (lambda a: a.update(modalities=["IO"]), r"accepts.modalities has IO, which input.modalities does not list"),
        (lambda a: a.pop("modalities"), r"missing accepts.modalities"),
        (lambda a: a.update(photometric=["RGB"]), r"accepts.photometric has 'RGB'"),
        (lambda a: a.update(rows=[3000, 200]), r"accepts.rows \[3000, 200\] must satisfy 1 <= low <= high"),
        (lambda a: a.update(columns=[1.5, 20]), r"accepts.columns must be two integers"),
        (lambda a: a.update(aspect=[0, 2]), r"accepts.aspect \[0, 2\] must satisfy 0.01 <= low"),
        (lambda a: a.update(pixel_spacing_mm=[0.1]), r"accepts.pixel_spacing_mm must be two numbers"),
        (lambda a: a.update(min_rows=512), r"accepts.min_rows is not an accepts field"),
    ],
)
def test_bad_accepts_names_the_problem(edit: Callable[[Any], object], reason: str) -> None:
    packed = pack_bundle(WITH_ACCEPTS, FILES)
    doc = _doc(packed)
    edit(doc["accepts"])
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_with_doc(packed, doc))


def test_manifest_that_is_not_json() -> None:
    with pytest.raises(BundleError, match="not valid JSON"):
        parse_manifest(b"{not json")


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("0.1.0", ">=0.1,<1", True),
        ("0.9.9", ">=0.1,<1", True),
        ("1.0.0", ">=0.1,<1", False),
        ("0.0.9", ">=0.1,<1", False),
        ("1.2", "==1.2.0", True),
        ("1.2.1", "!=1.2.1", False),
        ("3", ">2.9.9", True),
    ],
)
def test_version_satisfies(version: str, spec: str, ok: bool) -> None:
    assert version_satisfies(version, spec) is ok
