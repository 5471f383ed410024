"""``python -m asyncsess``: hands the command line to `asyncsess._cli.main`."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
