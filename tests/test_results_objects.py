"""Result objects: the TID 1500 SR, the Secondary Capture overlay and the GSPS, validated by dciodvfy."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dental.teeth import PERMANENT_FDI
from edge.errors import ResultBuildError
from edge.results.analysis import Algorithm, Analysis
from edge.results.codes import tooth_codes
from edge.results.gsps import build_gsps
from edge.results.header import AI_LABEL, Equipment, series_laterality, with_empty_type2_identifiers
from edge.results.overlay import BANNER, build_overlay, plan, render
from edge.results.sr import build_sr, sr_uids
from edge.results.uids import UidFactory
from tests.results_helpers import (
    ALGORITHM,
    DCIODVFY_SOURCES,
    analysis_of,
    dciodvfy_errors,
    file_bytes,
    simulated_panoramic,
    source_image,
    synthetic_panoramic,
)

IDENTIFIERS = (
    *("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"),
    *("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription"),
)


def _walk(items: Iterable[Dataset]) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_walk(item.ContentSequence))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("case", list(DCIODVFY_SOURCES))
def test_objects_pass_dciodvfy_and_copy_identifiers(case: str, tmp_path: Path) -> None:
    """Every result kind from every source (the generator's and the simulator's panoramics, each Image
    Laterality, a third-party CT): no dciodvfy error, no Laterality warning, patient and study as received."""
    source = DCIODVFY_SOURCES[case]()
    received = dcmread(io.BytesIO(file_bytes(source)))  # as the store holds it
    source = with_empty_type2_identifiers(source)
    for build in (build_sr, build_overlay, build_gsps):
        ds = build(source, analysis_of(source), UidFactory("1.2.3.4"))
        path = tmp_path / f"{build.__name__}.dcm"
        path.write_bytes(file_bytes(ds))
        assert dciodvfy_errors(path) == [], f"{case} {build.__name__}"
        back = dcmread(path)
        for keyword in IDENTIFIERS:
            if keyword in received:
                assert back[keyword].value == received[keyword].value, f"{case} {build.__name__} {keyword}"
        assert back.SOPInstanceUID.startswith("1.2.3.4.")
        assert back.SeriesInstanceUID != source.SeriesInstanceUID
        assert back.SeriesDescription == AI_LABEL
        if back.Modality == "SR":
            assert "Laterality" not in back
        else:
            assert back.get("Laterality") == series_laterality(source), f"{case} {build.__name__}"
            assert back.get("Laterality", "R") in ("R", "L")  # never B, U or empty


def test_sr_content_names_algorithm_findings_teeth_and_region() -> None:
    source = source_image("PX")
    sr = build_sr(source, analysis_of(source), UidFactory())
    items = _walk(sr.ContentSequence)
    texts = {i.TextValue for i in items if i.ValueType == "TEXT"}
    uids = {i.UID for i in items if i.ValueType == "UIDREF"}
    codes = {(i.ConceptCodeSequence[0].CodingSchemeDesignator, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"}  # fmt: skip
    nums = {(i.ConceptNameCodeSequence[0].CodeMeaning, float(i.MeasuredValueSequence[0].NumericValue))
            for i in items if i.ValueType == "NUM"}  # fmt: skip
    scoords = [i for i in items if i.ValueType == "SCOORD"]
    assert {"BTT reference dental model", "0.1.0", "cleared_for_clinical_use=false", "precision=fp32"} <= texts
    assert ("SCT", "80967001") in codes
    assert ("SCT", "445321007") in codes
    assert {("ISO3950", "36"), ("ADAUNIVERSAL", "19"), ("SCT", "866006002")} <= codes  # tooth 36 three ways
    assert {("Area", 12.0), ("Alveolar bone loss, length", 3.2), ("AI model confidence", 0.91)} <= nums
    assert ("Alveolar bone loss, percent of root length", 24.5) in nums
    assert ("Area", 600.0) in nums  # uncalibrated: in pixels
    assert len(scoords) == 3
    assert scoords[0].GraphicType == "POLYLINE"
    ref = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == (
        source.SeriesInstanceUID
    )
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert len(uids) >= 2


def test_uids_are_derived_and_stable() -> None:
    source = source_image("PX")
    first = build_sr(source, analysis_of(source), UidFactory())
    again = build_sr(source, analysis_of(source), UidFactory())
    overlay = build_overlay(source, analysis_of(source), UidFactory())
    assert first.SOPInstanceUID == again.SOPInstanceUID != overlay.SOPInstanceUID
    other = Analysis(source.SOPInstanceUID, Algorithm("other", "1.0", "x", ALGORITHM.codes), ())
    assert build_sr(source, other, UidFactory()).SOPInstanceUID != first.SOPInstanceUID


@pytest.mark.integration
@pytest.mark.parametrize("case", list(DCIODVFY_SOURCES))
def test_report_without_findings_still_names_the_algorithm(case: str, tmp_path: Path) -> None:
    source = with_empty_type2_identifiers(DCIODVFY_SOURCES[case]())
    sr = build_sr(source, Analysis(source.SOPInstanceUID, ALGORITHM, ()), UidFactory())
    (tmp_path / "sr.dcm").write_bytes(file_bytes(sr))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert not [i for i in _walk(sr.ContentSequence) if i.ValueType == "SCOORD"]
    assert "BTT reference dental model" in {i.get("TextValue") for i in _walk(sr.ContentSequence)}
    assert "no findings" in {i.get("TextValue") for i in _walk(sr.ContentSequence)}


def test_unknown_kind_is_a_build_error() -> None:
    source = source_image("PX")
    analysis = Analysis(source.SOPInstanceUID, Algorithm("b", "1", "n", {}), analysis_of(source).findings)
    with pytest.raises(ResultBuildError, match="no code for finding kind 'caries'"):
        build_sr(source, analysis, UidFactory())


def test_overlay_without_pixels_is_a_build_error() -> None:
    source = source_image("PX")
    del source.PixelData
    with pytest.raises(ResultBuildError, match="no pixel data"):
        build_overlay(source, analysis_of(source), UidFactory())


def test_render_puts_banner_above_the_image_and_draws_findings() -> None:
    pixels = np.zeros((300, 600), dtype=np.float32)
    pixels[:, 300:] = 1.0
    source = source_image("PX", rows=300, columns=600)
    findings = analysis_of(source).findings
    picture = render(pixels, findings, "algo 1.0")
    laid = plan((300, 600), findings)
    banner = laid.image_at[1]
    assert picture.shape == (laid.height, 600, 3)
    assert banner > 20
    assert (picture[2, 590] == (200, 0, 0)).all()  # banner background, away from the text
    assert laid.panel.y0 >= banner + 300  # the legend and the table below the radiograph
    body = picture[banner : banner + 300]
    assert (body[:, :, 0] != body[:, :, 1]).any()  # coloured outlines on a grey image
    assert "NOT A DIAGNOSIS" in BANNER


def test_every_permanent_tooth_has_three_codes() -> None:
    for fdi in PERMANENT_FDI:
        sct, iso, universal = tooth_codes(fdi)
        assert sct.scheme_designator == "SCT"
        assert iso.value == fdi
        assert universal.value.isdigit()
    with pytest.raises(ValueError, match="not an FDI"):
        tooth_codes("99")


def test_gsps_annotates_the_source_in_two_layers() -> None:
    source = source_image("PX")
    gsps = build_gsps(source, analysis_of(source), UidFactory())
    layers = {a.GraphicLayer: a for a in gsps.GraphicAnnotationSequence}
    assert set(layers) == {"AI_BANNER", "AI_FINDINGS"}
    assert layers["AI_BANNER"].TextObjectSequence[0].UnformattedTextValue.startswith("AI RESULT - NOT A DIAGNOSIS")
    findings = layers["AI_FINDINGS"]
    assert len(findings.GraphicObjectSequence) == 3
    assert findings.TextObjectSequence[0].UnformattedTextValue == "caries 36/U19 91%"
    assert findings.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert gsps.SoftcopyVOILUTSequence[0].WindowCenter == source.WindowCenter  # the source's own window


@pytest.mark.parametrize("build", [build_sr, build_overlay, build_gsps])
def test_utf8_patient_name_survives(build: Callable[[Dataset, Analysis, UidFactory], Dataset]) -> None:
    source = source_image("PX", rows=200, columns=400)
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "山田^太郎=Yamada^Taro"
    received = dcmread(io.BytesIO(file_bytes(source)))
    out = dcmread(io.BytesIO(file_bytes(build(received, analysis_of(received), UidFactory()))))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert out.PatientName == "山田^太郎=Yamada^Taro"


@pytest.mark.integration
@pytest.mark.parametrize("case", ["panoramic", "synthetic", "simulator"])
@pytest.mark.parametrize("missing", ["PatientName", "PatientID", "StudyDate", "StudyID", "AccessionNumber"])
def test_absent_type2_identifiers_still_give_valid_objects(case: str, missing: str, tmp_path: Path) -> None:
    source = DCIODVFY_SOURCES[case]()
    del source[missing]
    source = with_empty_type2_identifiers(source)
    for build in (build_sr, build_overlay, build_gsps):
        path = tmp_path / f"{build.__name__}.dcm"
        path.write_bytes(file_bytes(build(source, analysis_of(source), UidFactory("1.2.3.4"))))
        assert dciodvfy_errors(path) == [], f"{case} {missing} {build.__name__}"
        assert dcmread(path)[missing].value in ("", None)


def _named(items: list[Dataset], meaning: str) -> list[Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def test_every_kind_copies_the_same_patient_and_study_modules() -> None:
    source = synthetic_panoramic()
    source.PatientAge, source.PatientComments = "056Y", "no patient data"
    source.AdmittingDiagnosesDescription = "periodontitis?"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OLD-7", "OTHER"
    source.OtherPatientIDsSequence = [other]
    keywords = (*IDENTIFIERS, "PatientAge", "PatientComments", "AdmittingDiagnosesDescription")
    seen = []
    for build in (build_sr, build_overlay, build_gsps):
        ds = build(source, analysis_of(source), UidFactory())
        seen.append({k: ds[k].value for k in keywords if k in ds})
        assert ds.StudyDescription == "Synthetic panoramic radiograph (not patient data)", build.__name__
        assert ds.OtherPatientIDsSequence[0].PatientID == "OLD-7", build.__name__
    assert seen[0] == seen[1] == seen[2]
    assert set(seen[0]) == {k for k in keywords if k in source}


def test_sr_names_the_algorithm_in_tid_4019_and_the_box_by_its_serial_number() -> None:
    source = synthetic_panoramic()
    box = Equipment(serial_number="btt-1234abcd")
    sr = build_sr(source, analysis_of(source), UidFactory(), equipment=box)
    items = _walk(sr.ContentSequence)
    assert [i.TextValue for i in _named(items, "Device Observer Serial Number")] == ["btt-1234abcd"]
    assert [i.TextValue for i in _named(items, "Device Observer Manufacturer")] == ["BTT Edge"]
    assert [i.TextValue for i in _named(items, "Device Observer Model Name")] == [ALGORITHM.bundle_id]
    assert [i.TextValue for i in _named(items, "Device Observer Name")] == [ALGORITHM.name]
    groups = len(analysis_of(source).findings)
    assert [i.TextValue for i in _named(items, "Algorithm Name")] == [ALGORITHM.name] * groups
    assert [i.TextValue for i in _named(items, "Algorithm Version")] == [ALGORITHM.version] * groups
    assert [i.TextValue for i in _named(items, "Algorithm Manufacturer")] == [ALGORITHM.manufacturer] * groups
    for build in (build_sr, build_overlay, build_gsps):
        ds = build(source, analysis_of(source), UidFactory(), equipment=box)
        assert (ds.Manufacturer, ds.DeviceSerialNumber) == ("BTT Edge", "btt-1234abcd"), build.__name__
        assert ds.SoftwareVersions.startswith("btt-edge ")
    unknown = build_sr(source, analysis_of(source), UidFactory())
    assert not _named(_walk(unknown.ContentSequence), "Device Observer Serial Number")  # none rather than a version
    assert "DeviceSerialNumber" not in build_gsps(source, analysis_of(source), UidFactory())


def _library_uids(sr: Dataset) -> set[str]:
    (library,) = _named(list(sr.ContentSequence), "Image Library")
    return {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in _walk(library.ContentSequence)
            if i.ValueType == "IMAGE"}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    "edit",
    [{}, {"ImagerPixelSpacing": None, "PatientOrientation": None}, {"PatientOrientation": ""}],
    ids=["complete", "no-spacing-no-orientation", "empty-orientation"],
)
def test_sr_image_library_resolves_every_region(edit: dict[str, str | None], tmp_path: Path) -> None:
    source = simulated_panoramic()
    for keyword, value in edit.items():  # a header without what TID 1603 describes still gets a library entry
        if value is None:
            del source[keyword]
        else:
            setattr(source, keyword, value)
    source = dcmread(io.BytesIO(file_bytes(source)))  # as the store holds it
    sr = build_sr(source, analysis_of(source), UidFactory())
    regions = {i.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for i in _walk(sr.ContentSequence) if i.ValueType == "SCOORD"}  # fmt: skip
    assert regions == _library_uids(sr) == {source.SOPInstanceUID}
    (tmp_path / "sr.dcm").write_bytes(file_bytes(sr))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_sr_carries_what_ihe_air_asks_of_each_finding() -> None:
    """IHE AI Results: every finding group is tracked (identifier and a UID that is the same on every build, and
    that the FHIR Observation of the finding carries: sr_uids), names the algorithm (TID 4019), references its image
    (listed in the Image Library) and gives the confidence; the report says its language and is unverified."""
    source = synthetic_panoramic()
    analysis = analysis_of(source)
    sr = build_sr(source, analysis, UidFactory())
    items = _walk(sr.ContentSequence)
    tracked = [i.UID for i in _named(items, "Tracking Unique Identifier")]
    assert tracked == list(sr_uids(source, analysis, UidFactory()).tracking_uids)
    assert len(set(tracked)) == len(analysis.findings)
    assert tracked == [i.UID for i in _named(_walk(build_sr(source, analysis, UidFactory()).ContentSequence),
                                             "Tracking Unique Identifier")]  # fmt: skip
    assert sr.SOPInstanceUID == sr_uids(source, analysis, UidFactory()).sop_instance_uid
    assert _named(items, "Tracking Identifier")[0].TextValue == "caries tooth 36 #1"
    groups = len(analysis.findings)
    assert len(_named(items, "Algorithm Name")) == len(_named(items, "AI model confidence")) == groups
    assert len(_named(items, "Language of Content Item and Descendants")) == 1
    assert _library_uids(sr) == {source.SOPInstanceUID}
    assert (sr.VerificationFlag, sr.SeriesDescription) == ("UNVERIFIED", AI_LABEL)
