"""The poll stage: asking the service about running tasks until they end.

The first poll of a task comes at the expected latency (learnt from the tasks seen
finishing, :func:`observe_latency`), the next ones when the reported progress predicts
the end, backing off (by 1.3 each time, capped) when it says nothing. A task that succeeded goes
to the download stage; errors and failed tasks go to :mod:`.policy`.
"""

from __future__ import annotations

import anyio

from batchgen.api.responses import TaskInfo
from batchgen.errors import BatchgenError
from batchgen.runner.policy import poll_failed, task_failed
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import fail, generated

__all__ = ["first_poll_delay", "next_poll_delay", "observe_latency", "poll_worker"]


def first_poll_delay(run: RunState) -> float:
    """When to poll a task just submitted."""
    if run.latency_ewma is None:
        return run.limits.first_poll
    return min(max(0.05, 0.9 * run.latency_ewma), 4 * run.limits.max_poll_interval)


def observe_latency(run: RunState, task: InFlight) -> None:
    """Learn when to poll first from a task just found finished."""
    latency = anyio.current_time() - task.submitted_mono
    if run.latency_ewma is None:
        run.latency_ewma = latency
    elif task.polls <= 1:
        # Done at its first poll: the real latency was shorter than observed, by an
        # unknown amount, so probe much earlier next time. Polls are free, and the
        # progress a running answer reports makes the next poll precise anyway.
        run.latency_ewma = 0.25 * min(run.latency_ewma, latency)
    else:
        run.latency_ewma = 0.8 * run.latency_ewma + 0.2 * latency


def next_poll_delay(run: RunState, task: InFlight, info: TaskInfo | None) -> float:
    """When to poll ``task`` again, given its last answer (``None``: no answer)."""
    elapsed = anyio.current_time() - task.submitted_mono
    cap = run.limits.max_poll_interval
    step = max(0.2, 0.05 * (run.latency_ewma or elapsed or 1.0)) * (1.3 ** min(task.polls, 20))
    if info is not None and 0 < info.progress < 100 and elapsed > 0:
        # Progress rises with time: aim just after the predicted end.
        predicted = elapsed * (100 - info.progress) / info.progress
        return min(cap, max(0.1, min(predicted + 0.05, max(step, predicted))))
    return min(cap, step)


async def poll_worker(run: RunState) -> None:
    """Poll the tasks the scheduler hands over, one at a time, until cancelled."""
    async with run.poll_recv.clone() as receive:
        async for task in receive:
            await _poll_one(run, task)


async def _poll_one(run: RunState, task: InFlight) -> None:
    assert task.remote_id is not None
    await run.poll_throttle.acquire()
    task.polls += 1
    try:
        info = await run.client.get_result(task.remote_id)
    except BatchgenError as exc:
        await poll_failed(run, task, exc, next_delay=next_poll_delay(run, task, None))
        return
    run.poll_throttle.on_success()
    if not info.status.terminal:
        # Timed out only after a poll that still says running (a task `retry`
        # sends back to running gets the poll it was promised).
        elapsed = anyio.current_time() - task.submitted_mono
        if elapsed > run.limits.task_timeout:
            await fail(
                run,
                task,
                "task_timeout",
                f"no result after {elapsed:,.0f}s (remote {task.remote_id})",
            )
            return
        run.schedule(next_poll_delay(run, task, info), "poll", task)
        return
    # A task the service finished is the round trip that grows the in-flight limit.
    run.inflight.on_success()
    if not task.adopted:  # an earlier run's task: its age says nothing of latency
        observe_latency(run, task)
    if info.succeeded:
        await generated(run, task, info.results, remote_id=task.remote_id)
        return
    await task_failed(run, task, info)
