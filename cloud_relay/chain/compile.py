"""Compile the ledger contracts into the committed artefacts (a development tool, never run by the relay).

    .venv/bin/python -m cloud_relay.chain.compile [--check] [--tools DIR]

Sources are ``cloud_relay/chain/contracts/*.sol``; OpenZeppelin 5.7 is imported as ``@openzeppelin/contracts/``
from ``DIR/node_modules`` (default: the repository's ``.tools``, which ``scripts/setup`` installs). The compiler is
the npm ``solc`` package's standard-JSON API driven by ``node``, pinned to :data:`SOLC_VERSION`, with the settings in
:data:`SETTINGS` (optimizer on, 200 runs, a fixed EVM version that both anvil and py-evm run, no metadata hash in
the bytecode, so the output depends only on the sources and the compiler). Each contract becomes
``cloud_relay/chain/artifacts/<Name>.json``: ``contractName``, ``abi``, ``bytecode``, ``deployedBytecode`` (0x hex),
``compiler`` (version and settings) and ``sourceSha256`` (of the contract's own ``.sol`` file).

``--check`` writes nothing and exits 1 when a committed artefact is missing, stale or extra (what
``tests/test_chain_contracts.py`` and CI run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACTS_DIR",
    "CONTRACTS_DIR",
    "EVM_VERSION",
    "SETTINGS",
    "SOLC_VERSION",
    "CompileFailed",
    "artifacts_from_output",
    "compile_contracts",
    "default_tools",
    "encode_artifact",
    "main",
    "stale_artifacts",
    "standard_input",
]

SOLC_VERSION = "0.8.37"
EVM_VERSION = "cancun"
"""Cancun: the newest fork both anvil 1.7 (which also runs later forks) and py-evm 0.12 (eth-tester) execute."""

SETTINGS: Mapping[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "viaIR": True,
    "evmVersion": EVM_VERSION,
    "metadata": {"bytecodeHash": "none"},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
_OZ_PREFIX = "@openzeppelin/contracts/"

# Reads the standard-JSON input on stdin, resolves @openzeppelin/contracts/ imports from node_modules, prints the
# compiler's version and output as one JSON object.
_DRIVER = r"""
const fs = require('fs');
const path = require('path');
const modules = process.argv[1];
const solc = require(path.join(modules, 'solc'));
const input = fs.readFileSync(0, 'utf8');
function findImports(name) {
  const prefix = '@openzeppelin/contracts/';
  if (!name.startsWith(prefix) || name.includes('..')) return { error: 'import outside ' + prefix + ': ' + name };
  try {
    return { contents: fs.readFileSync(path.join(modules, name), 'utf8') };
  } catch (e) {
    return { error: String(e) };
  }
}
const output = JSON.parse(solc.compile(input, { import: findImports }));
process.stdout.write(JSON.stringify({ version: solc.version(), output: output }));
"""


class CompileFailed(Exception):
    """node or solc is missing, the compiler is not the pinned version, or the sources do not compile."""


def default_tools() -> Path:
    """The repository's ``.tools`` directory (``scripts/setup`` installs solc and OpenZeppelin there)."""
    return Path(__file__).resolve().parents[2] / ".tools"


def standard_input(sources: Mapping[str, str]) -> dict[str, Any]:
    """The compiler's standard-JSON input for ``{file name: source text}``."""
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sorted(sources.items())},
        "settings": dict(SETTINGS),
    }


def artifacts_from_output(version: str, output: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    """``{contract name: artefact}`` for the contracts defined in ``sources`` (not the imported libraries)."""
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileFailed("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    compiler = {"name": "solc", "version": version, "settings": dict(SETTINGS)}
    result: dict[str, Any] = {}
    for file_name, text in sorted(sources.items()):
        for name, contract in sorted(output["contracts"].get(file_name, {}).items()):
            result[name] = {
                "contractName": name,
                "abi": contract["abi"],
                "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
                "compiler": compiler,
                "sourceSha256": hashlib.sha256(text.encode()).hexdigest(),
            }
    return result


def encode_artifact(artifact: Mapping[str, Any]) -> str:
    """The committed text of one artefact (stable: sorted keys, one trailing newline)."""
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def _read_sources(contracts_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(contracts_dir.glob("*.sol"))}


def compile_contracts(tools: Path, contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
    """Compile every ``.sol`` file in ``contracts_dir``; ``{contract name: artefact}``."""
    node = shutil.which("node")
    modules = tools / "node_modules"
    if node is None:
        raise CompileFailed("node is not on PATH (scripts/setup installs it)")
    if not (modules / "solc").is_dir() or not (modules / _OZ_PREFIX).is_dir():
        raise CompileFailed(f"{modules} lacks solc or {_OZ_PREFIX} (scripts/setup installs them)")
    sources = _read_sources(contracts_dir)
    if not sources:
        raise CompileFailed(f"no .sol files in {contracts_dir}")
    proc = subprocess.run(
        [node, "-e", _DRIVER, str(modules)],
        input=json.dumps(standard_input(sources)),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CompileFailed(f"node exited {proc.returncode}: {proc.stderr.strip()}")
    answer = json.loads(proc.stdout)
    version = str(answer["version"])
    if not version.startswith(SOLC_VERSION + "+"):
        raise CompileFailed(f"solc is {version}, the artefacts are built with {SOLC_VERSION}")
    return artifacts_from_output(version, answer["output"], sources)


def stale_artifacts(built: Mapping[str, Any], artifacts_dir: Path = ARTIFACTS_DIR) -> list[str]:
    """The artefact files that differ from ``built``: missing, changed, or with no contract behind them."""
    stale = []
    for name, artifact in sorted(built.items()):
        path = artifacts_dir / f"{name}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != encode_artifact(artifact):
            stale.append(path.name)
    stale += sorted(p.name for p in artifacts_dir.glob("*.json") if p.stem not in built)
    return stale


def _write(built: Mapping[str, Any], artifacts_dir: Path) -> None:
    for name, artifact in sorted(built.items()):
        (artifacts_dir / f"{name}.json").write_text(encode_artifact(artifact), encoding="utf-8")
    for path in artifacts_dir.glob("*.json"):
        if path.stem not in built:
            path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud_relay.chain.compile", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an artefact is stale")
    parser.add_argument("--tools", type=Path, default=default_tools(), help="directory holding node_modules")
    args = parser.parse_args(argv)
    try:
        built = compile_contracts(args.tools)
    except CompileFailed as exc:
        print(f"compile failed: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_artifacts(built)
        for name in stale:
            print(f"stale artefact: cloud_relay/chain/artifacts/{name}", file=sys.stderr)
        if stale:
            print("run: python -m cloud_relay.chain.compile", file=sys.stderr)
        return 1 if stale else 0
    _write(built, ARTIFACTS_DIR)
    print(f"wrote {len(built)} artefacts to {ARTIFACTS_DIR}: {', '.join(sorted(built))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
