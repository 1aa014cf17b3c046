"""The poll stage: asking the service about running tasks until they end.

When polls are free (the service does not count them against its limit) they are
spent on finishing fast: the first poll comes at the expected latency, learnt from
the tasks seen finishing, then the reported progress predicts the end, with a backoff
(by 1.3 each time, capped) when it says nothing. When the service shows that polls
count (a 429 on a poll), or may (a new-api gateway that has not said), each poll costs
a slot of its window, so they are spent on finding the task done: the first just
after the 95th percentile of the latencies seen (or, before any task finished, of
the ends that progress predicts), the next just after the end the progress predicts.
A task that succeeded goes to the download stage; errors and failed tasks go to
:mod:`.policy`.
"""

from __future__ import annotations

import anyio

from batchgen.api.responses import TaskInfo
from batchgen.errors import BatchgenError, RateLimitError
from batchgen.runner.policy import poll_failed, task_failed
from batchgen.runner.service_limit import POLL
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import fail, generated
from batchgen.runner.window import UNKNOWN, outcome_of

__all__ = [
    "first_poll_delay",
    "next_poll_delay",
    "observe_latency",
    "poll_worker",
    "task_ended",
]

#: Where the first poll aims when polls count (or may): almost every task is done by
#: then, so almost every task needs one poll; waiting a little costs nothing next to a
#: window.
FRUGAL_QUANTILE = 0.95
FRUGAL_MARGIN = 1.1
#: Seconds a poll may wait for its turn and still say when its task ended.
LATE_POLL = 0.5


def _frugal(run: RunState) -> bool:
    return run.limit.polls_frugal()


def first_poll_delay(run: RunState) -> float:
    """When to poll a task just submitted."""
    cap = 4 * run.limits.max_poll_interval
    if _frugal(run):
        aim = run.latencies.quantile(FRUGAL_QUANTILE)
        if aim is not None:
            return min(max(0.05, aim * FRUGAL_MARGIN), cap)
    if run.latency_ewma is None:
        return run.limits.first_poll
    return min(max(0.05, 0.9 * run.latency_ewma), cap)


def observe_latency(run: RunState, task: InFlight, *, exact: bool = False) -> None:
    """Learn when to poll first from a task just found finished (``exact``: seen
    ending, as a stream's last frame is, rather than found ended by a poll)."""
    latency = anyio.current_time() - task.submitted_mono
    if exact:
        run.latencies.add(latency)
    elif task.last_running[0] is not None:
        run.latencies.add(_estimate(task, latency))
    # Else it was done at its first poll: it took at most that long, which is no
    # sample (a first poll aimed at the samples would find every task done, and the
    # samples would grow with each generation).
    if run.latency_ewma is None:
        run.latency_ewma = latency
    elif task.polls <= 1 and not exact:
        # Done at its first poll: the real latency was shorter than observed, by an
        # unknown amount, so probe much earlier next time. Polls are free, and the
        # progress a running answer reports makes the next poll precise anyway.
        run.latency_ewma = 0.25 * min(run.latency_ewma, latency)
    else:
        run.latency_ewma = 0.8 * run.latency_ewma + 0.2 * latency


def _estimate(task: InFlight, observed: float) -> float:
    """The task's true latency: it ended after it was last seen running, by the time
    ``observed``; the progress seen then says where in between."""
    seen, progress = task.last_running
    if seen is None:
        return observed
    if progress > 0:
        return min(observed, max(seen, seen * 100 / progress))
    return (seen + observed) / 2


def next_poll_delay(run: RunState, task: InFlight, info: TaskInfo | None) -> float:
    """When to poll ``task`` again, given its last answer (``None``: no answer)."""
    elapsed = anyio.current_time() - task.submitted_mono
    cap = run.limits.max_poll_interval
    step = max(0.2, 0.05 * (run.latency_ewma or elapsed or 1.0)) * (1.3 ** min(task.polls, 20))
    if info is not None and 0 < info.progress < 100 and elapsed > 0:
        # Progress rises with time: aim just after the predicted end.
        predicted = elapsed * (100 - info.progress) / info.progress
        if _frugal(run):  # a poll that finds it running is a slot spent for nothing
            return min(cap, predicted + max(0.2, 0.1 * elapsed))
        return min(cap, max(0.1, min(predicted + 0.05, max(step, predicted))))
    return min(cap, step)


async def poll_worker(run: RunState) -> None:
    """Poll the tasks the scheduler hands over, one at a time, until cancelled."""
    async with run.poll_recv.clone() as receive:
        async for task in receive:
            await _poll_one(run, task)


async def _poll_one(run: RunState, task: InFlight) -> None:
    assert task.remote_id is not None
    if await _wait_for_scout(run, task):
        return
    try:
        await _ask(run, task)
    finally:
        if run.scout is task:  # its answer says when the others' tasks end
            run.scout = None
            run.scout_back.set()
            run.scout_back = anyio.Event()


async def _wait_for_scout(run: RunState, task: InFlight) -> bool:
    """Where polls are dear, a task's first poll goes when what is known now says it is
    done (its schedule was made with less). While nothing says yet how long tasks take,
    one task is polled (the scout) and the others wait for its answer, whose progress
    predicts their ends, instead of each spending a poll to learn the same thing.
    True: rescheduled."""
    if not _frugal(run) or task.polls:
        return False
    if run.latencies.quantile(FRUGAL_QUANTILE) is None:
        window = run.limit.window_for(POLL)
        if window is not None and window.next_free() > anyio.current_time():
            return False  # polls queue for the window: a scout's answer would come late
        if run.scout is None:
            run.scout = task
            return False
        await run.scout_back.wait()
    remaining = first_poll_delay(run) - (anyio.current_time() - task.submitted_mono)
    if remaining > 0.05:
        run.schedule(remaining, "poll", task)
        return True
    return False


async def _ask(run: RunState, task: InFlight) -> None:
    assert task.remote_id is not None
    permit = await run.poll_throttle.acquire()
    # A poll that went later than it was meant to (it waited for the service's window,
    # or for the scout) finds the task done later than it ended: its age is no latency.
    late = anyio.current_time() - task.poll_due > LATE_POLL
    task.polls += 1
    try:
        info = await run.client.get_result(task.remote_id)
    except BatchgenError as exc:
        if not isinstance(exc, RateLimitError):  # a 429 tells the throttle more (policy)
            run.poll_throttle.on_abandoned(permit, outcome_of(exc))
        delay = next_poll_delay(run, task, None)
        await poll_failed(run, task, exc, next_delay=delay, permit=permit)
        return
    except BaseException:
        run.poll_throttle.on_abandoned(permit, UNKNOWN)
        raise
    run.poll_throttle.on_success(permit=permit)
    run.limit.saw_server(run.client.server_version)
    if not info.status.terminal:
        await still_running(run, task, info)
        return
    await task_ended(run, task, info, late=late)


async def still_running(run: RunState, task: InFlight, info: TaskInfo) -> None:
    """A poll (or a cut stream) says the task runs: poll again, or give up on it."""
    # Timed out only after a poll that still says running (a task `retry` sends
    # back to running gets the poll it was promised).
    elapsed = anyio.current_time() - task.submitted_mono
    task.last_running = (elapsed, info.progress)
    if 0 < info.progress < 100:
        run.latencies.predict(elapsed * 100 / info.progress)
    if elapsed > run.limits.task_timeout:
        await fail(
            run,
            task,
            "task_timeout",
            f"no result after {elapsed:,.0f}s (remote {task.remote_id})",
        )
        return
    run.schedule(next_poll_delay(run, task, info), "poll", task)


async def task_ended(
    run: RunState, task: InFlight, info: TaskInfo, *, exact: bool = False, late: bool = False
) -> None:
    """The service says the task ended (a poll, or a stream's last frame: ``exact``;
    ``late``: found by a poll that waited for its turn, so its age says little)."""
    # A task the service finished is the round trip that grows the in-flight limit.
    run.inflight.on_success()
    if not task.adopted and not late:  # an earlier run's task: its age says nothing
        observe_latency(run, task, exact=exact)
    if info.succeeded:
        await generated(run, task, info.results, remote_id=task.remote_id)
        return
    await task_failed(run, task, info)
