"""Options every sub-command shares: where the configuration comes from and the data directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge.config import ENV_PREFIX, AgentConfig, load_config, with_overrides

__all__ = ["DEFAULT_CONFIG_PATH", "add_config_args", "config_from_args"]

DEFAULT_CONFIG_PATH = Path("/etc/btt-edge/edge.toml")
"""Read when it exists and neither ``--config`` nor ``BTT_EDGE_CONFIG`` names another file."""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--data-dir``."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML configuration (default: ${ENV_PREFIX}CONFIG, else {DEFAULT_CONFIG_PATH} "
        "if it exists, else built-in defaults)",
    )
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="override agent.data_dir")


def config_from_args(args: argparse.Namespace, **sections: dict[str, object]) -> AgentConfig:
    """Load the configuration named by ``args`` and apply ``--data-dir`` and any other ``sections``."""
    path: Path | None = args.config
    if path is None and os.environ.get(f"{ENV_PREFIX}CONFIG"):
        path = Path(os.environ[f"{ENV_PREFIX}CONFIG"])
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    config = load_config(path)
    agent = dict(sections.pop("agent", {}))
    if args.data_dir is not None:
        agent["data_dir"] = str(args.data_dir.resolve())
    return with_overrides(config, agent=agent, **sections)
