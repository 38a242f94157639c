"""A skipped image gets nothing sent to the PACS: routed by the worker with two bundles active, built and sent by
the results service to a real storescp playing the PACS."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from edge.config import DestinationConfig, ResultsConfig
from edge.pipeline.analyzer import ActiveModel, Analyzer
from edge.pipeline.backends.fake import FakeBackend
from edge.pipeline.worker import PipelineWorker, migrate_pipeline
from edge.results import queue
from edge.results.analysis import RecordedAnalyses
from edge.results.service import ResultsService
from edge.store.image_store import ImageStore
from edge.store.index import get_instance
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.conftest import free_port
from tests.pipeline_helpers import as_intra_oral, bitewing_bundle, reference_outputs, tiny_bundle
from tests.results_helpers import ingest, received, storescp

pytestmark = pytest.mark.integration


def test_nothing_is_built_or_sent_for_a_skipped_image(tmp_path: Path, store: ImageStore) -> None:
    generated = synthetic_dataset(generate(63), 63)
    bitewing = as_intra_oral(copy.deepcopy(generated), "bitewing")
    bitewing.SOPInstanceUID = bitewing.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.631")
    periapical = as_intra_oral(copy.deepcopy(generated), "periapical")
    periapical.SOPInstanceUID = periapical.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.632")
    cbct = dcmread(str(get_testdata_file("CT_small.dcm")))
    analysed = {ingest(store, ds, analysed=False) for ds in (generated, bitewing)}
    skipped = {ingest(store, ds, analysed=False) for ds in (periapical, cbct)}
    conn = store.conn
    migrate_pipeline(conn)
    queue.migrate_results(conn)
    pano_model = tiny_bundle()
    analyzer = Analyzer(
        pano_model,
        FakeBackend(reference_outputs),
        others=(ActiveModel(bitewing_bundle(), FakeBackend(reference_outputs)),),
    )
    assert PipelineWorker(conn, store.data_dir, analyzer).drain() == 4
    for uid in skipped:
        instance = get_instance(conn, uid)
        assert instance is not None
        assert (instance.pipeline_state, instance.state_reason.startswith("no model for ")) == ("skipped", True)

    port = free_port()
    destination = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=port, kinds=("sr", "gsps", "overlay"))
    # each analysis is coded from the manifest of the model that made it
    analyses = RecordedAnalyses(lambda: (pano_model.manifest, bitewing_bundle().manifest))
    assert all(analyses.load(conn, uid) is None for uid in skipped)
    service = ResultsService(
        ResultsConfig(destinations=(destination,)), store.data_dir, analyses, calling_ae="BTT_EDGE"
    )
    with storescp(tmp_path / "pacs", port):
        assert service.build_pending(conn) == 2  # the two analysed images only
        for _ in range(10):
            if not service.send_due(conn, destination):
                break
    objects = queue.list_objects(conn)
    assert {s.object.source_sop_uid for s in objects} == analysed
    assert {d.state for s in objects for d in s.deliveries} == {"sent"}
    files = received(tmp_path / "pacs")
    assert len(files) == 3 * len(analysed)  # SR, GSPS and overlay of each analysed image, nothing else
    sources = set()
    for path in files.values():
        ds = dcmread(path, stop_before_pixels=True)
        for ref in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or ds.get("ReferencedSeriesSequence", []):
            for series in ref.get("ReferencedSeriesSequence", [ref]):
                sources |= {str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedSOPSequence", [])}
        sources |= {str(i.ReferencedSOPInstanceUID) for i in ds.get("SourceImageSequence", [])}
    assert sources
    assert sources <= analysed
    assert not sources & skipped
    for uid in skipped:
        instance = get_instance(conn, uid)
        assert instance is not None
        assert instance.pipeline_state == "skipped"
