"""OTA trust: one test per attack, each refused with its own reason and the running model untouched; root key
rotation. The repository is made with the real ``ota.repository`` code and served by a real HTTP server on
loopback; the device side is the real updater (python-tuf, ONNX Runtime on the CPU for the health check)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import TargetFile

from edge.agent import updater_for
from edge.errors import ConfigError
from models.bundle import load_bundle
from ota.errors import (
    BundleTampered,
    FreezeRefused,
    MixAndMatchRefused,
    OversizedDownload,
    PublishError,
    RollbackRefused,
    UntrustedMetadata,
    UpdateRefused,
)
from ota.repository import DEFAULT_EXPIRY, KeyStore, Repository, bundle_archive
from ota.rollout import RolloutPolicy, bucket, in_rollout
from ota.service import OtaService
from ota.updater import OtaUpdater
from tests.ota_helpers import RepoServer, agent_config, bundle_dir, new_repository, publish_bundle, serve


@dataclass
class World:
    tmp: Path
    factory: Path
    repo: Repository
    server: RepoServer
    reports: list[dict[str, Any]]

    def updater(self, **ota: Any) -> OtaUpdater:
        config = agent_config(
            self.tmp / "data", self.factory, self.server.url, self.repo.metadata_dir / "1.root.json", **ota
        )
        return updater_for(config, lambda body: self.reports.append(dict(body["ota"])))

    def publish(self, version: str, **kwargs: Any) -> None:
        publish_bundle(self.repo, bundle_dir(self.tmp / "bundles", version), **kwargs)

    def target_url_path(self) -> str:
        info = self.repo.load("targets").signed.targets["models/tiny-test-model.tar"]
        return f"targets/models/{info.hashes['sha256']}.tiny-test-model.tar"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    repo = new_repository(tmp_path)
    with serve(repo.directory) as server:
        yield World(tmp_path, factory, repo, server, [])


def assert_untouched(updater: OtaUpdater, version: str = "1.0.0") -> None:
    state = updater.store.read()
    assert state.staged is None
    assert load_bundle(updater.store.path(state.active)).manifest.version == version


def refused(world: World, updater: OtaUpdater, error: type[UpdateRefused]) -> str:
    with pytest.raises(error) as info:
        updater.apply(switch_now=True)
    assert type(info.value) is error, info.value
    assert world.reports[-1]["event"] == "refused"
    assert world.reports[-1]["reason"] == error.reason
    assert_untouched(updater)
    return str(info.value)


def test_a_signed_newer_bundle_is_installed(world: World) -> None:
    world.publish("1.1.0")
    updater = world.updater()
    offer, verdict = updater.check()
    assert offer is not None
    assert (offer.version, verdict) == ("1.1.0", "newer")
    result = updater.apply(switch_now=True)
    assert (result.outcome, result.version) == ("switched", "1.1.0")
    assert load_bundle(updater.active_path()).manifest.version == "1.1.0"
    assert updater.apply().outcome == "up-to-date"


def test_modified_bundle_is_refused(world: World) -> None:
    world.publish("1.1.0")
    path = world.target_url_path()
    data = bytearray((world.repo.directory / path).read_bytes())
    data[600] ^= 0xFF
    world.server.override[path] = bytes(data)
    message = refused(world, world.updater(), BundleTampered)
    assert "hash" in message.lower()
    assert not list((world.tmp / "data" / "ota" / "downloads").glob("*"))


def test_arbitrary_metadata_signed_by_an_unknown_key_is_refused(world: World) -> None:
    world.publish("1.1.0")
    timestamp = world.repo.load("timestamp")
    timestamp.signed.version += 5
    timestamp.signatures.clear()
    timestamp.sign(CryptoSigner.generate_ed25519())
    world.server.override["metadata/timestamp.json"] = timestamp.to_bytes()
    refused(world, world.updater(), UntrustedMetadata)


def test_replayed_older_metadata_is_a_refused_rollback(world: World) -> None:
    old_timestamp = (world.repo.metadata_dir / "timestamp.json").read_bytes()
    world.publish("1.1.0")
    updater = world.updater()
    assert updater.check()[1] == "newer"  # the device now trusts timestamp v2
    world.server.override["metadata/timestamp.json"] = old_timestamp
    message = refused(world, updater, RollbackRefused)
    assert "timestamp" in message


def test_a_signed_but_older_bundle_is_a_refused_rollback(world: World) -> None:
    world.publish("0.9.0")
    message = refused(world, world.updater(), RollbackRefused)
    assert "0.9.0" in message
    assert "1.0.0" in message


def test_stale_metadata_is_a_refused_freeze(world: World) -> None:
    world.publish("1.1.0", expiry={**DEFAULT_EXPIRY, "timestamp": timedelta(seconds=-60)})
    message = refused(world, world.updater(), FreezeRefused)
    assert "expired" in message.lower()


def test_mixed_and_matched_metadata_is_refused(world: World) -> None:
    world.publish("1.1.0")
    older_targets = (world.repo.metadata_dir / "targets.json").read_bytes()
    world.publish("1.2.0")
    version = world.repo.load("targets").signed.version
    world.server.override[f"metadata/{version}.targets.json"] = older_targets
    refused(world, world.updater(), MixAndMatchRefused)


def test_endless_metadata_is_cut_off(world: World) -> None:
    world.server.endless.add("metadata/timestamp.json")
    refused(world, world.updater(), OversizedDownload)


def test_endless_bundle_download_is_cut_at_the_signed_length(world: World) -> None:
    world.publish("1.1.0")
    world.server.endless.add(world.target_url_path())
    message = refused(world, world.updater(), OversizedDownload)
    assert "more than the signed" in message


def test_bundle_above_the_configured_maximum_is_refused_before_download(world: World) -> None:
    world.publish("1.1.0")
    message = refused(world, world.updater(max_bundle_bytes=1024), OversizedDownload)
    assert "maximum is 1024" in message
    assert not any(r.startswith("targets/") for r in world.server.requests)


def test_one_compromised_key_below_the_threshold_is_refused(tmp_path: Path) -> None:
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    repo = new_repository(tmp_path, key_counts={"targets": 2}, thresholds={"targets": 2})
    root = repo.load("root").signed
    stolen = repo.keys.signer(root.roles["targets"].keyids[0])
    assert stolen is not None
    evil = bundle_dir(tmp_path / "bundles", "6.6.6")
    archive, model_id, version = bundle_archive(evil)
    with pytest.raises(PublishError, match="0 of the 2"):  # the manufacturer tool refuses below threshold
        Repository(repo.directory, KeyStore(tmp_path / "nokeys")).add_bundle(archive, model_id, version)
    # The attacker holds one targets key (and the online snapshot/timestamp keys): one signature of two.
    targets = repo.load("targets")
    info = TargetFile.from_data("models/tiny-test-model.tar", archive, ["sha256"])
    info.unrecognized_fields["custom"] = {"model_id": model_id, "version": version}
    targets.signed.targets[info.path] = info
    targets.signed.version += 1
    targets.signatures.clear()
    targets.sign(stolen)
    repo._write(targets)
    repo._snapshot_and_timestamp(root, targets, None, repo.load("timestamp"), DEFAULT_EXPIRY)
    with serve(repo.directory) as server:
        reports: list[dict[str, Any]] = []
        config = agent_config(tmp_path / "data", factory, server.url, repo.metadata_dir / "1.root.json")
        updater = updater_for(config, lambda body: reports.append(dict(body["ota"])))
        with pytest.raises(UntrustedMetadata, match="targets"):
            updater.apply(switch_now=True)
        assert reports[-1]["reason"] == "untrusted-metadata"
        assert_untouched(updater)


def test_root_key_rotation(world: World) -> None:
    updater = world.updater()
    assert updater.check()[1] == "no-bundle"  # the device trusts root v1
    root = world.repo.load("root").signed
    old_root, old_timestamp = root.roles["root"].keyids[0], root.roles["timestamp"].keyids[0]
    new_keys = KeyStore(world.tmp / "new-keys")
    new_root, new_timestamp = new_keys.create(), new_keys.create()
    shutil.copy(new_keys.directory / f"{new_root.public_key.keyid}.pem", world.repo.keys.directory)
    shutil.copy(new_keys.directory / f"{new_timestamp.public_key.keyid}.pem", world.repo.keys.directory)
    assert world.repo.rotate("root", add=[new_root.public_key], remove=[old_root]) == 2
    assert world.repo.rotate("timestamp", add=[new_timestamp.public_key], remove=[old_timestamp]) == 3
    (world.repo.keys.directory / f"{old_root}.pem").unlink()
    world.publish("1.1.0")
    assert updater.apply(switch_now=True).outcome == "switched"
    assert (world.tmp / "data" / "ota" / "metadata" / "root_history" / "3.root.json").exists()
    # The retired timestamp key no longer counts: metadata signed with it is refused.
    timestamp = world.repo.load("timestamp")
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    retired = world.repo.keys.signer(old_timestamp)
    assert retired is not None
    timestamp.sign(retired)
    world.server.override["metadata/timestamp.json"] = timestamp.to_bytes()
    with pytest.raises(UntrustedMetadata):
        updater.apply()
    assert load_bundle(updater.active_path()).manifest.version == "1.1.0"


def test_rollout_reaches_a_group_or_a_share_of_devices(world: World) -> None:
    assert in_rollout("any", (), RolloutPolicy())
    assert in_rollout("box-1", ("pilot",), RolloutPolicy(percent=0, groups=("pilot",)))
    assert not in_rollout("box-1", (), RolloutPolicy(percent=0, groups=("pilot",)))
    share = sum(in_rollout(f"box-{i}", (), RolloutPolicy(percent=10)) for i in range(2000))
    assert 120 < share < 280
    assert all(0 <= bucket(f"box-{i}") < 100 for i in range(100))
    with pytest.raises(ValueError, match="percent"):
        RolloutPolicy.from_json({"percent": 150})
    world.publish("1.1.0", rollout=RolloutPolicy(percent=0, groups=("pilot",)))
    assert world.updater().apply().outcome == "not-in-rollout"
    assert world.updater(groups=("pilot",)).apply(switch_now=True).outcome == "switched"
    assert replace(RolloutPolicy(), percent=5).to_json() == {"percent": 5, "groups": []}


def test_the_trusted_root_is_read_at_start_not_while_wiring(tmp_path: Path) -> None:
    """Building the updater reads nothing; an unreadable trusted root stops the OTA service's start, naming the key
    (``btt-edge ota status`` needs no root)."""
    missing = tmp_path / "no-such-root.json"
    config = agent_config(tmp_path / "data", bundle_dir(tmp_path / "bundles", "1.0.0"), "http://127.0.0.1:9/", missing)
    updater = updater_for(config)
    assert updater.status()["active"] == "factory"
    service = OtaService(updater, check_interval_s=3600)
    with pytest.raises(ConfigError, match=r"ota\.trusted_root: cannot read .*no-such-root\.json"):
        service.start()
    service.stop()
    with pytest.raises(ConfigError, match=r"ota\.trusted_root"):
        updater.check()
