"""Names that become paths: a model id or version with ``../`` (or anything but a plain name) is refused by
``btt-ota add`` before anything is written, and a repository that signs such a name (or a sha256 that is not a
digest) is refused by the device before it downloads anything. The repository is the real ``btt-ota`` code, the
device the real updater against a real HTTP server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.agent import updater_for
from ota.cli import main as btt_ota
from ota.errors import PublishError, UpdateRefused
from ota.repository import Repository, bundle_archive, check_name
from tests.ota_helpers import agent_config, bundle_dir, new_repository, publish_bundle, serve


def tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["tiny-model", "a", "1.2.3", "1.2.3-rc.1+build.5", "A_b-C.d", "x" * 64])
def test_plain_names_pass(name: str) -> None:
    assert check_name("model id", name) == name


@pytest.mark.parametrize(
    "name", ["", "..", "../evil", "a/../b", "a/b", "a..b", ".hidden", "-x", "x" * 65, "a b", "é", "a\\b", "a\0b", 7]
)
def test_names_that_could_become_other_paths_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match="not a safe name"):
        check_name("model id", name)


@pytest.mark.parametrize(("model_id", "version"), [("../../escaped", "1.1.0"), ("tiny-test-model", "1.1.0-..")])
def test_btt_ota_add_refuses_an_id_or_version_that_is_not_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_id: str, version: str
) -> None:
    repo = new_repository(tmp_path)
    before = tree(tmp_path)
    targets = (repo.metadata_dir / "targets.json").read_bytes()
    bundle = bundle_dir(tmp_path / "bundles", version, model_id=model_id)
    before |= tree(tmp_path) - before
    code = btt_ota(["add", str(bundle), "--repo", str(repo.directory), "--keys", str(tmp_path / "keys")])
    assert code == 2
    assert "not a safe name" in capsys.readouterr().err
    assert tree(tmp_path) == before  # nothing written inside or outside the repository
    assert (repo.metadata_dir / "targets.json").read_bytes() == targets
    with pytest.raises(PublishError, match="not a safe name"):
        repo.add_bundle(*bundle_archive(bundle))


def test_announce_refuses_an_id_that_is_not_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = new_repository(tmp_path)
    (tmp_path / "devices").write_text("box-1\n", encoding="utf-8")
    args = ["announce", "../x", "--repo", str(repo.directory), "--mqtt", "mqtt://u:p@127.0.0.1:1"]
    assert btt_ota([*args, "--devices", str(tmp_path / "devices")]) == 2
    assert "not a safe name" in capsys.readouterr().err


def resign_entry(repo: Repository, **change: str) -> None:
    """A malicious repository: the signed entry of the tiny model with ``version`` or ``sha256`` changed, signed
    with the repository's own keys (what a compromised targets key can do)."""
    path = repo.metadata_dir / "targets.json"
    doc = json.loads(path.read_bytes())
    entry = doc["signed"]["targets"]["models/tiny-test-model.tar"]
    if "version" in change:
        entry["custom"]["version"] = change["version"]
    if "sha256" in change:
        entry["hashes"]["sha256"] = change["sha256"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    repo.publish(roles=("targets",))


@pytest.mark.parametrize("change", [{"version": "1.1.0/../../../../escaped"}, {"sha256": "../../../../escaped"}])
def test_the_device_refuses_a_signed_name_that_would_escape(tmp_path: Path, change: dict[str, str]) -> None:
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0"))
    resign_entry(repo, **change)
    reports: list[dict[str, object]] = []
    with serve(repo.directory) as server:
        config = agent_config(tmp_path / "data", factory, server.url, repo.metadata_dir / "1.root.json")
        updater = updater_for(config, lambda body: reports.append(dict(body["ota"])))
        before = tree(tmp_path)
        with pytest.raises(UpdateRefused, match="signed entry") as info:
            updater.apply(switch_now=True)
        assert not any(r.startswith("targets/") for r in server.requests)  # refused before any download
    assert reports[-1] == {**reports[-1], "event": "refused", "reason": info.value.reason}
    assert not [p for p in tree(tmp_path) - before if "escaped" in str(p)]
    assert updater.store.read().active == "factory"
