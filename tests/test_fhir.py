"""The FHIR Bundle of an analysis (edge/results/fhir.py), validated with fhir.resources (R4B models: the package's
8.x has no R4 subpackage; R4B's ImagingStudy, DiagnosticReport, Observation, Device and Bundle are R4's), printed by
``btt-edge results fhir``, and delivered by the FHIR sender through the results queue to a stdlib FHIR stand-in."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from dental.findings import Finding
from edge.cli import main
from edge.cli.model import DEFAULT_BUNDLE
from edge.config import DestinationConfig, PipelineConfig, ResultsConfig
from edge.db import DB_FILENAME, connect
from edge.errors import ConfigError
from edge.pipeline.analyzer import open_analyzer
from edge.pipeline.worker import PipelineWorker, migrate_pipeline
from edge.results import queue
from edge.results.analysis import Analysis, RecordedAnalyses, recorded_images
from edge.results.fhir import (
    FDI_SYSTEM,
    UNIVERSAL_SYSTEM,
    AnalysedImage,
    build_bundle,
    entry,
    finding_urls,
    patient_reference,
    report_url,
    to_bytes,
)
from edge.results.fhir_send import FhirSender
from edge.results.scu import Outgoing
from edge.results.service import ResultsService
from edge.results.sr import build_sr
from edge.results.uids import UidFactory
from edge.store.image_store import ImageStore
from edge.store.index import get_instance
from models.bundle import load_bundle
from tests.conftest import free_port
from tests.results_helpers import ALGORITHM, analysis_of, ingest, source_image, synthetic_panoramic

SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data directory where the reference model analysed the product's synthetic panoramic; its SOP UID."""
    data_dir = tmp_path_factory.mktemp("box")
    store = ImageStore(data_dir, min_free_mb=0, duplicate_policy="keep")
    store.start()
    uid = ingest(store, synthetic_panoramic(3), analysed=False)
    migrate_pipeline(store.conn)
    analyzer = open_analyzer(PipelineConfig(bundle_path=Path(DEFAULT_BUNDLE), backend="onnxruntime-cpu"))
    assert PipelineWorker(store.conn, data_dir, analyzer).drain() == 1
    store.stop()
    return data_dir, uid


def _recorded(data_dir: Path, uid: str) -> AnalysedImage:
    conn = connect(data_dir / DB_FILENAME, readonly=True)
    analyses = RecordedAnalyses(lambda: (load_bundle(DEFAULT_BUNDLE).manifest,))
    ((header, analysis),) = recorded_images(conn, data_dir, uid, analyses)
    conn.close()
    return AnalysedImage(header, analysis)


def _validate(bundle: dict[str, Any]) -> None:
    Bundle.model_validate(bundle)
    for item in bundle["entry"]:
        get_fhir_model_class(item["resource"]["resourceType"]).model_validate(item["resource"])


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_the_reference_model_s_analysis_is_a_valid_r4_transaction_linked_to_the_sr(analysed: tuple[Path, str]) -> None:
    image = _recorded(*analysed)
    assert len(image.analysis.findings) > 5  # the model's own findings, not a hand-made list
    uids = UidFactory()
    bundle = build_bundle([image], uids)
    _validate(bundle)
    assert bundle["type"] == "transaction"
    assert [len(_resources(bundle, k)) for k in ("ImagingStudy", "Device", "DiagnosticReport", "Observation")] == [
        1, 1, 1, len(image.analysis.findings)]  # fmt: skip
    sr = build_sr(image.source, image.analysis, uids)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{sr.SOPInstanceUID}"}]
    assert report["status"] == "preliminary"
    assert report["meta"]["security"][0]["code"] == "AIAST"
    assert report["conclusion"].startswith("AI result - not a diagnosis")
    kinds = {c.kind: c.code for c in load_bundle(DEFAULT_BUNDLE).manifest.findings.classes}
    assert {c["coding"][0]["code"] for c in report["conclusionCode"]} == {
        kinds[f.kind].value for f in image.analysis.findings}  # fmt: skip
    (study,) = _resources(bundle, "ImagingStudy")
    assert study["identifier"][0]["value"] == f"urn:oid:{image.source.StudyInstanceUID}"
    instances = {i["uid"] for s in study["series"] for i in s["instance"]}
    assert instances == {str(image.source.SOPInstanceUID), str(sr.SOPInstanceUID)}  # the source and the SR
    tracking = {str(i.UID) for i in _walk(sr.ContentSequence) if i.ValueType == "UIDREF"}
    observed = {o["identifier"][0]["value"].removeprefix("urn:oid:") for o in _resources(bundle, "Observation")}
    assert observed <= tracking  # each Observation is one of the SR's tracked findings
    (device,) = _resources(bundle, "Device")
    assert device["version"] == [{"value": image.analysis.algorithm.version}]
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert set(_references(bundle)) <= full_urls  # every reference resolves inside the Bundle
    assert all(o["device"]["reference"] in full_urls for o in _resources(bundle, "Observation"))
    for item in bundle["entry"]:
        request = item["request"]
        assert "identifier=urn:dicom:uid|urn:oid:" in request.get("ifNoneExist", request["url"])  # conditional
    assert "Müller" not in json.dumps(bundle, ensure_ascii=False)  # only the patient's identifier


def _walk(items: Any) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_walk(item.ContentSequence))
    return out


def test_teeth_are_coded_three_ways_and_measurements_are_components() -> None:
    source = source_image("PX")
    milk = Finding(kind="caries", tooth_fdi="55", confidence=0.7, bbox=(1, 1, 5, 5), area_px=16)
    analysis = Analysis(source.SOPInstanceUID, ALGORITHM, (*analysis_of(source).findings, milk))
    bundle = build_bundle([AnalysedImage(source, analysis)], UidFactory())
    _validate(bundle)
    caries, bone_loss, lesion, deciduous = _resources(bundle, "Observation")
    assert {(c["system"], c["code"]) for c in caries["bodySite"]["coding"]} == {
        (SNOMED, "866006002"), (FDI_SYSTEM, "36"), (UNIVERSAL_SYSTEM, "19")}  # fmt: skip
    assert {(c["system"], c["code"]) for c in deciduous["bodySite"]["coding"]} >= {
        (FDI_SYSTEM, "55"), (UNIVERSAL_SYSTEM, "A")}  # fmt: skip
    assert "bodySite" not in lesion  # no tooth
    values = {c["code"]["coding"][0]["display"]: (c["valueQuantity"]["value"], c["valueQuantity"]["code"])
              for c in bone_loss["component"]}  # fmt: skip
    assert values == {"AI model confidence": (0.66, "1"), "Area": (18.0, "mm2"),
                      "Alveolar bone loss, length": (3.2, "mm"),
                      "Alveolar bone loss, percent of root length": (24.5, "%")}  # fmt: skip


def test_the_bundle_is_deterministic_and_extra_entries_follow() -> None:
    source = source_image("PX")
    source.IssuerOfPatientIDQualifiersSequence = [Dataset()]
    source.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.3.4"
    source.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType = "ISO"
    image = AnalysedImage(source, analysis_of(source))
    first, again = build_bundle([image], UidFactory()), build_bundle([image], UidFactory())
    assert to_bytes(first) == to_bytes(again)
    other = build_bundle([image], UidFactory("1.2.826.0.1.3680043.10.1"))
    ours = {e["fullUrl"] for e in first["entry"] if e["resource"]["resourceType"] != "ImagingStudy"}
    assert ours.isdisjoint(e["fullUrl"] for e in other["entry"])  # another root: other UIDs
    assert patient_reference(source) == {"identifier": {"system": "urn:oid:1.2.3.4", "value": "PID-0042"}}
    ident = {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.9"}
    plan: dict[str, Any] = {"resourceType": "CarePlan", "status": "draft", "intent": "proposal",
            "subject": patient_reference(source), "identifier": [ident],
            "supportingInfo": [{"reference": report_url(image, UidFactory())},
                               {"reference": finding_urls(image, UidFactory())[0]}]}  # fmt: skip
    with_plan = build_bundle([image], UidFactory(), extra=[entry(plan, ident)])
    _validate(with_plan)
    assert with_plan["entry"][:-1] == first["entry"]
    request = with_plan["entry"][-1]["request"]
    assert request == {"method": "PUT", "url": "CarePlan?identifier=urn:dicom:uid|urn:oid:1.2.3.9"}
    assert set(_references(with_plan)) <= {e["fullUrl"] for e in with_plan["entry"]}


def test_an_image_without_findings_gets_a_report_and_no_observations() -> None:
    source = source_image("PX")
    bundle = build_bundle([AnalysedImage(source, Analysis(source.SOPInstanceUID, ALGORITHM, ()))], UidFactory())
    _validate(bundle)
    assert not _resources(bundle, "Observation")
    assert "found none" in _resources(bundle, "DiagnosticReport")[0]["conclusion"]


def test_cli_prints_the_bundle_of_an_instance_and_of_its_study(
    analysed: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, uid = analysed
    assert main(["results", "fhir", "--data-dir", str(data_dir), uid]) == 0
    printed = json.loads(capsys.readouterr().out)
    _validate(printed)
    ours = build_bundle([_recorded(data_dir, uid)], UidFactory())["entry"]
    assert printed["entry"][: len(ours)] == ours  # then the draft plan's entries (edge.plan), if any
    assert {e["resource"]["resourceType"] for e in printed["entry"][len(ours) :]} <= {"CarePlan", "ServiceRequest"}
    study = str(_recorded(data_dir, uid).source.StudyInstanceUID)
    assert main(["results", "fhir", "--data-dir", str(data_dir), study]) == 0
    assert len(_resources(json.loads(capsys.readouterr().out), "DiagnosticReport")) == 1
    assert main(["results", "fhir", "--data-dir", str(data_dir), "1.2.3.4.5"]) == 2
    assert "neither an instance nor a study" in capsys.readouterr().err


# --- delivery ------------------------------------------------------------------------------------------------


class _FhirStandIn(BaseHTTPRequestHandler):
    """A FHIR server's transaction endpoint: answers each POST with the server's next scripted answer."""

    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), json.loads(body)))
        status, answer = self.server.answers.pop(0) if self.server.answers else self.server.default
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    requests: list[tuple[str, dict[str, str], dict[str, Any]]]
    answers: list[tuple[int, dict[str, Any]]]
    default: tuple[int, dict[str, Any]]


def _ok(entries: int = 6) -> tuple[int, dict[str, Any]]:
    response = {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [{"response": {"status": "201 Created"}} for _ in range(entries)]}  # fmt: skip
    return 200, response


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }


@contextlib.contextmanager
def _fhir_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", free_port()), _FhirStandIn)
    server.requests, server.answers, server.default = [], [], _ok()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _bundle_file(tmp_path: Path) -> Outgoing:
    source = source_image("PX")
    path = tmp_path / "b.json"
    path.write_bytes(to_bytes(build_bundle([AnalysedImage(source, analysis_of(source))], UidFactory())))
    return Outgoing("1.2.3.77", "", "", path)


def test_sender_sent_rejected_with_the_outcome_s_text_and_retry(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    item = _bundle_file(tmp_path)
    with _fhir_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        destination = DestinationConfig(protocol="fhir", url=url, auth="bearer", token_file=str(token))
        server.answers = [_ok(), (400, _outcome("Observation.code: unknown system")), (503, {}),
                          (200, {"resourceType": "Bundle", "type": "transaction-response",
                                 "entry": [{"response": {"status": "422 Unprocessable"}}]})]  # fmt: skip
        sender = FhirSender(connect_timeout_s=2, timeout_s=5)
        results = [sender.send(destination, [item])[0] for _ in range(4)]
        path, headers, body = server.requests[0]
    assert [(r.result, r.status) for r in results] == [("sent", 200), ("rejected", 400), ("retry", 503),
                                                       ("rejected", 200)]  # fmt: skip
    assert "Observation.code: unknown system" in results[1].detail
    assert "entry 0: 422" in results[3].detail
    assert path == "/fhir"
    assert headers["Content-Type"] == "application/fhir+json"
    assert headers["Authorization"] == "Bearer s3cret"
    assert body["resourceType"] == "Bundle"
    unreachable = DestinationConfig(protocol="fhir", url=f"http://127.0.0.1:{free_port()}/fhir")
    assert [o.result for o in FhirSender(connect_timeout_s=1).send(unreachable, [item, item])] == ["retry", "retry"]


def test_a_fhir_destination_takes_only_the_bundle() -> None:
    assert DestinationConfig(protocol="fhir", url="https://ehr.example/fhir").kinds == ("fhir",)
    with pytest.raises(ConfigError, match="cannot take sr"):
        DestinationConfig(protocol="fhir", url="https://ehr.example/fhir", kinds=("sr",))
    with pytest.raises(ConfigError, match="cannot take fhir"):
        DestinationConfig(ae_title="PACS", host="h", kinds=("sr", "fhir"))


def test_the_results_service_queues_and_delivers_the_bundle(
    store: ImageStore, capsys: pytest.CaptureFixture[str]
) -> None:
    source = source_image("PX", rows=100, columns=200)
    uid = ingest(store, source)

    class Analyses:
        def load(self, conn: object, sop_instance_uid: str) -> Analysis | None:
            return analysis_of(source) if sop_instance_uid == uid else None

    with _fhir_server() as server:
        server.answers = [(503, {}), _ok()]
        destination = DestinationConfig(protocol="fhir", url=f"http://127.0.0.1:{server.server_address[1]}/")
        now = [1000.0]
        config = ResultsConfig(destinations=(destination,), backoff_initial_s=10, backoff_max_s=10)
        service = ResultsService(config, store.data_dir, Analyses(), calling_ae="BTT_EDGE", clock=lambda: now[0])
        queue.migrate_results(store.conn)
        assert service.build_pending(store.conn) == 1
        (obj,) = [s.object for s in queue.list_objects(store.conn) if s.object.kind == "fhir"]
        assert (obj.sop_class_uid, obj.transfer_syntax_uid, obj.path.endswith(".json")) == ("", "", True)
        assert service.send_due(store.conn, destination) == 1  # 503: backed off
        assert service.send_due(store.conn, destination) == 0
        now[0] += 11
        assert service.send_due(store.conn, destination) == 1
        assert len(server.requests) == 2
        assert server.requests[0][2] == server.requests[1][2]  # the same Bundle again: idempotent on the server
    states = {(s.object.kind, d.state) for s in queue.list_objects(store.conn) for d in s.deliveries}
    assert states == {("fhir", "sent")}
    instance = get_instance(store.conn, uid)
    assert instance is not None
    assert instance.pipeline_state == "forwarded"
    assert main(["results", "list", "--data-dir", str(store.data_dir), "--json", "--source", uid]) == 0
    (listed,) = [d for d in json.loads(capsys.readouterr().out) if d["kind"] == "fhir"]
    assert [(d["state"], d["last_status"]) for d in listed["deliveries"]] == [("sent", "200")]  # HTTP, not 0x00C8
