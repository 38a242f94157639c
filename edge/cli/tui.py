"""``btt-edge tui``: the technician's terminal UI, attached to the running agent's control socket."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``tui`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "tui", help="terminal UI for technicians (needs the running agent)"
    )
    add_config_args(parser)
    parser.add_argument("--socket", type=Path, metavar="PATH", help="control socket (default: [control] socket_path)")
    parser.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS", help="refresh interval (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge.control import ControlClient
    from edge.tui import TechnicianApp

    config = config_from_args(args)
    path: Path = args.socket or config.control.path(config.agent.data_dir)
    with ControlClient(path) as client:
        client.call("ping")  # a clear error now rather than an empty screen
        TechnicianApp(client, refresh_s=max(0.2, args.refresh), where=str(path)).run()
    return 0
