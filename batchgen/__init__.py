"""batchgen: batch image generation through the CobabaAi API.

The library API: :func:`run` / :func:`arun` run (or resume) a job; :func:`load_spec`
reads and validates a spec; :class:`CobabaClient` speaks every route of the API. The
errors are in :mod:`batchgen.errors`, the simulator in :mod:`batchgen.sim`.

Names are imported on first use, so ``import batchgen`` (and the start of the
``batchgen`` command, which must react to Ctrl-C at once) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchgen.client import BearerAuth, CobabaClient, PlaygroundAuth, Timeouts
    from batchgen.errors import BatchgenError
    from batchgen.runner import RunHandle, RunOptions, RunSummary, arun, run
    from batchgen.spec import Spec, load_spec

__version__ = "0.1.0"

__all__ = [
    "BatchgenError",
    "BearerAuth",
    "CobabaClient",
    "PlaygroundAuth",
    "RunHandle",
    "RunOptions",
    "RunSummary",
    "Spec",
    "Timeouts",
    "__version__",
    "arun",
    "load_spec",
    "run",
]

_HOMES = {
    "BatchgenError": "batchgen.errors",
    "BearerAuth": "batchgen.client",
    "CobabaClient": "batchgen.client",
    "PlaygroundAuth": "batchgen.client",
    "Timeouts": "batchgen.client",
    "RunHandle": "batchgen.runner",
    "RunOptions": "batchgen.runner",
    "RunSummary": "batchgen.runner",
    "arun": "batchgen.runner",
    "run": "batchgen.runner",
    "Spec": "batchgen.spec",
    "load_spec": "batchgen.spec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
