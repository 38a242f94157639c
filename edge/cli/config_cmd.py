"""``btt-edge config check|show``: validate the configuration, or print the effective one as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``config`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("config", help="check or show the configuration")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate; exit 2 naming the first bad key or value")
    add_config_args(check)
    check.set_defaults(func=_check)
    show = actions.add_parser("show", help="print the effective configuration as JSON")
    add_config_args(show)
    show.set_defaults(func=_show)


def _check(args: argparse.Namespace) -> int:
    config_from_args(args)
    print("configuration ok")
    return 0


def _show(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(json.dumps(dataclasses.asdict(config), indent=2, default=lambda v: str(v) if isinstance(v, Path) else v))
    return 0
