"""The relay runs without the agent: ``cloud_relay`` needs only ``protocol``, ``runtime`` and its own extra.

The dependency rule: ``runtime`` imports nothing of ours, ``protocol`` imports only ``runtime``, and
``cloud_relay`` imports ``protocol`` and ``runtime`` but never the agent's packages (``edge``, ``models``, ``ota``,
``firmware_bridge``) nor the agent's heavy dependencies. Checked twice: statically (every import statement in the
files, including the ones inside functions), and for real in a fresh interpreter that refuses to import them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENT = ("edge", "models", "ota", "firmware_bridge")
AGENT_DEPENDENCIES = ("onnxruntime", "pynetdicom", "pydicom", "highdicom")
REFUSED = AGENT + AGENT_DEPENDENCIES
OURS = (*AGENT, "cloud_relay", "protocol", "runtime")
ALLOWED = {
    "runtime": {"runtime"},
    "protocol": {"protocol", "runtime"},
    "cloud_relay": {"cloud_relay", "protocol", "runtime"},
}


def _imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (relative imports resolve inside its package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(path.relative_to(REPO).parts[0] if node.level else (node.module or "").partition(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_dependency_rule(package: str) -> None:
    wrong = {
        str(path.relative_to(REPO)): sorted(bad)
        for path in sorted((REPO / package).rglob("*.py"))
        if (
            bad := {
                name for name in _imported(path) if name in REFUSED or (name in OURS and name not in ALLOWED[package])
            }
        )
    }
    assert wrong == {}


_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    REFUSED = set(sys.argv[1].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in REFUSED:
                raise ImportError(f"the relay must not need {name}")
            return None

    sys.meta_path.insert(0, Refuse())
    import cloud_relay

    names = [m.name for m in pkgutil.walk_packages(cloud_relay.__path__, "cloud_relay.")]
    for name in names:
        importlib.import_module(name)
    from cloud_relay.cli import main

    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    else:
        raise AssertionError("--help did not exit")
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & REFUSED)
    assert not loaded, loaded
    print("imported", len(names), "modules")
    """
)


def test_every_relay_module_imports_and_the_cli_runs_without_the_agent() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(REFUSED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: btt-relay" in result.stdout
    assert "imported" in result.stdout
