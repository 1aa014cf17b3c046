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
    from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts
    from batchgen.api.client import CobabaClient
    from batchgen.errors import BatchgenError
    from batchgen.runner.job import RunHandle, RunOptions, arun, run
    from batchgen.runner.summary import RunSummary
    from batchgen.spec.load import Spec, load_spec

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
    "BearerAuth": "batchgen.api.auth",
    "CobabaClient": "batchgen.api.client",
    "PlaygroundAuth": "batchgen.api.auth",
    "Timeouts": "batchgen.api.auth",
    "RunHandle": "batchgen.runner.job",
    "RunOptions": "batchgen.runner.job",
    "RunSummary": "batchgen.runner.summary",
    "arun": "batchgen.runner.job",
    "run": "batchgen.runner.job",
    "Spec": "batchgen.spec.load",
    "load_spec": "batchgen.spec.load",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
