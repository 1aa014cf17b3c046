"""Planning a 1,000,000-task matrix in bounded memory (slow; run with `make slow`)."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from batchgen.spec.load import load_spec
from batchgen.spec.matrix import count_tasks
from batchgen.spec.plan import format_plan, plan_summary

MEMORY_LIMIT = 150 * 1024 * 1024

BIG_SPEC = """\
version: 1
name: million
prompt: "a {subject} in the style of {style}"
repeat: 10
matrix:
  model: [nano-banana-fast, nano-banana]
  aspect_ratio: ["1:1", "16:9", "9:16", "4:3", "3:4"]
  subject: {from: subjects.txt}
  style: {from: styles.txt}
limits:
  max_tasks: 1000000
"""


@pytest.mark.slow
def test_plan_a_million_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 1,000,000-task spec is loaded, expanded and planned with peak memory under 150 MB."""
    (tmp_path / "subjects.txt").write_text("".join(f"subject {i}\n" for i in range(100)))
    (tmp_path / "styles.txt").write_text("".join(f"style {i}\n" for i in range(100)))
    path = tmp_path / "million.yaml"
    path.write_text(BIG_SPEC)

    started = time.perf_counter()
    spec = load_spec(path)
    loaded = time.perf_counter() - started
    assert count_tasks(spec) == 1_000_000

    started = time.perf_counter()
    summary = plan_summary(spec)
    planned = time.perf_counter() - started
    assert summary.total == 1_000_000
    format_plan(summary)

    # Peak memory of loading and planning, measured in a second pass: tracemalloc
    # slows Python down several times, so the timing above is taken without it.
    tracemalloc.start()
    try:
        traced = plan_summary(load_spec(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert traced.total == 1_000_000
    with capsys.disabled():
        print(
            f"\n1,000,000 tasks: load {loaded * 1000:.1f} ms, plan_summary {planned:.1f} s "
            f"({planned * 1e6 / 1_000_000:.1f} us/task), peak {peak / 2**20:.2f} MB (tracemalloc)"
        )
    assert peak < MEMORY_LIMIT
