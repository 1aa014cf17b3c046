"""``batchgen sim``: serve the simulator until Ctrl-C or SIGTERM.

A thin edge over :func:`batchgen.sim.server.serve`: parse options into a
:class:`~batchgen.sim.config.SimConfig`, print the base URL on a line of its own (so
scripts can read it) and a line naming the active limits and faults, serve, exit 0.
``python -m batchgen.sim.cli`` runs it without the main CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from batchgen.fonts import CJK_PACKAGE_HINT, system_fonts
from batchgen.sim import config as sim_config
from batchgen.sim.server import SimServer, serve

__all__ = ["configure_parser", "main", "run_from_args"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``batchgen sim`` options to ``parser``."""
    sim_config.configure_parser(parser)


def run_from_args(ns: argparse.Namespace) -> int:
    """Serve the simulator the options describe; block until a signal; return the exit code.

    0 after Ctrl-C/SIGTERM, 2 for options that do not combine, 1 when the address
    cannot be bound.
    """
    try:
        config = sim_config.config_from_args(ns)
    except ValueError as exc:
        print(f"batchgen sim: {exc}", file=sys.stderr)
        return 2

    def announce(server: SimServer) -> None:
        print(server.base_url, flush=True)
        print(server.config.summary(), flush=True)
        if system_fonts().cjk is None:  # said once, before any image is drawn
            print(
                f"batchgen sim: no CJK font found, so Chinese prompts show as boxes in the"
                f" images: {CJK_PACKAGE_HINT}",
                file=sys.stderr,
            )

    try:
        serve(config, on_ready=announce)
    except OSError as exc:
        print(f"batchgen sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run; the exit code."""
    parser = argparse.ArgumentParser(
        prog="batchgen sim", description="Serve a local simulator of the CobabaAi API."
    )
    configure_parser(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
