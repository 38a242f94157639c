"""The ``btt-edge`` command line.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (taking the parsed arguments, returning the exit code). Heavy imports happen
inside ``func`` so that ``btt-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from edge.errors import EdgeError, ModelError
from protocol.errors import ProtocolError

__all__ = ["main"]

_COMMAND_MODULES = (
    "edge.cli.simulate",
    "edge.cli.run",
    "edge.cli.studies",
    "edge.cli.config_cmd",
    "edge.cli.provision",
    "edge.cli.receipts",
    "edge.cli.outbox",
    "edge.cli.results",
    "edge.cli.plan",
    "edge.cli.model",
    "edge.cli.analyze",
    "edge.cli.ota",
    "edge.cli.tui",
    "edge.cli.doctor",
    "edge.cli.capacity",
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="btt-edge", description="BTT Edge agent for dental X-ray units.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``btt-edge``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (EdgeError, ModelError, ProtocolError) as exc:
        print(f"btt-edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``btt-edge ... | head``): stop quietly, and keep Python's exit-time flush of
        # standard output from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
