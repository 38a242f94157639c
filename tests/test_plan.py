"""Draft treatment plans: the planner on the reference model's own analyses (stored by the pipeline worker and
read back by ``btt-edge plan``), hand-checked cases of the shipped rules, a clinic's own rules, the China code
set, exact fee estimates, prepaid coverage, table errors and FHIR R4 validation (fhir.resources' R4B models)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from textual.widgets import DataTable

from dental.findings import Finding
from dental.teeth import PERMANENT_FDI
from edge.cli import main
from edge.config import AgentConfig, PipelineConfig, PlanConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.errors import ConfigError
from edge.pipeline.analyzer import open_analyzer
from edge.pipeline.worker import PipelineWorker, migrate_pipeline
from edge.plan import LABEL, PlanTableError, make_plan, study_plan
from edge.plan._toml import read_table
from edge.plan.codes import load_code_set
from edge.plan.coverage import Prepaid, prepaid_from_grants
from edge.plan.fees import load_fee_schedule, parse_fee_schedule
from edge.plan.fhir import analysed_images, plan_bundle, plan_entries
from edge.plan.planner import Evidence, Plan
from edge.plan.rules import DEFAULT_RULES, load_rules, parse_rules
from edge.plan.study import stored_headers
from edge.results.analysis import RecordedAnalyses, recorded_images
from edge.results.fhir import AnalysedImage, build_bundle
from edge.results.uids import UidFactory
from edge.store.image_store import ImageStore
from edge.tui import TechnicianApp
from edge.tui.messages import selected_key
from edge.tui.studies import PLAN_LABEL
from models.bundle import load_bundle
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.results_helpers import ingest
from tests.test_tui import _settle, _text, sync

REPO = Path(__file__).resolve().parents[1]
REFERENCE_BUNDLE = REPO / "models" / "bundles" / "reference-dental"
FEES = REPO / "examples" / "fees.toml"
RULES = load_rules()
CDT = load_code_set("ada-cdt")
SCHEDULE = load_fee_schedule(FEES)
NONE = Prepaid({})


def _f(kind: str, tooth: str | None, confidence: float = 0.9, **measures: Any) -> Finding:
    return Finding(kind=kind, tooth_fdi=tooth, confidence=confidence, bbox=(0, 0, 10, 10), **measures)


def _plan(*findings: Finding, prepaid: Prepaid = NONE, **kwargs: Any) -> Plan:
    evidence = [Evidence("1.2.3.4", i, f, "m", "1") for i, f in enumerate(findings)]
    options: dict[str, Any] = {"rules": RULES, "codes": CDT, "fees": SCHEDULE, "prepaid": prepaid, **kwargs}
    return make_plan("1.2.3", evidence, **options)


def _codes(plan: Plan) -> list[tuple[str, int, str | None]]:
    return [(i.code, i.urgency, i.tooth_fdi) for i in plan.items]


# --- the product's own analyses ----------------------------------------------------------------------------------


@functools.cache
def _analyser() -> Any:
    return open_analyzer(PipelineConfig(bundle_path=REFERENCE_BUNDLE, backend="onnxruntime-cpu", threads=1))


def _stored(data: Path, seed: int) -> tuple[str, str]:
    """The generator's panoramic of ``seed`` stored and analysed by the pipeline worker with the reference
    bundle: (study UID, SOP Instance UID)."""
    store = ImageStore(data, min_free_mb=0, duplicate_policy="keep")
    store.start()
    try:
        migrate_pipeline(store.conn)
        ds = synthetic_dataset(generate(seed), seed)
        sop = ingest(store, ds, analysed=False)
        assert PipelineWorker(store.conn, data, _analyser()).drain() == 1
        return str(ds.StudyInstanceUID), sop
    finally:
        store.stop()


def test_btt_edge_plan_json_on_a_stored_reference_analysis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 3: the reference model finds a periapical lesion on 47, caries on 28, bone loss over 4 mm on 13 and
    11 and 21 (the generator planted them all)."""
    study, sop = _stored(tmp_path, 3)
    assert main(["plan", study, "--json", "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["label"] == LABEL
    assert doc["study_uid"] == study
    assert doc["instances"] == [sop]
    assert doc["models"] == [
        {"id": "btt-reference-dental-pano", "version": doc["models"][0]["version"], "clinical": False}
    ]
    first, second, *rest = doc["items"]
    assert (first["code"], first["urgency"], first["teeth_fdi"]) == ("D0140", 1, ["47"])
    assert (second["code"], second["urgency"], second["tooth_fdi"]) == ("D0220", 1, "47")
    codes = {(i["code"], i["tooth_fdi"] or i["quadrant"]) for i in rest}
    assert {("D3330", "47"), ("D2391", "28"), ("D0180", None)} <= codes | {("D0180", None)}
    assert any(i["procedure"] == "scaling_root_planing" and i["quadrant"] == 1 for i in rest)
    tooth47 = next(t for t in doc["teeth"] if t["tooth_fdi"] == "47")
    lesion = next(f for f in tooth47["findings"] if f["kind"] == "periapical_lesion")
    assert lesion["rule"] == "periapical-lesion"
    assert [o["name"] for o in lesion["alternatives"]] == ["extraction"]
    assert lesion["evidence"][0]["sop_instance_uid"] == sop
    assert doc["totals"]["estimate"] is None
    assert "no fee schedule configured ([plan] fee_schedule): no estimates" in doc["notes"]
    assert any("not cleared for clinical use" in n for n in doc["notes"])
    # the image's UID gives the same plan, made for the image
    assert main(["plan", sop, "--json", "--data-dir", str(tmp_path)]) == 0
    by_image = json.loads(capsys.readouterr().out)
    assert (by_image["uid"], by_image["items"]) == (sop, doc["items"])
    # readable form
    assert main(["plan", study, "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(LABEL)
    assert "D3330" in text
    assert "Endodontic therapy, molar tooth" in text
    assert main(["plan", "9.9.9", "--data-dir", str(tmp_path)]) == 2
    assert "no study or image '9.9.9' on this box" in capsys.readouterr().err


def test_plan_fhir_bundle_is_valid_r4_and_points_at_the_exports_observations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, _sop = _stored(tmp_path, 3)
    config = tmp_path / "edge.toml"
    config.write_text(f'[plan]\nfee_schedule = "{FEES}"\n')
    assert main(["plan", study, "--fhir", "--config", str(config), "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    Bundle.model_validate(doc)
    resources = [e["resource"] for e in doc["entry"]]
    care_plan, *requests = resources
    assert (care_plan["resourceType"], care_plan["status"], care_plan["intent"]) == ("CarePlan", "draft", "proposal")
    assert [a["reference"]["reference"] for a in care_plan["activity"]] == [e["fullUrl"] for e in doc["entry"][1:]]
    assert {(r["resourceType"], r["status"], r["intent"]) for r in requests} == {
        ("ServiceRequest", "draft", "proposal")
    }
    assert requests[0]["code"]["coding"][0] == {"system": "http://www.ada.org/cdt", "code": "D0140",
                                                "display": "Limited oral evaluation - problem focused"}  # fmt: skip
    assert requests[0]["priority"] == "urgent"
    assert {"valueMoney": {"value": 95, "currency": "USD"}}.items() <= requests[0]["extension"][0].items()
    assert requests[1]["bodySite"][0]["coding"][0] == {"system": "urn:iso:std:iso:3950", "code": "47",
                                                       "display": "tooth 47 (FDI)"}  # fmt: skip
    # inside the FHIR export's own Bundle the requests point at its Observations by fullUrl
    with_conn = ImageStore(tmp_path, min_free_mb=0, duplicate_policy="keep")
    with_conn.start()
    try:
        plan = study_plan(with_conn.conn, PlanConfig(fee_schedule=str(FEES)), study, now_ms=0)
        own = analysed_images(plan, stored_headers(with_conn.conn, tmp_path, plan.instances))
        analyses = RecordedAnalyses(lambda: (load_bundle(REFERENCE_BUNDLE).manifest,))
        images = [AnalysedImage(h, a) for h, a in recorded_images(with_conn.conn, tmp_path, study, analyses)]
    finally:
        with_conn.stop()
    uids = UidFactory("1.2.826.0.1.3680043.8.498")
    assert plan_entries(plan, own, uids) == plan_entries(plan, images, uids)  # the same Observation UIDs
    bundle = build_bundle(images, uids, extra=plan_entries(plan, images, uids))
    Bundle.model_validate(bundle)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    reasons = [r["reference"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
               for r in e["resource"].get("reasonReference", [])]  # fmt: skip
    assert reasons
    assert set(reasons) <= urls
    observations = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert set(reasons) <= observations
    Bundle.model_validate(plan_bundle(plan, images, uids))
    # btt-edge results fhir carries the plan's entries too
    assert main(["results", "fhir", study, "--config", str(config), "--data-dir", str(tmp_path)]) == 0
    exported = json.loads(capsys.readouterr().out)
    Bundle.model_validate(exported)
    assert exported["entry"][-len(bundle["entry"]) :] == bundle["entry"]


def test_missing_teeth_from_the_generators_truth_propose_an_implant_or_a_bridge() -> None:
    """The planner given the generator's truth of the teeth it drew (stored studies: tests/test_plan_teeth.py).
    Seed 3 lacks 18 and 38 (third molars: nothing proposed); with 36 also left out, 36 gets an implant, or a bridge
    on 37 and 35."""
    image = generate(3)
    evidence = [Evidence("1.2", i, f) for i, f in enumerate(_analyser().analyse(synthetic_dataset(image, 3)).findings)]
    present = set(image.teeth_fdi)
    assert set(PERMANENT_FDI) - present == {"18", "38"}
    plan = make_plan("1.2", evidence, rules=RULES, codes=CDT, fees=SCHEDULE, prepaid=NONE, teeth_present=present)
    third = next(t for t in plan.teeth if t.tooth_fdi == "18").findings
    assert [(f.kind, f.rule, f.outcome) for f in third] == [
        ("missing_tooth", "missing-third-molar", "nothing proposed")
    ]
    without = [e for e in evidence if e.finding.tooth_fdi != "36"]
    plan = make_plan(
        "1.2", without, rules=RULES, codes=CDT, fees=SCHEDULE, prepaid=NONE, teeth_present=present - {"36"}
    )
    [line] = next(t for t in plan.teeth if t.tooth_fdi == "36").findings
    assert (line.kind, line.rule) == ("missing_tooth", "missing-tooth")
    assert [plan.item(i).code for i in line.items] == ["D6010", "D6065"]
    [bridge] = line.alternatives
    assert bridge.name == "bridge"
    assert [(s.code, s.teeth_fdi) for s in bridge.steps] == [
        ("D6245", ("36",)),
        ("D6740", ("37", "35")),
    ]  # along the arch
    assert bridge.estimate is not None
    assert bridge.estimate.amount == 110000 + 2 * 115000
    assert "missing teeth not assessed" not in " ".join(plan.notes)


# --- hand-checked cases ---------------------------------------------------------------------------------------------


def test_periapical_lesion_is_evaluated_first_with_the_endodontic_code_of_its_tooth_type() -> None:
    plan = _plan(_f("caries", "24"), _f("periapical_lesion", "36"), _f("periapical_lesion", "11"),
                 _f("root_canal_filling", "11"), _f("periapical_lesion", "45"))  # fmt: skip
    assert _codes(plan) == [
        ("D0140", 1, None),  # once for the visit
        ("D0220", 1, "11"),  # the first periapical image, then each additional one, along the arch
        ("D0230", 1, "36"),
        ("D0230", 1, "45"),
        ("D3346", 2, "11"),  # a root-filled tooth: retreatment, anterior
        ("D2391", 2, "24"),
        ("D3330", 2, "36"),
        ("D3320", 2, "45"),
    ]
    assert plan.items[0].teeth_fdi == ("11", "36", "45")
    lesion = next(t for t in plan.teeth if t.tooth_fdi == "36").findings[0]
    assert [plan.item(i).code for i in lesion.items] == ["D0140", "D0230", "D3330"]
    assert [(o.name, o.steps[0].code) for o in lesion.alternatives] == [("extraction", "D7140")]


def test_bone_loss_by_depth_and_scaling_per_quadrant() -> None:
    deep = [_f("bone_loss", t, bone_loss_mm=5.0) for t in ("17", "16", "15", "14")]
    plan = _plan(*deep, _f("bone_loss", "26", bone_loss_mm=4.5), _f("bone_loss", "31", bone_loss_mm=3.0),
                 _f("bone_loss", "41", bone_loss_mm=1.5), _f("bone_loss", "42"))  # fmt: skip
    assert _codes(plan) == [("D0180", 2, None), ("D4341", 2, None), ("D4342", 2, None)]
    assert [(i.quadrant, i.teeth_fdi) for i in plan.items[1:]] == [(1, ("17", "16", "15", "14")), (2, ("26",))]
    assert plan.items[0].teeth_fdi == ("17", "16", "15", "14", "26", "31")
    outcomes = {t.tooth_fdi: (t.findings[0].rule, t.findings[0].outcome) for t in plan.teeth}
    assert outcomes["31"] == ("bone-loss-moderate", "proposed")
    assert outcomes["41"] == ("bone-loss-slight", "nothing proposed")
    assert outcomes["42"] == ("bone-loss-slight", "nothing proposed")  # unmeasured


def test_caries_restoration_or_crown() -> None:
    plan = _plan(_f("caries", "11"), _f("caries", "36"), _f("restoration", "36", area_mm2=25.0),
                 _f("caries", "46"), _f("restoration", "46", area_mm2=8.0), _f("caries", "25"),
                 _f("root_canal_filling", "25"), _f("caries", "48", confidence=0.3))  # fmt: skip
    assert _codes(plan) == [("D2330", 2, "11"), ("D2740", 2, "25"), ("D2740", 2, "36"), ("D2391", 2, "46")]
    crown = next(t for t in plan.teeth if t.tooth_fdi == "36").findings
    assert [(f.kind, f.rule) for f in crown] == [("caries", "caries-large-restoration"), ("restoration", None)]
    assert crown[0].alternatives[0].steps[0].code == "D2391"
    low = next(t for t in plan.teeth if t.tooth_fdi == "48").findings[0]
    assert (low.outcome, low.items) == ("below confidence", ())


def test_fee_estimates_are_exact_minor_units_and_coverage_follows_the_prepaid_rights() -> None:
    findings = (_f("periapical_lesion", "36"), _f("periapical_lesion", "46"), _f("caries", "11"))
    plan = _plan(*findings, prepaid=Prepaid({"exposure": 1, "analysis": 5}))
    amounts = [(i.code, None if i.estimate is None else i.estimate.amount, i.covered) for i in plan.items]
    assert amounts == [("D0140", 9500, False), ("D0220", 3500, True), ("D0230", 2800, False),
                       ("D2330", 16000, False), ("D3330", 135000, False), ("D3330", 135000, False)]  # fmt: skip
    assert plan.items[2].coverage == "no prepaid exposure right left on this box"
    assert plan.items[0].coverage.startswith("a dental procedure")
    totals = plan.totals
    assert totals.estimate is not None
    assert totals.covered is not None
    assert totals.not_covered is not None
    assert (totals.estimate.amount, totals.covered.amount, totals.not_covered.amount) == (301800, 3500, 298300)
    assert totals.estimate.currency == "USD"
    assert all(not i.covered for i in _plan(*findings).items)
    rights = [{"kind": "exposure", "remaining": 2, "not_before_ms": 0, "not_after_ms": 10},
              {"kind": "analysis", "remaining": 9, "not_before_ms": 0, "not_after_ms": 10},
              {"kind": "exposure", "remaining": 5, "not_before_ms": 10, "not_after_ms": 20}]  # fmt: skip
    assert prepaid_from_grants(rights, 5).remaining == {"exposure": 2, "analysis": 9}
    assert prepaid_from_grants(rights, 15).remaining == {"exposure": 5}


def test_a_clinic_changed_rules_file_changes_the_plan(tmp_path: Path) -> None:
    text = DEFAULT_RULES.read_text()
    text = text.replace('when = { bone_loss_mm = "> 4" }', 'when = { bone_loss_mm = "> 6" }')
    text = text.replace('procedures = ["composite_restoration"]\nrationale = "A carious lesion',
                        'procedures = ["crown"]\nrationale = "A carious lesion')  # fmt: skip
    own = tmp_path / "rules.toml"
    own.write_text(text)
    findings = (_f("caries", "24"), _f("bone_loss", "16", bone_loss_mm=5.0))
    assert _codes(_plan(*findings)) == [("D0180", 2, None), ("D4342", 2, None), ("D2391", 2, "24")]
    clinic = _plan(*findings, rules=load_rules(own))
    assert _codes(clinic) == [("D2740", 2, "24"), ("D0180", 3, None)]
    assert clinic.rules_source == str(own)


def test_the_china_code_set_has_chinese_descriptors_and_the_clinics_own_codes(tmp_path: Path) -> None:
    cn = load_code_set("cn")
    fees = parse_fee_schedule({"format": 1, "currency": "CNY", "fees": {"endodontic_therapy": {"molar": 180000}}}, "f")
    plan = _plan(_f("periapical_lesion", "36"), codes=cn, fees=fees)
    therapy = plan.items[-1]
    assert (therapy.code, therapy.descriptor, therapy.code_system) == (
        "",
        "根管治疗术（磨牙）",
        "urn:btt-edge:plan:cn-local",
    )
    assert therapy.estimate is not None
    assert (therapy.estimate.currency, therapy.estimate.amount) == ("CNY", 180000)
    assert plan.code_set_local
    assert plan.items[0].estimate is None  # no fee for it in this schedule
    assert plan.totals.priced == 1
    doc = plan.to_json()
    assert doc["code_set"] == {
        "name": "China (clinic local codes)",
        "system": "urn:btt-edge:plan:cn-local",
        "local": True,
    }
    Bundle.model_validate(plan_bundle(plan, [], UidFactory("1.2.826.0.1.3680043.8.498")))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format=2), "rules.toml: format: expected 1"),
        (lambda d: d["rules"][0].update(urgncy=1), r"rules.toml.rules\[0\].urgncy: unknown key"),
        (lambda d: d["rules"][0].update(procedures=["root_canal"]), r"'root_canal' is not in \[procedures\]"),
        (lambda d: d["rules"][5].update(when={"bone_loss_mm": "more than 4"}), "expected a comparison"),
        (lambda d: d["rules"][5].update(when={"depth": "> 4"}), "unknown condition"),
        (lambda d: d["procedures"]["crown"].update(per="arch"), "per: 'arch' is not one of"),
    ],
)
def test_a_malformed_rules_table_names_the_key(change: Any, message: str) -> None:
    doc = read_table(DEFAULT_RULES)
    change(doc)
    with pytest.raises(PlanTableError, match=message):
        parse_rules(doc, str(DEFAULT_RULES))


def test_fee_schedule_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanTableError, match=r"f\.fees\.crown: expected a whole number of minor units"):
        parse_fee_schedule({"format": 1, "currency": "USD", "fees": {"crown": 12.5}}, "f")
    with pytest.raises(PlanTableError, match="currency"):
        parse_fee_schedule({"format": 1, "currency": "usd", "fees": {}}, "f")
    with pytest.raises(ConfigError, match=r"plan\.currency: needs plan\.fee_schedule"):
        PlanConfig(currency="USD")
    from edge.plan.study import load_tables

    with pytest.raises(PlanTableError, match=r"currency USD is not plan\.currency CNY"):
        load_tables(PlanConfig(fee_schedule=str(FEES), currency="CNY"))
    with pytest.raises(PlanTableError, match="cannot read"):
        load_tables(PlanConfig(code_set=str(tmp_path / "nope.toml")))


@sync
async def test_the_tui_study_view_shows_the_draft_plan_labelled_as_such(tmp_path: Path) -> None:
    """On a real control socket over a stored reference analysis: Enter on the study shows its findings, then its
    draft plan under the label, with the items' codes and the clinic's estimates."""
    study, _sop = _stored(tmp_path, 3)
    config = with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)}, plan={"fee_schedule": str(FEES)})
    server = ControlServer(config.control, AgentState(config))
    server.start()
    try:
        with ControlClient(server.path) as client:
            app = TechnicianApp(client, refresh_s=60)
            async with app.run_test(size=(120, 60)) as pilot:
                await pilot.press("2")
                await _settle(pilot)
                assert selected_key(app.query_one("#studies-table", DataTable)) == study
                await pilot.press("enter")
                await _settle(pilot)
                await _settle(pilot)
                shown = _text(app, "#study-plan")
    finally:
        server.stop()
    assert shown.startswith(PLAN_LABEL)
    assert LABEL in shown
    assert "D0140" in shown
    assert "D3330" in shown
    assert "1,350.00 USD" in shown
    assert "tooth 47: periapical_lesion -> proposed" in shown


def test_the_control_view_says_why_there_is_no_plan(tmp_path: Path) -> None:
    study, _sop = _stored(tmp_path, 11)
    config = with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)})
    assert AgentState(config).plan(study)["available"] is True
    bad = tmp_path / "rules.toml"
    bad.write_text("format = 2\n")
    broken = AgentState(with_overrides(config, plan={"rules": str(bad)})).plan(study)
    assert broken == {"available": False, "reason": "rules.toml: format: expected 1, got 2"}
    off = AgentState(with_overrides(config, plan={"enabled": False})).plan(study)
    assert off["available"] is False
    assert "[plan] enabled = false" in off["reason"]
