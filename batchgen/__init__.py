"""batchgen: batch image generation through the CobabaAi API.

The library API: :func:`run` / :func:`arun` run (or resume) a job; :func:`load_spec`
reads and validates a spec; :class:`CobabaClient` speaks every route of the API. The
errors are in :mod:`batchgen.errors`, the simulator in :mod:`batchgen.sim`.
"""

from __future__ import annotations

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
