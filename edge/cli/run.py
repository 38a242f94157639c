"""``btt-edge run``: the agent in the foreground; SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``run`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("run", help="run the agent in the foreground")
    add_config_args(parser)
    parser.add_argument("--port", type=int, help="override dicom.port")
    parser.add_argument("--ae-title", help="override dicom.ae_title")
    parser.add_argument("--log-format", choices=("text", "json"), help="override agent.log_format")
    parser.add_argument("--serial", metavar="PATH", help="override unit.port (the unit's serial port)")
    parser.add_argument(
        "--mqtt", metavar="URL", help="override sync.url: the relay's broker, mqtts://host:8883 (else queue offline)"
    )
    parser.add_argument(
        "--forward",
        action="append",
        metavar="AE@HOST:PORT",
        help="send every result object (SR, overlay) to this DICOM destination; repeatable (sets results.forward)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    from edge.agent import build_agent, data_modes
    from runtime.logs import configure_logging

    config = config_from_args(
        args,
        agent={"log_format": args.log_format},
        dicom={"port": args.port, "ae_title": args.ae_title},
        unit={"port": args.serial},
        sync={"url": args.mqtt},
        results={"forward": args.forward},
    )
    # Before anything is created (the log file, the data directory, the database): what the agent writes is its
    # user's only (0700/0600), or its group's too with [agent] group_access (0750/0640), whatever umask it got.
    os.umask(data_modes(config).umask)
    agent = config.agent
    configure_logging(
        agent.log_format,
        agent.log_level,
        library_level=agent.log_third_party_level,
        log_file=Path(agent.log_file) if agent.log_file else None,
        max_bytes=agent.log_max_mb * 1024 * 1024,
        backups=agent.log_backups,
    )
    build_agent(config).run_until_signal()
    return 0
