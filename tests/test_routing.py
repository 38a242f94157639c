"""Routing: which active bundle an image goes to, or why it is skipped (pure: headers and manifests, no model run).

Two bundles: the committed reference (panoramic PX/DX/CR) and a tiny intra-oral bitewing model; images from the
product's generator (as it makes them, and turned into intra-oral ones), a 16x16 CR and pydicom's own files.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge.cli.model import DEFAULT_BUNDLE
from edge.errors import BundleError, UnsupportedImage
from edge.pipeline.analyzer import read_dataset
from edge.pipeline.routing import Accepted, Skipped, detect_view, image_facts, route
from models.bundle import LEGACY_PANORAMIC, Bundle, accepts_of, load_bundle, pack_bundle, parse_bundle
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.pipeline_helpers import (
    MANIFEST,
    as_intra_oral,
    bitewing_bundle,
    bright_spot_image,
    tiny_bundle,
    write_radiograph,
)

SEED = 4242


@pytest.fixture(scope="module")
def reference() -> Bundle:
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def bitewing() -> Bundle:
    return bitewing_bundle()


@pytest.fixture(scope="module")
def panoramic() -> Dataset:
    return synthetic_dataset(generate(SEED), SEED)


def _pano(panoramic: Dataset) -> Dataset:
    return copy.deepcopy(panoramic)


def _small_cr(tmp_path: Path) -> Dataset:
    path = tmp_path / "cr.dcm"
    write_radiograph(path, bright_spot_image(16, 16), modality="CR")
    return dcmread(path)


def _route(ds: Dataset, *bundles: Bundle) -> Accepted | Skipped:
    return route(image_facts(ds), bundles)


def _id(decision: Accepted | Skipped) -> str:
    assert isinstance(decision, Accepted), decision
    return decision.bundle.manifest.id


def _reason(decision: Accepted | Skipped) -> str:
    assert isinstance(decision, Skipped), decision
    return decision.reason


def test_the_generators_panoramic_goes_to_the_panoramic_model(
    panoramic: Dataset, reference: Bundle, bitewing: Bundle
) -> None:
    assert _id(_route(_pano(panoramic), bitewing, reference)) == "btt-reference-dental-pano"
    decision = _route(_pano(panoramic), reference, bitewing)
    assert isinstance(decision, Accepted)
    assert (decision.index, decision.view.view) == (0, "panoramic")


def test_a_bitewing_goes_to_the_bitewing_model(panoramic: Dataset, reference: Bundle, bitewing: Bundle) -> None:
    ds = as_intra_oral(_pano(panoramic), "bitewing")
    decision = _route(ds, reference, bitewing)
    assert _id(decision) == "tiny-bitewing-model"
    assert isinstance(decision, Accepted)
    assert decision.index == 1


def test_a_bitewing_with_only_the_panoramic_model_is_skipped_saying_so(panoramic: Dataset, reference: Bundle) -> None:
    reason = _reason(_route(as_intra_oral(_pano(panoramic), "bitewing"), reference))
    assert reason.startswith("no model for intra-oral bitewings; active: btt-reference-dental-pano (panoramic")


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        ("periapical", "no model for intra-oral periapicals"),
        (None, "no model for intra-oral images that do not name their view"),
    ],
)
def test_other_intra_oral_images_are_skipped_with_reason(
    panoramic: Dataset, reference: Bundle, bitewing: Bundle, view: str | None, reason: str
) -> None:
    text = _reason(_route(as_intra_oral(_pano(panoramic), view), reference, bitewing))
    assert text.startswith(reason)
    assert "tiny-bitewing-model (bitewing IO)" in text  # what is active, for the technician


def test_a_16x16_cr_is_too_small_for_the_panoramic_model(tmp_path: Path, reference: Bundle, bitewing: Bundle) -> None:
    reason = _reason(_route(_small_cr(tmp_path), reference, bitewing))
    assert reason.startswith("image too small for btt-reference-dental-pano: 16 x 16 pixels")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "no model for CBCT images (modality CT)"),
        ("MR_small.dcm", "no model for modality MR images"),
        ("examples_rgb_color.dcm", "no model for modality US images"),
    ],
)
def test_pydicoms_files_are_skipped_with_reason(reference: Bundle, bitewing: Bundle, name: str, reason: str) -> None:
    assert _reason(_route(dcmread(str(get_testdata_file(name))), reference, bitewing)).startswith(reason)


def test_a_dx_that_names_no_view_is_a_panoramic_only_if_shaped_like_one(panoramic: Dataset, reference: Bundle) -> None:
    ds = _pano(panoramic)
    ds.Modality = "DX"
    assert detect_view(image_facts(ds)).by_shape
    assert _id(_route(ds, reference)) == "btt-reference-dental-pano"
    ds.Rows, ds.Columns = 2500, 2000  # portrait: a chest or a cephalometric, not a panoramic
    reason = _reason(_route(ds, reference))
    assert reason.startswith("image not shaped like a panoramic for btt-reference-dental-pano: 2500 x 2000 pixels")
    ds.Rows, ds.Columns = 1000, 2000
    ds.BodyPartExamined = "CHEST"
    assert _reason(_route(ds, reference)).startswith("no model for DX images of the chest (Body Part Examined)")
    del ds.BodyPartExamined
    ds.SeriesDescription = "Chest PA"  # posteroanterior on a DX, not periapical
    assert _id(_route(ds, reference)) == "btt-reference-dental-pano"
    ds.SeriesDescription = "Lateral ceph"
    assert _reason(_route(ds, reference)).startswith("no model for cephalometric images")


def test_a_view_named_in_the_view_code_sequence_wins_over_the_description(panoramic: Dataset) -> None:
    ds = as_intra_oral(_pano(panoramic), "bitewing")
    ds.SeriesDescription = "Periapical"
    assert detect_view(image_facts(ds)).view == "bitewing"
    del ds.ViewCodeSequence
    assert detect_view(image_facts(ds)).view == "periapical"
    ds.SeriesDescription = "BW and PA series"  # one source naming two views names none
    detected = detect_view(image_facts(ds))
    assert detected.view is None
    assert "two views (bitewing and periapical)" in detected.label


def test_the_pixel_checks_name_what_is_off(panoramic: Dataset, reference: Bundle) -> None:
    ds = _pano(panoramic)
    ds.PhotometricInterpretation = "RGB"
    assert _reason(_route(ds, reference)) == (
        "btt-reference-dental-pano reads MONOCHROME1/MONOCHROME2 images; this one is RGB"
    )
    ds = _pano(panoramic)
    ds.ImagerPixelSpacing = [0.5, 0.5]
    assert _reason(_route(ds, reference)).startswith("pixel spacing 0.500 mm is outside what btt-reference-dental-pano")
    ds = _pano(panoramic)
    ds.Rows, ds.Columns = 5000, 10000
    assert _reason(_route(ds, reference)).startswith("image too large for btt-reference-dental-pano")
    ds = _pano(panoramic)
    del ds.ImagerPixelSpacing  # many units give none: the size and shape still decide
    assert _id(_route(ds, reference)) == "btt-reference-dental-pano"
    del ds.PixelData
    assert _reason(_route(ds, reference)) == "the file holds no image (no pixel data)"
    assert _reason(route(image_facts(_pano(panoramic)), [])) == "no model is active"


def test_the_first_bundle_that_accepts_an_image_takes_it(reference: Bundle) -> None:
    small = Dataset()
    small.Modality, small.PhotometricInterpretation, small.Rows, small.Columns = "PX", "MONOCHROME2", 100, 200
    small.PixelData = np.zeros((100, 200), "<u2").tobytes()
    tiny = tiny_bundle()  # a panoramic model taking small images (the pipeline tests' own)
    assert _id(_route(small, reference, tiny)) == "tiny-test-model"  # too small for the reference
    small.Rows, small.Columns = 1000, 2000
    assert _id(_route(small, reference, tiny)) == "btt-reference-dental-pano"
    assert _id(_route(small, tiny, reference)) == "tiny-test-model"


def test_a_manifest_without_accepts_is_read_as_a_panoramic_model_only(panoramic: Dataset) -> None:
    legacy = dataclasses.replace(MANIFEST, accepts=None)
    bundle = parse_bundle(pack_bundle(legacy, dict(tiny_bundle().files)))
    assert bundle.manifest.accepts is None
    assert accepts_of(bundle.manifest) == dataclasses.replace(LEGACY_PANORAMIC, modalities=("PX", "DX"))
    assert _id(_route(_pano(panoramic), bundle)) == "tiny-test-model"
    assert _reason(_route(as_intra_oral(_pano(panoramic), "bitewing"), bundle)).startswith(
        "no model for intra-oral bitewings"
    )
    small = _pano(panoramic)
    small.Rows, small.Columns = 100, 200  # what the old agent analysed, the legacy reading refuses
    assert _reason(_route(small, bundle)).startswith("image too small for tiny-test-model")
    only_io = dataclasses.replace(legacy, input=dataclasses.replace(MANIFEST.input, modalities=("IO",)))
    with pytest.raises(BundleError, match=r"no accepts block.*declare which images the bundle is for"):
        parse_bundle(pack_bundle(only_io, dict(tiny_bundle().files)))


def test_malformed_headers_route_without_raising(reference: Bundle) -> None:
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns = "PX", None, None
    ds.ImageType = "PANORAMIC"
    ds.ViewCodeSequence = Sequence([Dataset()])
    ds.ImagerPixelSpacing = [0, -1]
    ds.PixelData = b"\0\0"
    facts = image_facts(ds)
    assert (facts.rows, facts.columns, facts.spacing_mm, facts.image_type) == (None, None, None, ("PANORAMIC",))
    assert _reason(route(facts, [reference])) == (
        "btt-reference-dental-pano reads MONOCHROME1/MONOCHROME2 images; this one is (none)"
    )
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert _reason(_route(ds, reference)) == "the image does not give its size (Rows, Columns)"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the oddities some of its files hold
def test_every_pydicom_test_file_routes_without_raising_and_none_is_taken(reference: Bundle, bitewing: Bundle) -> None:
    """pydicom's own files (CT, MR, US, RT, SEG, a CR of the cervical spine, files without pixels or a modality):
    none is a dental radiograph, each is skipped with a reason, nothing raises."""
    reasons = set()
    for path in (p for p in map(Path, get_testdata_files()) if p.is_file()):
        try:
            ds = read_dataset(path)
        except UnsupportedImage:  # a few are deliberately broken or not DICOM at all: the reader refuses those
            continue
        decision = route(image_facts(ds), [reference, bitewing])
        assert isinstance(decision, Skipped), path.name
        reasons.add(decision.reason.split(";")[0])
    assert len(reasons) >= 8
    assert "no model for CR images of the cspine (Body Part Examined)" in reasons
    assert all(r.startswith(("no model for ", "the file holds no image")) for r in reasons), reasons
