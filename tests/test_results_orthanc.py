"""The clinic's PACS is a real Orthanc (:mod:`tests.orthanc`).

A panoramic from the product's own generator, with the identifiers a clinic's unit fills in, is stored in the
agent's store and analysed by the pipeline worker with the committed reference bundle; the results service builds
the SR, the presentation state and the overlay from that record and its C-STORE sender delivers them, and the
source itself (a destination that takes originals), to Orthanc. Orthanc's REST API must then show one patient and
one study holding all four, every object with the source's patient and study attributes as Orthanc decodes them,
and, in the SR's content tree as Orthanc reads it, one measurement group per finding the pipeline recorded with its
finding code and tooth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from edge.cli.model import DEFAULT_BUNDLE
from edge.config import DestinationConfig, PipelineConfig, ResultsConfig
from edge.pipeline.analyzer import open_analyzer
from edge.pipeline.worker import PipelineWorker, migrate_pipeline
from edge.results import queue
from edge.results.analysis import RecordedAnalyses
from edge.results.scu import Outgoing, StoreSCU
from edge.results.service import ResultsService
from edge.results.sr import build_sr
from edge.results.uids import UidFactory
from edge.store.image_store import ImageStore
from edge.store.index import get_instance
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.orthanc import OrthancPacs
from tests.results_helpers import analysis_of, file_bytes, ingest, source_image

pytestmark = pytest.mark.integration

SEED = 5
CALLING_AE = "BTT_EDGE"
IDENTITY = (
    *("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"),
    *("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"),
    "StudyDescription",
)
"""Patient and study attributes every result object must carry exactly as the source does."""
AI_LABEL = "AI result - not a diagnosis"
"""The Series Description of every result object."""
KINDS_BY_MODALITY = {"PX": "original", "SR": "sr", "PR": "gsps", "OT": "overlay"}
_FINDING, _FINDING_SITE, _MEASUREMENT_GROUP = ("DCM", "121071"), ("SCT", "363698007"), ("DCM", "125007")


def _source() -> Dataset:
    """The generator's panoramic with what a clinic's unit fills in (the generator leaves these empty or out),
    one name outside ASCII, so the character set is exercised on the way to the PACS too."""
    ds = synthetic_dataset(generate(SEED), SEED)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.IssuerOfPatientID = "CLINIC"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC-0042"
    ds.ReferringPhysicianName = "Zahn^Erika"
    return ds


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """One Orthanc for the module (it takes seconds to stop); each test looks only at its own objects."""
    with OrthancPacs(tmp_path_factory.mktemp("pacs"), calling_aes=(CALLING_AE,)) as pacs:
        yield pacs


def _stored_uids(pacs: OrthancPacs) -> set[str]:
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.get("/instances?expand")}


def _referenced(tags: Any) -> Iterator[str]:
    """Every Referenced SOP Instance UID anywhere in an object's simplified tags."""
    if isinstance(tags, dict):
        for key, value in tags.items():
            if key == "ReferencedSOPInstanceUID":
                yield value
            else:
                yield from _referenced(value)
    elif isinstance(tags, list):
        for item in tags:
            yield from _referenced(item)


def _value(code: dict[str, Any]) -> str:
    """A code's value: Code Value, or Long Code Value for one over 16 characters (the local ``root_canal_filling``)."""
    return str(code.get("CodeValue") or code["LongCodeValue"])


def _code(item: dict[str, Any], key: str) -> tuple[str, str]:
    code = item[key][0]
    return code["CodingSchemeDesignator"], _value(code)


def _groups(content: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The children of every measurement group (TID 1410) in a content tree, as Orthanc's simplified tags."""
    for item in content:
        if item.get("ValueType") == "CONTAINER" and _code(item, "ConceptNameCodeSequence") == _MEASUREMENT_GROUP:
            yield item.get("ContentSequence", [])
        else:
            yield from _groups(item.get("ContentSequence", []))


def _finding_in(group: list[dict[str, Any]]) -> tuple[str, str, str, str | None]:
    """(scheme, code, meaning, FDI tooth or ``None``) of one measurement group."""
    [finding] = [i for i in group if _code(i, "ConceptNameCodeSequence") == _FINDING]
    sites = [i["ConceptCodeSequence"][0] for i in group if _code(i, "ConceptNameCodeSequence") == _FINDING_SITE]
    fdi = [_value(s) for s in sites if s["CodingSchemeDesignator"] == "ISO3950"]
    code = finding["ConceptCodeSequence"][0]
    return code["CodingSchemeDesignator"], _value(code), code["CodeMeaning"], fdi[0] if fdi else None


@pytest.mark.slow
def test_orthanc_files_every_result_in_the_source_study_and_reads_the_findings(
    pacs: OrthancPacs, store: ImageStore
) -> None:
    source = _source()
    uid = ingest(store, source, analysed=False)
    conn = store.conn
    migrate_pipeline(conn)
    queue.migrate_results(conn)
    analyzer = open_analyzer(PipelineConfig(bundle_path=DEFAULT_BUNDLE, backend="onnxruntime-cpu", threads=1))
    bundle = analyzer.bundle
    assert PipelineWorker(conn, store.data_dir, analyzer).drain() == 1
    analyses = RecordedAnalyses(lambda: (bundle.manifest,))
    analysis = analyses.load(conn, uid)
    assert analysis is not None
    assert analysis.findings, "the reference model found nothing on the panoramic"

    destination = pacs.destination(("original", "sr", "gsps", "overlay"))
    service = ResultsService(
        ResultsConfig(destinations=(destination,)), store.data_dir, analyses, calling_ae=CALLING_AE
    )
    assert service.build_pending(conn) == 2  # the original queued, the results built
    for _ in range(10):  # a batch per call; a failed object waits for its backoff, so this ends
        if not service.send_due(conn, destination):
            break
    objects = {s.object.object_uid: s for s in queue.list_objects(conn)}
    assert {s.object.kind for s in objects.values()} == {"original", "sr", "gsps", "overlay"}
    deliveries = [(s.object.kind, d.state, d.last_error) for s in objects.values() for d in s.deliveries]
    assert {state for _, state, _ in deliveries} == {"sent"}, f"{deliveries}\n{pacs.log()}"
    instance = get_instance(conn, uid)
    assert instance is not None
    assert instance.pipeline_state == "forwarded"

    # one study: Orthanc keys a study by patient ID and Study Instance UID, so an object whose patient ID differed
    # from the source's would have opened a second study with the same UID
    studies = [
        s for s in pacs.get("/studies?expand") if s["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
    ]
    assert len(studies) == 1, studies
    [study] = studies
    patient = pacs.get(f"/patients/{study['ParentPatient']}")
    assert patient["Studies"] == [study["ID"]]
    assert patient["MainDicomTags"]["PatientName"] == "Müller^Jürgen"
    series = pacs.get(f"/studies/{study['ID']}/series")
    assert sorted(s["MainDicomTags"]["Modality"] for s in series) == sorted(KINDS_BY_MODALITY)
    tags = {i["MainDicomTags"]["SOPInstanceUID"]: pacs.get(f"/instances/{i['ID']}/simplified-tags")
            for i in pacs.get(f"/studies/{study['ID']}/instances")}  # fmt: skip
    assert set(tags) == set(objects), "Orthanc's study holds exactly what was delivered"

    # the SR's content tree as Orthanc reads it: one measurement group per recorded finding, its code and tooth
    [sr_uid] = [u for u, s in objects.items() if s.object.kind == "sr"]
    in_orthanc = Counter(_finding_in(group) for group in _groups(tags[sr_uid]["ContentSequence"]))
    codes = analysis.algorithm.codes
    recorded = Counter(
        (codes[f.kind].scheme, codes[f.kind].value, codes[f.kind].meaning, f.tooth_fdi) for f in analysis.findings
    )
    assert in_orthanc == recorded
    assert any(fdi is not None for *_, fdi in in_orthanc)  # the teeth are there, not only the kinds

    # every object with the source's patient and study attributes, as Orthanc decodes them; every result labelled
    # as AI output, in a series of its own, pointing at the source
    expected = {keyword: str(source[keyword].value) for keyword in IDENTITY}
    assert tags[uid] == tags[uid] | expected  # Orthanc decodes the source as pydicom does
    wrong: dict[str, dict[str, tuple[str, str]]] = {}
    for object_uid, status in objects.items():
        got, kind = tags[object_uid], status.object.kind
        assert KINDS_BY_MODALITY[got["Modality"]] == kind
        if kind != "original":
            assert got["SeriesDescription"] == AI_LABEL, kind  # what the PACS's users see, pinned here
            assert got["SeriesInstanceUID"] != source.SeriesInstanceUID, kind
            assert uid in set(_referenced(got)), f"{kind} does not reference the source"
        if mismatched := {k: (got.get(k, "(missing)"), v) for k, v in expected.items() if got.get(k, "(missing)") != v}:
            wrong[kind] = mismatched
    assert wrong == {}, "(in Orthanc, in the source)"


def test_orthanc_stores_only_what_the_agent_ae_sends_to_its_ae(pacs: OrthancPacs, tmp_path: Path) -> None:
    """The fixture's PACS is as strict as a clinic's: a calling AE it does not know is refused, and so is a call
    to another AE title; the agent's AE title is accepted (the results tests rely on all three)."""
    source = source_image("PX", rows=100, columns=200)
    sr = build_sr(source, analysis_of(source), UidFactory())
    path = tmp_path / "sr.dcm"
    path.write_bytes(file_bytes(sr))
    item = Outgoing(sr.SOPInstanceUID, sr.SOPClassUID, sr.file_meta.TransferSyntaxUID, path)
    wrong_called = DestinationConfig(ae_title="NOT_THE_PACS", host="127.0.0.1", port=pacs.dicom_port)
    for calling, destination in (("STRANGER", pacs.destination()), (CALLING_AE, wrong_called)):
        [outcome] = StoreSCU(calling, connect_timeout_s=5).send(destination, [item])
        assert outcome.result == "retry", (calling, destination.ae_title)
        assert f"know this box as AE title {calling!r}" in outcome.detail  # what the clinic checks on its PACS
        assert sr.SOPInstanceUID not in _stored_uids(pacs)
    [outcome] = StoreSCU(CALLING_AE, connect_timeout_s=5).send(pacs.destination(), [item])
    assert (outcome.result, outcome.status) == ("sent", 0)
    assert sr.SOPInstanceUID in _stored_uids(pacs)
