"""``python -m asyncsess``: hands the command line to `asyncsess._cli.main`."""

from __future__ import annotations

import os
import sys

from ._cli import EXIT_INTERRUPTED, main

if __name__ == "__main__":
    status = main(sys.argv[1:])
    if status == EXIT_INTERRUPTED:
        # Ctrl-C outside stop_on_signals is a hard stop: an interrupted event loop
        # may never release its worker threads, so do not wait for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
