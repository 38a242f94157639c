"""``btt-relay``: the cloud relay's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``btt-relay``."""
    parser = argparse.ArgumentParser(prog="btt-relay", description="BTT Edge cloud relay.")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.parse_args(argv)
    print("btt-relay: no commands yet; the relay is built under the sync issue (#6)", file=sys.stderr)
    return 2
