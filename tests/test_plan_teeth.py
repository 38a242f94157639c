"""Missing teeth in the draft plan of a stored study: the pipeline records the teeth the model numbered with each
analysis (and the view it routed the image as); ``btt-edge plan`` proposes an implant or a bridge for a tooth the
model did not find on a panoramic, never for a third molar, and infers nothing from an intra-oral image or from an
analysis recorded before the pipeline kept its teeth."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dental.teeth import PERMANENT_FDI
from edge.cli import main
from edge.db import DB_FILENAME, migrate
from edge.pipeline.analyzer import ActiveModel, Analyzer
from edge.pipeline.backends.fake import FakeBackend
from edge.pipeline.records import analysis_record
from edge.pipeline.worker import _MIGRATIONS, PipelineWorker, migrate_pipeline
from edge.store.image_store import ImageStore
from edge.store.index import migrate_index
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.pipeline_helpers import as_intra_oral, bitewing_bundle, reference_outputs
from tests.results_helpers import ingest
from tests.test_plan import _analyser

SEED = 2
"""The generator's panoramic of seed 2 lacks 14 and the third molars 38 and 48 (its truth), and the reference
model numbers every other tooth."""


def _analysed(data: Path, datasets: list[Dataset], analyzer: Analyzer) -> list[str]:
    """``datasets`` stored and analysed by the pipeline worker: their SOP Instance UIDs."""
    store = ImageStore(data, min_free_mb=0, duplicate_policy="keep")
    store.start()
    try:
        migrate_pipeline(store.conn)
        sops = [ingest(store, ds, analysed=False) for ds in datasets]
        assert PipelineWorker(store.conn, data, analyzer).drain() == len(datasets)
        return sops
    finally:
        store.stop()


def _plan_json(data: Path, uid: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["plan", uid, "--json", "--data-dir", str(data)]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def _missing_lines(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["tooth_fdi"]: f for t in doc["teeth"] for f in t["findings"] if f["kind"] == "missing_tooth"}


def _record(data: Path, sop: str) -> Any:
    conn = sqlite3.connect(data / DB_FILENAME)
    try:
        return analysis_record(conn, sop)
    finally:
        conn.close()


def _with_bitewing(analyzer: Analyzer) -> Analyzer:
    """The reference panoramic model with an intra-oral bitewing model beside it (the tiny test network)."""
    primary = analyzer.models[0]
    bitewing = ActiveModel(bitewing_bundle(), FakeBackend(reference_outputs, "fake-io"))
    return Analyzer(primary.bundle, primary.backend, crops=primary.crops, others=(bitewing,))


def test_a_stored_panoramic_with_missing_teeth_gets_an_implant_or_a_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = generate(SEED)
    ds = synthetic_dataset(image, SEED)
    [sop] = _analysed(tmp_path, [ds], _analyser())
    record = _record(tmp_path, sop)
    assert record.view == "panoramic"
    assert record.teeth_fdi is not None
    numbered = set(record.teeth_fdi)
    truth_missing = set(PERMANENT_FDI) - set(image.teeth_fdi)
    assert truth_missing == {"14", "38", "48"}
    # the model numbers teeth at ~0.98: it agrees with the truth on all but a few
    assert len((set(PERMANENT_FDI) - numbered) ^ truth_missing) <= 2
    assert "14" not in numbered

    doc = _plan_json(tmp_path, str(ds.StudyInstanceUID), capsys)
    assert not any("missing teeth not assessed" in n for n in doc["notes"])
    missing = _missing_lines(doc)
    assert set(missing) == set(PERMANENT_FDI) - numbered  # every tooth the model did not find, and no other
    for fdi, line in missing.items():
        if fdi[1] == "8":
            assert (line["rule"], line["outcome"], line["items"]) == ("missing-third-molar", "nothing proposed", [])
        else:
            assert (line["rule"], line["outcome"]) == ("missing-tooth", "proposed")
    implant = missing["14"]
    items = {i["id"]: i for i in doc["items"]}
    assert [(items[i]["code"], items[i]["tooth_fdi"]) for i in implant["items"]] == [("D6010", "14"), ("D6065", "14")]
    [bridge] = implant["alternatives"]
    assert bridge["name"] == "bridge"
    assert [(p["code"], p["teeth_fdi"]) for p in bridge["procedures"]] == [("D6245", ["14"]), ("D6740", ["15", "13"])]
    proposed = {i["tooth_fdi"] for i in doc["items"] if i["procedure"] in ("implant", "implant_crown")}
    assert proposed == {f for f in set(PERMANENT_FDI) - numbered if f[1] != "8"}


def test_an_analysis_recorded_before_the_teeth_column_is_not_assessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row recorded before the migration has no teeth (NULL): the plan says missing teeth are not assessed and
    proposes no replacement; so does a table the agent has not upgraded yet."""
    ds = synthetic_dataset(generate(SEED), SEED)
    [sop] = _analysed(tmp_path, [ds], _analyser())
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    with conn:
        conn.execute("UPDATE pipeline_results SET image_view = NULL, teeth_json = NULL")
    conn.close()
    record = _record(tmp_path, sop)
    assert (record.view, record.teeth_fdi) == (None, None)
    doc = _plan_json(tmp_path, str(ds.StudyInstanceUID), capsys)
    assert "missing teeth not assessed: no analysed panoramic records which teeth the model found" in doc["notes"]
    assert _missing_lines(doc) == {}
    assert not any(i["procedure"] == "implant" for i in doc["items"])

    old = sqlite3.connect(":memory:")
    migrate_index(old)
    migrate(old, "pipeline", _MIGRATIONS[:2])  # the schema before the teeth
    old.execute(
        "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, backend, "
        "timings_json, findings_json, recorded_at) VALUES ('1.2.3', 'analysed', '', 'm', '1', 0, 'cpu', '{}', '[]', "
        "'2026-01-01T00:00:00Z')"
    )
    before = analysis_record(old, "1.2.3")
    assert before is not None
    assert (before.view, before.teeth_fdi, before.precision) == (None, None, "fp32")
    migrate_pipeline(old)
    after = analysis_record(old, "1.2.3")
    assert after == before


def test_intra_oral_images_infer_no_missing_teeth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bitewing shows a few teeth: the teeth its model numbered are recorded with it, but absence there means
    nothing. Alone it leaves missing teeth not assessed; beside the study's panoramic it changes nothing."""
    panoramic = synthetic_dataset(generate(SEED), SEED)
    bitewing = as_intra_oral(copy.deepcopy(panoramic), "bitewing")
    bitewing.SOPInstanceUID = bitewing.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.2002")
    only = tmp_path / "bitewing-only"
    [bw] = _analysed(only, [copy.deepcopy(bitewing)], _with_bitewing(_analyser()))
    record = _record(only, bw)
    assert (record.status, record.model_id, record.view) == ("analysed", "tiny-bitewing-model", "bitewing")
    assert record.teeth_fdi == ("21",)  # the tiny network labels one tooth (channel 9): the other 31 "absent"
    doc = _plan_json(only, bw, capsys)
    assert any("missing teeth not assessed" in n for n in doc["notes"])
    assert _missing_lines(doc) == {}

    both = tmp_path / "both"
    pano, _bw = _analysed(both, [panoramic, bitewing], _with_bitewing(_analyser()))
    numbered = _record(both, pano).teeth_fdi
    assert numbered is not None
    doc = _plan_json(both, str(panoramic.StudyInstanceUID), capsys)
    assert set(_missing_lines(doc)) == set(PERMANENT_FDI) - set(numbered)
