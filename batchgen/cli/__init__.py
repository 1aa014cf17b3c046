"""The ``batchgen`` command: a thin edge over the library.

The CLI owns what only a terminal needs: each command parses its arguments, awaits one
library call, and turns a library error into one line on stderr and an exit code: 0
all done, 1 some tasks failed or are unknown (or another run error), 2 bad spec or
usage, 3 authentication or configuration, 130 interrupted. Only this package prints,
and only :mod:`.hooks` knows about tqdm.

- :mod:`.entry`: the console script, which reacts to Ctrl-C before the heavy imports;
- :mod:`.app`: the parser, :func:`~batchgen.cli.app.main`, logging setup and the
  one-line error reports;
- :mod:`.hooks`: the progress hooks of ``run`` (tqdm bars, status lines, JSON, quiet);
- :mod:`.args`: what every command does with its arguments first (load SPEC);
- the commands by theme: :mod:`.spec_commands` (``validate``, ``plan``, ``schema``),
  :mod:`.run_commands` (``run``, ``lock``, ``sim``), :mod:`.ledger_commands` (``status``,
  ``retry``, ``export``). ``gallery`` is :mod:`batchgen.gallery.build`'s own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchgen.cli.entry import entrypoint

if TYPE_CHECKING:
    from batchgen.cli.app import build_parser, main

__all__ = ["build_parser", "entrypoint", "main"]

# The parser and main() pull in every command (anyio and more): they are imported on
# first use, so the console script (batchgen.cli.entry, inside this package) installs
# its Ctrl-C handler before those imports, as batchgen/__init__.py does for the library.
_HOMES = {"build_parser": "batchgen.cli.app", "main": "batchgen.cli.app"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchgen.cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
