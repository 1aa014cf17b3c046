"""Fixtures of the reliability suite: subprocess cleanup, the canary scan, the figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import CANARY_SCAN, FIGURES, Processes


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Subprocesses of one test; their process groups are killed at teardown, pass or fail."""
    processes = Processes()
    try:
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture(autouse=True)
def canary_guard(tmp_path: Path) -> Iterator[None]:
    """After each test, search everything it left in ``tmp_path`` for the canary key."""
    before = len(CANARY_SCAN.hits)
    yield
    CANARY_SCAN.scan_dir(tmp_path)
    new = CANARY_SCAN.hits[before:]
    assert not new, f"the canary API key leaked into: {new}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat every figure at the end of the run, ready to copy."""
    if FIGURES:
        terminalreporter.section("reliability figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
