"""The backend registry (``edge/pipeline/backends/registry.py``) is the one source: the configuration's and the
CLI's choices, the factories doctor and the platform check ask, and the order ``auto`` tries them in follow it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from edge.cli import main
from edge.config import PipelineConfig, load_config
from edge.errors import ConfigError
from edge.pipeline.backends import BackendOptions, default_factories, select_backend, selection
from edge.pipeline.backends.fake import FakeFactory
from edge.pipeline.backends.registry import BACKENDS, CHOICES, KINDS, BackendChoice, BackendKind, BackendSpec
from tests.pipeline_helpers import reference_outputs, tiny_bundle


def test_the_names_are_the_registry_s_in_its_order() -> None:
    assert get_args(BackendKind) == KINDS
    assert get_args(BackendChoice) == CHOICES == ("auto", *KINDS)
    assert len(set(KINDS)) == len(KINDS)


def test_every_kind_has_a_factory_of_its_kind_that_says_whether_it_runs_here() -> None:
    factories = default_factories()
    assert tuple(f.kind for f in factories) == KINDS
    assert all(isinstance(f.unavailable_reason(), str | None) for f in factories)
    options = {f.name for f in dataclasses.fields(PipelineConfig)}
    assert all(set(b.options) <= options for b in BACKENDS)


def test_auto_tries_the_registry_s_kinds_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = {kind: FakeFactory(kind, reference_outputs) for kind in KINDS}
    fakes[KINDS[0]].unavailable = "not here"
    specs = tuple(BackendSpec(b.kind, b.summary, lambda k=b.kind: fakes[k]) for b in BACKENDS)  # type: ignore[misc]
    monkeypatch.setattr(selection, "BACKENDS", specs)
    assert select_backend(tiny_bundle(), "auto", BackendOptions()).name == KINDS[1]
    monkeypatch.setattr(selection, "BACKENDS", specs[::-1])
    assert select_backend(tiny_bundle(), "auto", BackendOptions()).name == KINDS[-1]


def test_config_and_cli_refuse_a_name_the_registry_does_not_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[pipeline]\nbackend = "cuda"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value).endswith("'cuda' is not one of " + ", ".join(map(repr, CHOICES)))
    with pytest.raises(SystemExit):
        main(["analyze", "x.dcm", "--backend", "cuda"])
    err = capsys.readouterr().err
    assert "invalid choice: 'cuda'" in err
    assert all(choice in err for choice in CHOICES)


def test_the_configuration_reads_the_registry_without_loading_a_runtime() -> None:
    heavy = "('numpy', 'onnxruntime', 'models.bundle')"
    code = f"import sys, edge.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
