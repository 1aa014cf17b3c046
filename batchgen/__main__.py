"""``python -m batchgen`` and the ``batchgen`` console script."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    print("batchgen: interrupted", file=sys.stderr)
    raise SystemExit(130)


def entrypoint() -> None:
    """Run the CLI. Ctrl-C while it is still starting exits 130 with one line."""
    # Installed before the heavy imports; `run` replaces it with its own handling.
    signal.signal(signal.SIGINT, _interrupted)
    from batchgen.cli import main

    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
