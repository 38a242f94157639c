"""The result-kind registry (``edge/results/kinds.py``) is the one source: the configuration's names and default,
the builders and the order they run in, the queue's send order and the conformance statement all follow it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydicom.dataset import Dataset

from edge.config import DestinationConfig, ResultsConfig, load_config
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import ConfigError
from edge.results import kinds, queue
from edge.results.header import DEFAULT_EQUIPMENT
from edge.results.kinds import BUILT, DEFAULT_KINDS, DICOM_MEDIA_TYPE, KINDS, NAMES, ResultKind
from edge.results.service import ResultsService
from edge.results.uids import UidFactory
from edge.store.image_store import ImageStore
from tests.results_helpers import FakeAnalyses, analysis_of, ingest, source_image

CONFORMANCE = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
PACS = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=104,
                         kinds=tuple(k.name for k in KINDS if k.media_type == DICOM_MEDIA_TYPE))  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    store = ImageStore(tmp_path, min_free_mb=0, duplicate_policy="keep")
    store.start()
    yield store
    store.stop()


def test_the_names_are_the_registry_s_in_its_order() -> None:
    assert get_args(ResultKind) == NAMES
    assert len(set(NAMES)) == len(NAMES)
    assert [k.name for k in KINDS if k.bind is None] == ["original"]  # the one kind sent as stored
    assert not BUILT[-1].on_demand  # the last kind built marks the instance done: it must always be built


def test_every_built_kind_has_a_builder_with_its_options() -> None:
    source = source_image("PX", rows=300, columns=600)
    objects = [
        spec.bind(ResultsConfig())(source, analysis_of(source), UidFactory(), equipment=DEFAULT_EQUIPMENT)
        for spec in BUILT
        if spec.bind is not None
    ]
    dicom = [spec.media_type == DICOM_MEDIA_TYPE for spec in BUILT]
    assert [isinstance(built, Dataset) for built in objects] == dicom  # a kind of another media type: a Document
    uids = {built.SOPInstanceUID if isinstance(built, Dataset) else built.uid for built in objects}
    assert all(uids)
    assert len(uids) == len(BUILT)
    options = {f.name for f in dataclasses.fields(ResultsConfig)}
    assert all(set(spec.options) <= options for spec in KINDS)


def test_config_takes_the_registry_s_names_and_default(tmp_path: Path) -> None:
    assert DestinationConfig(ae_title="P", host="h").kinds == DEFAULT_KINDS == ("sr", "overlay")
    path = tmp_path / "edge.toml"
    path.write_text('[[results.destinations]]\nae_title = "P"\nhost = "h"\nkinds = ["pdf"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value).endswith("'pdf' is not one of " + ", ".join(map(repr, NAMES)))


def test_the_queue_sends_in_the_registry_s_order(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_FILENAME)
    queue.migrate_results(conn)
    with transaction(conn):
        for n, kind in enumerate(reversed(NAMES)):  # queued last kind first
            obj = queue.ResultObject(f"1.2.{n}", "1.2.99", "1.2.3", kind, "1.2.840", "1.2.840.10008.1.2.1", "x", 1, "")
            queue.enqueue(conn, obj, [PACS.name], 0.0)
    assert tuple(o.kind for o in queue.due(conn, PACS.name, 1.0, 10)) == NAMES
    conn.close()


def test_the_service_builds_what_the_registry_lists(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kinds, "BUILT", (kinds.spec("sr"),))
    analyses = FakeAnalyses()
    source = source_image("PX", rows=300, columns=600)
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    ingest(store, source)
    config = ResultsConfig(destinations=(dataclasses.replace(PACS, kinds=("sr", "gsps", "overlay")),))
    service = ResultsService(config, store.data_dir, analyses, calling_ae="BTT_EDGE")
    queue.migrate_results(store.conn)
    assert service.build_pending(store.conn) == 1
    assert [s.object.kind for s in queue.list_objects(store.conn)] == ["sr"]
    assert queue.unbuilt_sources(store.conn) == []  # the last kind the registry builds finished the instance


def test_the_conformance_statement_describes_every_kind() -> None:
    text = CONFORMANCE.read_text()
    described = re.findall(r"^### 6\.\d .*\(kind `([a-z]+)`\)", text, flags=re.MULTILINE)
    assert sorted(described) == sorted(NAMES)
    listed = re.search(r"`kinds` \(([^;)]*)", text)
    assert listed is not None
    assert listed.group(1) == ", ".join(f"`{n}`" for n in NAMES)
