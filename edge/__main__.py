"""``python -m edge`` is ``btt-edge``."""

import sys

from edge.cli import main

sys.exit(main())
