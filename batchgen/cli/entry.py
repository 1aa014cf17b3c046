"""The console script (``batchgen.__main__:entrypoint``): Ctrl-C works from the start.

Only the standard library is imported here; the CLI itself is imported once the
handler is in place.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

__all__ = ["entrypoint"]


def _interrupted(signum: int, frame: FrameType | None) -> None:
    print("batchgen: interrupted", file=sys.stderr)
    raise SystemExit(130)


def entrypoint() -> None:
    """Run the CLI. Ctrl-C while it is still starting exits 130 with one line."""
    # Installed before the heavy imports; `run` replaces it with its own handling.
    signal.signal(signal.SIGINT, _interrupted)
    from batchgen.cli.app import main

    sys.exit(main())
