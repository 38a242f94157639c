"""OTA install: health check, staged switch at an idle moment, rollback after failures, resumed downloads,
a kill -9 at every install step, the relay's command and the ``btt-edge ota`` / ``btt-ota`` command lines.
Real loopback HTTP repository, real python-tuf, real ONNX Runtime (CPU) health checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agent import updater_for
from edge.outbox import Outbox
from models.bundle import load_bundle
from ota.cli import main as btt_ota
from ota.errors import HealthCheckFailed, InstallError, RepositoryUnavailable
from ota.repository import KeyStore, Repository
from ota.service import OtaService, outbox_reporter
from ota.updater import OtaUpdater
from tests import fake_gpu
from tests.conftest import wait_until
from tests.ota_helpers import (
    RepoServer,
    agent_config,
    bundle_dir,
    new_repository,
    publish_bundle,
    self_signed,
    serve,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, RepoServer, list[dict[str, Any]]]]:
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0"))
    with serve(repo.directory) as server:
        yield tmp_path, server, []


def _updater(tmp: Path, server: RepoServer, reports: list[dict[str, Any]] | None = None, **ota: Any) -> OtaUpdater:
    factory = tmp / "bundles" / "1.0.0"
    if not factory.exists():
        bundle_dir(tmp / "bundles", "1.0.0")
    config = agent_config(tmp / "data", factory, server.url, tmp / "repo" / "metadata" / "1.root.json", **ota)
    sink = reports if reports is not None else []
    return updater_for(config, lambda body: sink.append(dict(body["ota"])))


def _version(updater: OtaUpdater) -> str:
    return load_bundle(updater.active_path()).manifest.version


def test_a_bundle_whose_golden_vectors_fail_is_never_activated(setup: Any) -> None:
    tmp, server, reports = setup
    repo = Repository(tmp / "repo", KeyStore(tmp / "keys"))
    publish_bundle(repo, bundle_dir(tmp / "bundles", "1.2.0", bad_golden=True))
    updater = _updater(tmp, server, reports)
    with pytest.raises(HealthCheckFailed, match="onnxruntime-cpu: golden vectors fail"):
        updater.apply(switch_now=True)
    state = updater.store.read()
    assert (state.active, state.staged, dict(state.slots)) == ("factory", None, {})
    assert reports[-1]["event"] == "health_check_failed"
    assert _version(updater) == "1.0.0"
    assert updater.apply(switch_now=True).outcome == "refused-before"
    assert updater.idle(updater.load_active()) is None


def test_switch_happens_at_the_next_idle_moment(setup: Any) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server)
    current = updater.load_active()
    result = updater.apply()  # as the agent does it: stage only
    assert result.outcome == "staged"
    assert _version(updater) == "1.0.0"  # the pipeline may be busy: nothing switched yet
    new = updater.idle(current)  # the worker is idle
    assert new is not None
    assert new.bundle.manifest.version == "1.1.0"
    assert _version(updater) == "1.1.0"
    assert updater.idle(new) is None
    new.backend.close()
    current.backend.close()


def test_a_bundle_failing_after_activation_is_rolled_back(setup: Any) -> None:
    tmp, server, reports = setup
    updater = _updater(tmp, server, reports, failure_threshold=3, watch_studies=10)
    assert updater.apply(switch_now=True).outcome == "switched"
    current = updater.load_active()
    updater.outcome(False, "backend failed")
    updater.outcome(True)  # a success resets the count
    updater.outcome(False, "backend failed")
    updater.outcome(False, "backend failed")
    assert _version(updater) == "1.1.0"
    updater.outcome(False, "backend failed")
    assert _version(updater) == "1.0.0"
    assert reports[-1]["event"] == "rollback"
    assert reports[-1]["version"] == "1.1.0"
    previous = updater.idle(current)
    assert previous is not None
    assert previous.bundle.manifest.version == "1.0.0"
    assert updater.apply(switch_now=True).outcome == "refused-before"
    with pytest.raises(InstallError, match="no previous model"):
        updater.rollback("again")
    previous.backend.close()
    current.backend.close()


def test_a_bundle_that_keeps_working_is_confirmed(setup: Any) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server, watch_studies=3)
    updater.apply(switch_now=True)
    updater.load_active().backend.close()
    for _ in range(3):
        updater.outcome(True)
    state = updater.store.read()
    assert (state.watch_left, state.active, state.previous) == (0, "a", "factory")
    for _ in range(5):
        updater.outcome(False, "after confirmation")  # no longer observed
    assert _version(updater) == "1.1.0"


def test_an_interrupted_download_resumes(setup: Any) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server)
    offer, _ = updater.check()
    assert offer is not None
    target = f"targets/models/{offer.sha256}.tiny-test-model.tar"
    server.cut_after[target] = 5000
    with pytest.raises(RepositoryUnavailable, match="5000 of"):
        updater.apply(switch_now=True)
    part = tmp / "data" / "ota" / "downloads" / f"{offer.sha256}.tar"
    assert part.stat().st_size == 5000
    assert _version(updater) == "1.0.0"
    assert updater.apply(switch_now=True).outcome == "switched"
    assert server.ranges == [(target, "bytes=5000-")]
    assert _version(updater) == "1.1.0"


_CRASH = """
import os, signal, sys
from pathlib import Path
import models.bundle, ota.updater
from edge.agent import updater_for
from tests.ota_helpers import agent_config

data, factory, url, root, step = sys.argv[1:]
def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint = ota.updater._checkpoint
ota.updater._checkpoint = lambda name, **f: die() if name == step else checkpoint(name, **f)
if step == "unpacking":  # the second file of the bundle is being written
    real, calls = models.bundle.atomic_write_bytes, []
    def write(path, data, mode=0o644):
        calls.append(path)
        if len(calls) == 2:
            die()
        real(path, data, mode)
    models.bundle.atomic_write_bytes = write
updater_for(agent_config(Path(data), Path(factory), url, Path(root))).apply(switch_now=True)
print("finished without being killed")
"""

STEPS = ("downloading", "downloaded", "unpacking", "unpacked", "healthy", "staged", "switching", "switched")


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_install_step_leaves_a_working_model(setup: Any, step: str) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server)
    args = [str(tmp / "data"), str(tmp / "bundles" / "1.0.0"), server.url, str(tmp / "repo/metadata/1.root.json")]
    child = subprocess.run(
        [sys.executable, "-c", _CRASH, *args, step],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -9, child.stdout + child.stderr
    assert _version(updater) == ("1.1.0" if step == "switched" else "1.0.0")
    updater.load_active().backend.close()  # the model the pointer names runs on the real backend
    result = updater.apply(switch_now=True)
    assert result.outcome == ("up-to-date" if step == "switched" else "switched")
    assert _version(updater) == "1.1.0"


def test_the_service_installs_when_the_relay_announces_a_bundle(setup: Any) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server)
    service = OtaService(updater, check_interval_s=3600)
    service.start()
    try:
        wait_until(lambda: updater.store.read().staged is not None, 30, "a bundle staged")
        publish_bundle(Repository(tmp / "repo", KeyStore(tmp / "keys")), bundle_dir(tmp / "bundles", "1.1.1"))
        updater.idle(updater.load_active())
        for _ in range(50):
            updater.outcome(True)
        service.notify(b'{"v": 1}')

        def staged_version() -> str | None:
            state = updater.store.read()
            return None if state.staged is None else state.slots[state.staged].version

        wait_until(lambda: staged_version() == "1.1.1", 30, "the announcement acted on")
    finally:
        service.stop()


@pytest.mark.slow
def test_command_lines(tmp_path: Path) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    assert btt_ota(["init", "--repo", str(repo), "--keys", str(keys)]) == 0
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    assert (
        btt_ota(["add", str(bundle_dir(tmp_path / "bundles", "1.1.0")), "--repo", str(repo), "--keys", str(keys)]) == 0
    )
    assert btt_ota(["publish", "--repo", str(repo), "--keys", str(keys)]) == 0
    assert btt_ota(["status", "--repo", str(repo)]) == 0
    assert btt_ota(["publish", "--repo", str(repo), "--keys", str(tmp_path / "empty")]) == 2
    with serve(repo) as server:
        env = {
            **os.environ,
            "BTT_EDGE_OTA_REPOSITORY_URL": server.url,
            "BTT_EDGE_OTA_TRUSTED_ROOT": str(repo / "metadata" / "1.root.json"),
            "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(factory),
            "BTT_EDGE_PIPELINE_BACKEND": "onnxruntime-cpu",
        }

        def edge(*args: str) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, "-m", "edge", "ota", *args, "--data-dir", str(tmp_path / "data")],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            return dict(json.loads(out.stdout))

        assert edge("check")["verdict"] == "newer"
        assert edge("apply")["outcome"] == "switched"
        assert edge("status")["active_model"] == {"id": "tiny-test-model", "version": "1.1.0"}
        assert edge("rollback")["active"] == "factory"
        assert edge("status")["last_event"]["event"] == "rollback"


def test_the_repository_over_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0"))
    with serve(repo.directory, tls_cert=(cert, key)) as server:
        assert server.url.startswith("https://")
        with pytest.raises(RepositoryUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            _updater(tmp_path, server).check()  # the system CAs do not know this server
        updater = _updater(tmp_path, server, ca_file=str(cert))
        assert updater.apply(switch_now=True).outcome == "switched"
        assert _version(updater) == "1.1.0"


def test_on_a_gpu_the_engine_is_built_and_cached_before_the_switch(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT logic against tests/fake_gpu.py (a real GPU is not here): the health check builds the new bundle's
    engine into <data_dir>/engines, and the switch only deserialises it."""
    tmp, server, _ = setup
    log, _ = fake_gpu.install(monkeypatch)
    factory = bundle_dir(tmp / "bundles", "1.0.0")
    config = agent_config(tmp / "data", factory, server.url, tmp / "repo" / "metadata" / "1.root.json")
    config = dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, backend="tensorrt"))
    updater = updater_for(config)
    current = updater.load_active()
    assert current.backend.name == "tensorrt"
    log.clear()
    assert updater.apply().outcome == "staged"
    assert "build fp16" in log
    assert len(list((tmp / "data" / "engines").glob("*.engine"))) == 2
    log.clear()
    new = updater.idle(current)
    assert new is not None
    assert new.backend.name == "tensorrt"
    assert "deserialize" in log
    assert "builder" not in log
    new.backend.close()
    current.backend.close()


def test_third_install_reuses_the_previous_slot_only_after_confirmation(setup: Any) -> None:
    tmp, server, _ = setup
    updater = _updater(tmp, server, watch_studies=1)
    repo = Repository(tmp / "repo", KeyStore(tmp / "keys"))
    assert updater.apply(switch_now=True).outcome == "switched"  # 1.1.0 in a, previous factory
    publish_bundle(repo, bundle_dir(tmp / "bundles", "1.2.0"))
    assert updater.apply(switch_now=True).outcome == "waiting"  # 1.1.0 still observed
    updater.load_active().backend.close()
    updater.outcome(True)
    assert updater.apply(switch_now=True).outcome == "switched"  # 1.2.0 in b, previous a
    updater.load_active().backend.close()
    updater.outcome(True)
    publish_bundle(repo, bundle_dir(tmp / "bundles", "1.3.0", bad_golden=True))
    with pytest.raises(HealthCheckFailed):
        updater.apply(switch_now=True)  # went into a, the previous slot: no longer a rollback target
    state = updater.store.read()
    assert (state.active, state.previous, sorted(state.slots)) == ("b", None, ["b"])
    assert _version(updater) == "1.2.0"


def test_a_report_that_cannot_be_queued_never_blocks_a_rollback(setup: Any) -> None:
    tmp, server, _ = setup
    data = tmp / "data"
    factory = bundle_dir(tmp / "bundles", "1.0.0")
    config = agent_config(data, factory, server.url, tmp / "repo" / "metadata" / "1.root.json", failure_threshold=1)
    data.mkdir()
    (data / "edge.db").mkdir()  # the database cannot be opened: every report fails
    updater = updater_for(config, outbox_reporter(Outbox(config.outbox), data))
    assert updater.apply(switch_now=True).outcome == "switched"
    updater.load_active().backend.close()
    updater.outcome(False, "backend failed")
    assert _version(updater) == "1.0.0"
