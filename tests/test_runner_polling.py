"""Polling and the task routes, end to end against the simulator over loopback HTTP.

Rate-limited and hung polls, the first-poll estimate, a retry after a task timeout,
every answer shape the protocol allows, and the webhook-style routes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchgen.ledger.report import retry_tasks
from batchgen.sim import running_simulator
from batchgen.spec.load import load_spec
from tests.conftest import SimFactory
from tests.runner_helpers import (
    ledger_rows,
    run_job,
    sim_config,
    stats,
    subjects_spec,
)

pytestmark = pytest.mark.anyio

SUBJECTS = [f"s{i:02d}" for i in range(10)]


# --- polls ---------------------------------------------------------------------------


async def test_poll_rate_limits_are_waited_out(tmp_path: Path, sim_factory: SimFactory) -> None:
    """429s on polls slow polling down but fail nothing and cost nothing."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:8])
    async with sim_factory(sim_config(poll_rpm=300)) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["rate_limited"] >= 1
    assert summary.this_run["poll_rate_limited"] >= 1
    assert after["submissions_charged"] == 8


async def test_hung_polls_time_out_and_are_retried(tmp_path: Path, sim_factory: SimFactory) -> None:
    """A poll that never answers times out (limits.poll_timeout) and the task is polled again."""
    # One task at a time, each finished at once: the seeded draws always hit the same polls.
    instant = [f"{s} [sim:latency=0]" for s in SUBJECTS[:6]]
    spec_path = subjects_spec(tmp_path, instant[:4], limits="poll_timeout: 0.2\nconcurrency: 1")
    # Seed 3 hangs exactly one poll (each more adds a growing poll backoff).
    async with sim_factory(sim_config(poll_hang_rate=0.3, seed=3)) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["polls_hung"] == 1
    assert after["submissions_charged"] == 4


async def test_one_slow_task_does_not_slow_the_polling_of_fast_ones(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """After one slow task, instant tasks are still collected promptly: the first-poll
    estimate recovers as soon as tasks finish faster."""
    subjects = ["slow [sim:latency=0.6]", *(f"{s} [sim:latency=0]" for s in SUBJECTS[:3])]
    spec_path = subjects_spec(tmp_path, subjects, limits="concurrency: 1")
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0
    rows = await ledger_rows(spec_path)
    waits = sorted(
        r.finished_at - r.submitted_at
        for r in rows
        if "latency=0]" in r.prompt and r.finished_at and r.submitted_at
    )
    assert len(waits) == 3
    assert waits[1] < 0.3, waits


# --- protocol variants -------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"status_style": "upper"}, id="upper"),
        pytest.param({"status_style": "success"}, id="success"),
        pytest.param({"wrap_async": True}, id="wrap-async"),
        pytest.param({"single_url": True}, id="single-url"),
    ],
)
async def test_protocol_variants_finish_the_job(
    tmp_path: Path, sim_factory: SimFactory, variant: dict[str, object]
) -> None:
    """Every answer shape the protocol allows (status spellings, wrapped async answers, one
    url instead of results) gets the job done."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:3])
    async with sim_factory(sim_config(**variant)) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0
    assert summary.counts["done"] == 3


@pytest.mark.parametrize("endpoint", ["nano-banana", "draw-completions"])
async def test_other_task_routes_finish_the_job(
    tmp_path: Path, sim_factory: SimFactory, endpoint: str
) -> None:
    """The webhook-style routes (nano-banana, draw-completions) submit, poll and save too."""
    model = "gpt-image-2" if endpoint == "draw-completions" else "nano-banana-fast"
    spec_path = subjects_spec(
        tmp_path, SUBJECTS[:3], model=model, extra=f"api:\n  endpoint: {endpoint}"
    )
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    route = "/v1/draw/completions" if endpoint == "draw-completions" else "/v1/draw/nano-banana"
    assert after["requests_by_route"][f"POST {route}"] == 3


# --- timeouts and cancellation -----------------------------------------------------------


async def test_retry_after_a_task_timeout_polls_again(tmp_path: Path) -> None:
    """A task failed with task_timeout and sent back by `retry --failed` is polled once more
    and collected if the service finished it meanwhile, without a new charge."""
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    spec_path = subjects_spec(tmp_path, ["slow [sim:latency=60]"], limits="task_timeout: 0.3")
    async with running_simulator(sim_config(), clock=clock) as sim:
        first = await run_job(spec_path, sim)
        assert first.failures_by_code == {"task_timeout": 1}
        offset += 120.0  # the service finished the task meanwhile
        lines = await retry_tasks(load_spec(spec_path), failed=True, unknown=False)
        assert lines == ["failed: 0 to resubmit, 0 to download again, 1 to poll again"]
        polls = stats(sim)["requests_by_route"]["POST /v1/draw/result"]
        second = await run_job(spec_path, sim)
        after = stats(sim)
    assert after["requests_by_route"]["POST /v1/draw/result"] > polls
    assert second.exit_code == 0
    assert after["submissions_charged"] == 1
