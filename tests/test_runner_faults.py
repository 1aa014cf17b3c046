"""The runner under the simulator's faults, over loopback HTTP, in-process.

429 storms (with and without Retry-After, a tight bucket), a long Retry-After (parking),
5xx bursts and an outage, expiring URLs and truncated downloads. Each fault is switched
on and off through the simulator's live config, from a progress-hook trigger when
timing matters.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from batchgen.ledger.schema import TaskState
from batchgen.runner.job import RunHandle
from tests.conftest import SimFactory
from tests.runner_helpers import (
    RecordingHook,
    files_under,
    ledger_rows,
    open_ledger,
    output_dir,
    run_job,
    sim_config,
    stats,
    subjects_spec,
    truncate_first_downloads,
)

pytestmark = pytest.mark.anyio

SUBJECTS = [f"s{i:02d}" for i in range(40)]

# --- 429 storms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"busy_rate": 0.3}, id="retry-after-seconds"),
        pytest.param({"busy_rate": 0.3, "retry_after_format": "date"}, id="retry-after-date"),
        pytest.param({"busy_rate": 0.3, "retry_after": False}, id="no-retry-after"),
        pytest.param({"busy_rate": 0.3, "retry_after": False, "empty_429": True}, id="empty-429"),
    ],
)
async def test_429_storm_finishes_and_charges_each_task_once(
    tmp_path: Path, sim_factory: SimFactory, faults: dict[str, object]
) -> None:
    """Random 429s on submission (with or without Retry-After) are retried until every task
    is done, and the service charged each task exactly once."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:8])
    async with sim_factory(sim_config(**faults)) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert summary.counts["done"] == 8
    assert after["busy_injected"] >= 1
    assert summary.this_run["rate_limited"] == after["rate_limited"]
    assert after["submissions_charged"] == 8
    assert after["charges_by_key"] == {"key#1": 8}
    for row in await ledger_rows(spec_path):
        assert row.attempts == 1  # a 429 is not an attempt: the service took nothing


async def test_tight_bucket_is_discovered_and_every_task_charged_once(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Against a 240 rpm, burst 2 limit and no configured rate, the runner paces itself
    from the 429s, finishes, and pays once per task."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:6])
    async with sim_factory(sim_config(rpm=240, burst=2)) as sim:  # under the 10/s probe
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["rate_limited"] >= 1
    assert after["submissions_charged"] == 6
    assert summary.this_run["rpm"] is not None


async def test_a_configured_rate_under_the_limit_sees_no_429(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """With limits.requests_per_minute under the service's bucket, no submission is refused."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:10], limits="requests_per_minute: 300\nburst: 2")
    async with sim_factory(sim_config(rpm=600, burst=2)) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["rate_limited"] == 0
    assert after["submissions_charged"] == 10


async def test_a_retry_after_past_the_maximum_parks_the_run(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A Retry-After longer than limits.max_retry_after parks the tasks (pending, no attempt
    used) and stops with a message; the next run finishes them, each charged once."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:6], limits="max_retry_after: 30")
    async with sim_factory(sim_config(busy_rate=1.0, retry_after_value=3600)) as sim:
        hook = RecordingHook()
        parked = await run_job(spec_path, sim, hook=hook)
        assert parked.stop_reason == "parked"
        assert parked.exit_code == 1
        assert parked.counts["pending"] == 6
        assert parked.this_run["parked"] >= 1
        assert any("max_retry_after" in t for t in hook.texts("warning"))
        assert any("parked" in m for m in parked.messages)
        assert all(r.attempts == 0 for r in await ledger_rows(spec_path))
        sim.config.busy_rate = 0.0
        resumed = await run_job(spec_path, sim)
        after = stats(sim)
    assert resumed.exit_code == 0
    assert after["submissions_charged"] == 6


# --- 5xx -------------------------------------------------------------------------------


async def test_random_5xx_are_retried_until_done(tmp_path: Path, sim_factory: SimFactory) -> None:
    """500/502 answers to submissions (never charged) are retried; every task ends done."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:6])
    async with sim_factory(sim_config(error_rate=0.3)) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["errors_injected"] >= 1
    assert after["submissions_charged"] == 6
    assert summary.this_run["retried"] >= after["errors_injected"]


async def test_an_outage_does_not_use_up_attempts(tmp_path: Path, sim_factory: SimFactory) -> None:
    """While every submission gets a 5xx the circuit breaker holds the tasks back: failures
    past the breaker's threshold are the outage's, so with max_attempts 2 a task that saw two
    5xx still finishes once the service is back."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:3], limits="max_attempts: 2\nconcurrency: 3")
    async with sim_factory(sim_config(error_rate=1.0)) as sim:
        hook = RecordingHook()

        def recover() -> None:
            sim.config.error_rate = 0.0

        hook.on(lambda s: stats(sim)["errors_injected"] >= 4, recover)
        summary = await run_job(spec_path, sim, hook=hook)
        after = stats(sim)
    assert summary.exit_code == 0, summary.failures_by_code
    assert after["errors_injected"] >= 4  # more 5xx than 3 tasks x (max_attempts - 1)
    assert after["submissions_charged"] == 3
    async with open_ledger(spec_path) as ledger:
        refusals = []
        for row in await ledger_rows(spec_path):
            assert row.state is TaskState.DONE
            assert row.attempts <= 2
            events = await ledger.events_for(row.key)
            refusals.append(sum(1 for _, _, d in events if d == "not accepted: upstream_error"))
    assert max(refusals) >= 2


async def test_one_burst_of_concurrent_5xx_does_not_stall_the_run(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A single burst of 5xx hitting every submission in flight costs about one breaker step
    (about a second), not a pause that doubles per request of the burst."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:8], limits="concurrency: 8")
    handle = RunHandle()
    async with sim_factory(sim_config(error_rate=1.0)) as sim:
        hook = RecordingHook()

        def recover() -> None:
            sim.config.error_rate = 0.0

        # The runner paces an unknown rate from 10/s up, so the burst is the requests
        # out when the breaker opens (its threshold is 3).
        hook.on(lambda s: stats(sim)["errors_injected"] >= 3, recover)
        async with anyio.create_task_group() as tg:

            async def watchdog() -> None:
                await anyio.sleep(3.5)  # a deadline, not a wait for something to happen
                handle.interrupt()

            tg.start_soon(watchdog)
            summary = await run_job(spec_path, sim, hook=hook, handle=handle)
            tg.cancel_scope.cancel()
    assert summary.stop_reason is None
    assert summary.exit_code == 0


# --- downloads -----------------------------------------------------------------------


async def test_expired_urls_are_regenerated(tmp_path: Path, sim_factory: SimFactory) -> None:
    """A result URL that expired before its download is regenerated (a new task, a new
    charge), counted in this_run["regenerated"], and the job still finishes."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:6])
    async with sim_factory(sim_config(url_ttl=0.0)) as sim:
        hook = RecordingHook()

        def urls_live_again() -> None:
            sim.config.url_ttl = 7200.0

        hook.on(lambda s: s.regenerated >= 1, urls_live_again)
        summary = await run_job(spec_path, sim, hook=hook)
        after = stats(sim)
    assert summary.exit_code == 0
    regenerated = summary.this_run["regenerated"]
    assert regenerated >= 1
    assert after["downloads_expired"] == regenerated
    assert after["submissions_charged"] == 6 + regenerated
    rows = await ledger_rows(spec_path)
    assert sum(r.regenerations for r in rows) == regenerated
    assert all(r.state is TaskState.DONE for r in rows)


async def test_many_expired_urls_at_once_still_say_so(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """When many URLs expire at once (files lost, URLs gone), the run still warns that it is
    regenerating them."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:12])
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        for image in files_under(output_dir(spec_path), ".png"):
            image.unlink()
        sim.config.url_ttl = 0.0
        hook = RecordingHook()

        def urls_live_again() -> None:
            sim.config.url_ttl = 7200.0

        hook.on(lambda s: s.accepted >= 1, urls_live_again)
        summary = await run_job(spec_path, sim, hook=hook)
    assert summary.exit_code == 0
    assert summary.this_run["regenerated"] == 12
    assert any("expired" in t for t in hook.texts("warning")), hook.messages


async def test_regeneration_is_bounded(tmp_path: Path, sim_factory: SimFactory) -> None:
    """A task whose result URL always expires is regenerated at most max_attempts times, then
    failed with url_expired, so the run ends and spends a bounded amount."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:1], limits="max_attempts: 3")
    handle = RunHandle()
    hook = RecordingHook()
    hook.on(lambda s: s.regenerated >= 10, handle.interrupt)  # the safety valve of this test
    async with sim_factory(sim_config(url_ttl=0.0)) as sim:
        summary = await run_job(spec_path, sim, hook=hook, handle=handle)
        after = stats(sim)
    assert summary.stop_reason is None
    assert summary.failures_by_code == {"url_expired": 1}
    assert after["submissions_charged"] <= 3


async def test_truncated_downloads_are_retried_without_leftovers(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Downloads cut at half are fetched again (no new charge); every task ends done and no
    partial file is left in the output tree."""
    spec_path = subjects_spec(tmp_path, SUBJECTS[:4])
    async with sim_factory(sim_config()) as sim:
        truncate_first_downloads(sim, 3)
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    out = output_dir(spec_path)
    assert summary.exit_code == 0
    assert after["downloads_truncated"] == 3
    assert after["submissions_charged"] == 4
    assert not files_under(out, ".part")
    assert not [p for p in out.rglob(".*") if p.name != ".metadata.jsonl.tmp"]
    assert len(files_under(out, ".png")) == 4
