"""The library's public names stay where users find them, whatever the layout inside."""

from __future__ import annotations

import inspect

import batchgen
import batchgen.errors
import batchgen.sim

PUBLIC = [
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


def test_all_is_pinned_and_sorted() -> None:
    """``batchgen.__all__`` is exactly the documented public API, sorted."""
    assert batchgen.__all__ == PUBLIC


def test_every_public_name_resolves() -> None:
    """Each name of ``__all__`` is importable from ``batchgen`` itself."""
    for name in PUBLIC:
        assert getattr(batchgen, name) is not None, name


def test_run_stays_the_function_after_the_runner_is_imported() -> None:
    """Importing the runner's modules never replaces ``batchgen.run`` with a module."""
    import batchgen.runner.job

    assert inspect.isfunction(batchgen.run)
    assert inspect.iscoroutinefunction(batchgen.arun)


def test_errors_and_simulator_entry_points() -> None:
    """The error tree and the in-process simulator keep their documented homes."""
    for name in ("APIError", "AuthenticationError", "RateLimitError", "SpecError", "redact"):
        assert name in batchgen.errors.__all__
    assert callable(batchgen.sim.running_simulator)
