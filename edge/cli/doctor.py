"""``btt-edge doctor``: check this box and say what is wrong and how to fix it (exit 1 when something is)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from edge.cli.common import DEFAULT_CONFIG_PATH, add_config_args, config_from_args
from edge.config import ENV_PREFIX

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``doctor`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check configuration, ports, disk, model, keys, clock, broker, serial port; say how to fix"
    )
    add_config_args(parser)
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge.errors import ConfigError
    from edge.ops.doctor import Check, render, run_checks, summary

    source = str(args.config or os.environ.get(f"{ENV_PREFIX}CONFIG") or "")
    if not source:
        source = str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else "built-in defaults"
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        checks = [Check("configuration", "fail", str(exc), f"fix the key named in {source}, then run doctor again")]
    else:
        checks = list(run_checks(config, source))
    print(json.dumps(summary(checks), indent=1) if args.json else render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
