"""The Debian package: built once with packaging/build-deb (the wheel alone, nothing downloaded), its contents and
maintainer scripts inspected with dpkg-deb, then installed, upgraded, removed and purged in a throwaway root with
``dpkg --root`` (scripts run chrootless with DPKG_ROOT). The systemd units are checked with systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu) to build a .deb"),
    pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the system /usr/bin/python3 the package links to"),
]


def _run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb")
    src = work / "src"
    # A clean copy of the working tree (no stale build/ dir), built into a wheel with the suite's own setuptools.
    files = _run("git", "-C", REPO, "ls-files", "--cached", "--others", "--exclude-standard").split("\n")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", work, src)
    (wheel,) = work.glob("btt_edge-*.whl")
    out = _run(
        PACKAGING / "build-deb", "--wheel", wheel, "--no-deps", "--out", work / "dist", "--python", SYSTEM_PYTHON
    )
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file()
    return path


def test_contents_and_control(deb: Path) -> None:
    listing = _run("dpkg-deb", "-c", deb)
    for path in (
        "./opt/btt-edge/venv/bin/btt-edge",
        "./opt/btt-edge/venv/pyvenv.cfg",
        "/edge/systemd.py",
        "/models/bundles/reference-dental/model.onnx",
        "/edge/plan/data/rules.toml",
        "/edge/plan/data/codes/ada-cdt.toml",
        "/cloud_relay/portal/templates/base.html",
        "/cloud_relay/portal/static/vendor/htmx/htmx.min.js",
        "/cloud_relay/portal/locales/zh-CN.json",
        "/cloud_relay/chain/artifacts/ServiceRights.json",
        "./lib/systemd/system/btt-edge.service",
        "./lib/systemd/system/btt-edge-provision.service",
        "./usr/lib/systemd/journald.conf.d/60-btt-edge.conf",
        "./etc/btt-edge/edge.toml",
        "./usr/share/doc/btt-edge/conformance.md",
        "./usr/bin/btt-edge -> /opt/btt-edge/venv/bin/btt-edge",
    ):
        assert path in listing, path
    assert "__pycache__" not in listing  # byte-compiled by postinst, removed by prerm
    assert "/var/lib/btt-edge" not in listing  # state is created by postinst, never shipped (or removed) by dpkg
    assert all(" root/root " in line for line in listing.splitlines())
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    info = _run("dpkg-deb", "-I", deb)
    assert "Package: btt-edge" in info
    system_version = _run(SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    assert f"Depends: python{system_version}, passwd" in info, version
    for script in ("postinst", "prerm", "postrm"):
        assert f" {script} " in info


def test_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "DEBIAN"
    _run("dpkg-deb", "-e", deb, control)
    assert (control / "conffiles").read_text() == "/etc/btt-edge/edge.toml\n"
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK)
        _run("sh", "-n", path)
    postrm = (control / "postrm").read_text()
    # Data goes only on purge.
    assert postrm.index("purge)") < postrm.index('rm -rf "$ROOT/var/lib/btt-edge"') < postrm.index("remove|upgrade")
    # The venv was relocated: no trace of the staging directory.
    root = tmp_path / "x"
    _run("dpkg-deb", "-x", deb, root)
    venv = root / "opt/btt-edge/venv"
    script = (venv / "bin/btt-edge").read_text()
    assert script.startswith("#!/opt/btt-edge/venv/bin/python")
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin/python").is_symlink()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A throwaway root with an empty dpkg database and minimal user databases."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir()
    (root / "var/lib/dpkg/status").touch()
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o600)
    return root


def _dpkg(root: Path, *args: str | Path) -> str:
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return _run("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args, env=env)


def _owner(root: Path, path: Path) -> str:
    names = {int(line.split(":")[2]): line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}
    return names.get(path.stat().st_uid, str(path.stat().st_uid))


@pytest.mark.skipif(os.geteuid() != 0, reason="installing into a throwaway root with dpkg --root needs root")
def test_install_upgrade_remove_purge_in_a_throwaway_root(deb: Path, target: Path) -> None:
    _dpkg(target, "-i", deb)
    data = target / "var/lib/btt-edge"
    assert _owner(target, data) == "btt-edge"
    assert data.stat().st_mode & 0o777 == 0o710  # the agent group reaches control.sock, nothing else
    assert "btt-edge:x:" in (target / "etc/passwd").read_text()
    assert (target / "etc/btt-edge/edge.toml").stat().st_mode & 0o777 == 0o640
    assert list((target / "opt/btt-edge/venv/lib").glob("python3*/site-packages/edge/__pycache__/*.pyc"))
    # The installed interpreter runs the installed code (edge.systemd needs nothing but the standard library).
    python = target / "opt/btt-edge/venv/bin/python"
    out = _run(python, "-I", "-c", "import edge.systemd as s; print(s.__file__)")
    assert out.startswith(str(target / "opt/btt-edge/venv/lib"))

    # State and local configuration survive an upgrade (a reinstall of the same package runs the upgrade path).
    (data / "edge.db").write_text("state")
    (target / "etc/btt-edge/edge.toml").write_text("[dicom]\nport = 104\n")
    _dpkg(target, "--force-confold", "-i", deb)
    assert (data / "edge.db").read_text() == "state"
    assert (target / "etc/btt-edge/edge.toml").read_text() == "[dicom]\nport = 104\n"
    assert (target / "etc/passwd").read_text().count("btt-edge:x:") == 1

    # Remove keeps the data and the user; the venv is gone.
    _dpkg(target, "-r", "btt-edge")
    assert (data / "edge.db").read_text() == "state"
    assert not (target / "opt/btt-edge/venv").exists()
    assert "btt-edge:x:" in (target / "etc/passwd").read_text()

    # Purge deletes them (and the log directory systemd's LogsDirectory= made).
    (target / "var/log/btt-edge").mkdir(parents=True)
    _dpkg(target, "-P", "btt-edge")
    assert not data.exists()
    assert not (target / "var/log/btt-edge").exists()
    assert not (target / "etc/btt-edge").exists()
    assert "btt-edge" not in (target / "etc/passwd").read_text()
    assert "btt-edge" not in (target / "etc/group").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze to verify the units")
def test_units_verify(deb: Path, tmp_path: Path) -> None:
    # The installed units, with their /opt paths pointed into the extracted package (verify checks executables).
    root = tmp_path / "x"
    _run("dpkg-deb", "-x", deb, root)
    relay = root / "opt/btt-relay/venv/bin/btt-relay"
    relay.parent.mkdir(parents=True)
    relay.symlink_to(root / "opt/btt-edge/venv/bin/btt-relay")
    units = tmp_path / "units"
    units.mkdir()
    sources = [*(root / "lib/systemd/system").glob("*.service"), PACKAGING / "systemd/btt-relay@.service"]
    for source in sources:
        (units / source.name).write_text(source.read_text().replace("/opt/", f"{root}/opt/"))
    shutil.copy(units / "btt-relay@.service", units / "btt-relay@1.service")
    names = ["btt-edge.service", "btt-edge-provision.service", "btt-relay@1.service"]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(units / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), done.stderr


def test_agent_unit_hardening() -> None:
    unit = (PACKAGING / "systemd/btt-edge.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "User=btt-edge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/btt-edge",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "Restart=always",
    ):
        assert line in unit, line
