"""The import graph of our packages: no module-level cycle, and no package importing one above it.

A static walk of every module (no package is imported). For the cycle check an import counts when it runs as the
module is imported: at module level or in a class body, not inside a function, not under ``if TYPE_CHECKING:``.
``from package import name`` is an edge to the module ``package.name`` when there is one, else to ``package``.
The layering, bottom up (each package may import the ones its row names, and its own modules)::

    runtime, dental                  nothing of ours
    protocol                         runtime
    models                           runtime, dental          (models.reference -> edge.pipeline: see below)
    firmware_bridge                  runtime
    edge                             runtime, protocol, dental, models, firmware_bridge
    ota                              edge and everything below it
    cloud_relay                      runtime, protocol        (tests/test_relay_imports.py: never the agent)

Two exceptions, each named: ``models.reference`` is the reference model's training and evaluation tooling (it needs
torch and runs the device's own pipeline), a tool above ``edge.pipeline`` although it lives in ``models``; and the
agent's composition root and the ``ota`` command import ``ota`` inside functions (the updater is a plug-in of the
agent; :func:`edge.agent.updater_for` gives it the pipeline's model loader). Imports inside functions are checked
too, against the same table plus that second exception, so a deferred import cannot hide an upward one. ``ota``
may import ``edge`` but not the pipeline (``NOT_BELOW``): what it runs a model with is passed in.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS: dict[str, frozenset[str]] = {
    "runtime": frozenset(),
    "dental": frozenset(),
    "protocol": frozenset({"runtime"}),
    "models": frozenset({"runtime", "dental"}),
    "firmware_bridge": frozenset({"runtime"}),
    "edge": frozenset({"runtime", "protocol", "dental", "models", "firmware_bridge"}),
    "ota": frozenset({"runtime", "protocol", "dental", "models", "firmware_bridge", "edge"}),
    "cloud_relay": frozenset({"runtime", "protocol"}),
}
"""What each package may import besides itself."""

TOOLS_ABOVE = {"models.reference": "edge.pipeline"}
"""A subpackage that is a tool above the layer it lives in: it may import this (and what is under it)."""

DEFERRED = {"edge.agent": "ota", "edge.cli.ota": "ota"}
"""Modules that may import a package above theirs inside a function: the wiring and the command that uses it."""

NOT_BELOW = {"ota": frozenset({"edge.pipeline"})}
"""Parts of a lower package that a package may not import (at module level or inside a function)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {
    _module_name(path): path for package in LAYERS for path in sorted((REPO / package).rglob("*.py"))
}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _blocks(node: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The statement lists nested in a compound statement (if, for, while, with, try, match, class)."""
    for field in ("body", "orelse", "finalbody"):
        yield getattr(node, field, [])
    for clause in (*getattr(node, "handlers", ()), *getattr(node, "cases", ())):
        yield clause.body


def _imports(body: list[ast.stmt], deferred: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``body``, with whether it is deferred (inside a function)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, deferred
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _imports(node.body, True)
        elif isinstance(node, ast.If) and _type_checking(node):
            yield from _imports(node.orelse, deferred)
        else:
            for block in _blocks(node):
                yield from _imports(block, deferred)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of ours that ``node`` in ``module`` imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    for name in names:
        known = name
        while known and known not in MODULES:
            known = known.rpartition(".")[0]
        if known:
            yield known


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module-level, deferred)``: for each module, the modules of ours it imports."""
    eager: dict[str, set[str]] = {module: set() for module in MODULES}
    deferred: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, inside in _imports(tree.body, False):
            (deferred if inside else eager)[module].update(t for t in _targets(module, node) if t != module)
    return eager, deferred


EAGER, DEFERRED_IMPORTS = _graph()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _allowed(module: str, target: str, deferred: bool) -> bool:
    package, wanted = module.partition(".")[0], target.partition(".")[0]
    if any(_within(target, part) for part in NOT_BELOW.get(package, ())):
        return False
    if wanted == package or wanted in LAYERS[package]:
        return True
    if any(_within(module, tool) and _within(target, below) for tool, below in TOOLS_ABOVE.items()):
        return True
    return deferred and DEFERRED.get(module) == wanted


def test_the_walk_sees_the_packages() -> None:
    assert len(MODULES) > 200
    assert "edge.pipeline.analyzer" in EAGER["edge.pipeline.worker"]
    assert "ota.service" in DEFERRED_IMPORTS["edge.agent"]


def test_every_package_has_its_place_in_the_layering() -> None:
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(LAYERS)


def test_no_module_level_import_cycle() -> None:
    try:
        graphlib.TopologicalSorter(EAGER).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise AssertionError(f"import cycle: {' -> '.join(cycle)}") from None


def test_no_package_imports_one_above_it() -> None:
    wrong = [
        f"{MODULES[module].relative_to(REPO)} imports {target}{' (inside a function)' if deferred else ''}: "
        f"{module.partition('.')[0]} may import only {', '.join(sorted(LAYERS[module.partition('.')[0]])) or 'itself'}"
        for graph, deferred in ((EAGER, False), (DEFERRED_IMPORTS, True))
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if not _allowed(module, target, deferred)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_exceptions_are_still_needed() -> None:
    for tool, below in TOOLS_ABOVE.items():
        assert any(
            _within(module, tool) and any(_within(target, below) for target in targets)
            for module, targets in EAGER.items()
        ), f"{tool} no longer imports {below}: drop it from TOOLS_ABOVE"
    for module, package in DEFERRED.items():
        assert any(_within(target, package) for target in DEFERRED_IMPORTS[module]), (
            f"{module} no longer imports {package}: drop it from DEFERRED"
        )
