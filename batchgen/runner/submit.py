"""The submit stage: from a pending task to a remote id the service is working on.

A submit worker takes a task from the work queue, checks the budget and the blocked
models, takes a slot of the adaptive in-flight limit, waits for the shared throttle,
commits ``submitting`` (with the attempt number) *before* the request leaves, sends
it, and commits the remote id as soon as the answer arrives. The path from intent to
recorded answer is shielded: a Ctrl-C gives it the stop grace to finish, an abort
cuts it and records what is known. Errors go to :func:`.policy.submission_failed`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import anyio

from batchgen.api.responses import ImagesResult, Submission, TaskInfo
from batchgen.errors import BatchgenError, RateLimitError
from batchgen.i18n import _
from batchgen.ledger.schema import TaskState, Transition
from batchgen.runner.policy import submission_failed
from batchgen.runner.poll import first_poll_delay, next_poll_delay, task_ended
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import generated, to_unknown
from batchgen.runner.window import UNKNOWN, outcome_of

__all__ = ["submit_worker"]

log = logging.getLogger("batchgen.runner")


async def submit_worker(run: RunState) -> None:
    """Submit tasks from the work queue until it is closed and empty."""
    while True:
        task = await run.queue.get()
        if task is None:
            return
        try:
            await _submit_one(run, task)
        except BaseException:
            if task.phase == "queued":  # cancelled before sending: still pending
                run.settle(task)
            raise


async def _submit_one(run: RunState, task: InFlight) -> None:
    row = task.row
    if row.model in run.blocked_models:
        # Already failed in the ledger (and counted) when the model was blocked.
        run.settle(task)
        return
    budget = run.budget
    if budget.due(run.spent, run.reserved, row.price):
        warning = await budget.read(run.spent)
        if warning is not None:
            run.message("warning", warning)
    if run.over_budget(row.price):
        run.budget_skipped += 1
        if run.budget_skipped == 1:
            run.message("warning", _budget_reached(run))
            run.request_stop("budget", drain=True)
        run.settle(task)
        return
    await run.inflight.acquire()
    task.slot = True
    try:
        task.permit = await run.throttle.acquire()
    except BaseException:
        run.release_slot(task)
        raise
    if budget.due(run.spent, run.reserved, row.price):
        warning = await budget.read(run.spent)
        if warning is not None:
            run.message("warning", warning)
    if run.stopping or run.over_budget(row.price) or row.model in run.blocked_models:
        # Things changed while this worker waited for its turn; look again.
        run.throttle.on_abandoned(task.permit)
        task.permit = None
        run.throttle.bucket.refund()
        if run.stopping:
            run.settle(task)
        else:
            run.release_slot(task)
            run.queue.put_retry(task)
        return
    run.reserved += row.price
    async with contextlib.AsyncExitStack() as stack:  # holds a stream open, if any
        # Shielded: a Ctrl-C must not cut the path from intent to recorded answer. A
        # stop gives it a deadline (the grace period), an abort cancels it.
        with anyio.CancelScope(shield=True) as shield:
            run.shields.add(shield)
            try:
                stream = await _send(run, task, stack)
            finally:
                run.shields.discard(shield)
                run.reserved -= row.price
        if shield.cancel_called and task.phase != "settled":
            with anyio.CancelScope(shield=True):
                await _interrupted(run, task)
        elif stream is not None:
            await _follow(run, task, *stream)


def _budget_reached(run: RunState) -> str:
    """Why submissions stop: which ceiling, by which measure."""
    budget = run.budget
    currency = run.limits.currency
    spent = f"{budget.committed(run.spent, run.reserved):.4f} {currency}"
    measured = budget.measured
    if measured is not None and measured > run.spent + 1e-9:
        spent += _(
            " (the service's usage counter says {measured:.4f}; batchgen estimated"
            " {estimated:.4f}; the counter counts all the key spent meanwhile, other"
            " runs and shards on the key included)"
        ).format(measured=measured, estimated=run.spent)
    if budget.cap is not None and (budget.limit is None or budget.cap < budget.limit):
        return _(
            "the key's balance would not cover another image (spent {spent}): no more"
            " submissions, nothing overdrawn; the rest stays pending (top up and run again)"
        ).format(spent=spent)
    return _(
        "budget {budget:g} {currency} reached (spent {spent}): no more submissions;"
        " the rest stays pending (raise limits.budget and run again to continue)"
    ).format(budget=budget.limit, currency=currency, spent=spent)


async def _interrupted(run: RunState, task: InFlight) -> None:
    """Record what is known of a submission cut short by a stop or an abort."""
    if task.phase == "sent":
        await to_unknown(run, task, "interrupted", "stopped before the answer came")
        return
    if task.phase == "answered" and task.remote_id:
        await run.ledger.write(
            Transition(
                task.key,
                TaskState.RUNNING,
                remote_id=task.remote_id,
                charged=task.charged,
                submitted_at=time.time(),
                detail=f"remote id {task.remote_id}",
            )
        )
    else:
        task.attempts = max(0, task.attempts - 1) if task.phase == "intent" else task.attempts
        await run.ledger.write(
            Transition(
                task.key,
                TaskState.PENDING,
                attempts=task.attempts,
                detail="stopped before sending",
            )
        )
    run.settle(task)


def _streams(run: RunState, task: InFlight) -> bool:
    """Whether this submission streams: one request per image, no polls.

    ``auto`` streams once the service has shown that it counts polls against its limit
    (a stream is one request per image, a submission and its polls at least two; see
    benchmarks/README.md, scenario 7, for the figures); it stays async otherwise.
    """
    reply = run.limits.reply
    if task.row.endpoint != "generate" or reply == "async":
        return False
    return reply == "stream" or run.limit.polls_counted is True


Stream = tuple[AsyncIterator[TaskInfo], TaskInfo]


async def _send(run: RunState, task: InFlight, stack: contextlib.AsyncExitStack) -> Stream | None:
    """Commit the intent, send, commit the answer. A stream is returned open, with its
    first frame, once its task id is committed."""
    row = task.row
    attempt = task.attempts + 1
    streaming = _streams(run, task)
    task.phase = "intent"
    await run.ledger.write(
        Transition(row.key, TaskState.SUBMITTING, attempts=attempt, detail=f"attempt {attempt}")
    )
    task.attempts = attempt
    run.snap.submitted += 1
    run.update()
    stream: Stream | None = None
    try:
        body = run.materialize(row.request)
        task.phase = "sent"
        task.sent_mono = anyio.current_time()
        if streaming:
            frames = await stack.enter_async_context(run.client.generate_stream(body))
            first = await anext(frames)
            stream = (frames, first)
            result: Submission | ImagesResult = Submission(task_id=first.id, status=first.status)
        else:
            result = await run.client.submit(row.endpoint, body)
    except BaseException as exc:
        if not isinstance(exc, BatchgenError):  # cancelled: it may have landed
            run.throttle.on_abandoned(task.permit, UNKNOWN)
            raise
        task.phase = "answered"
        run.limit.saw_server(run.client.server_version)
        if not isinstance(exc, RateLimitError):  # a 429 tells the throttle more (policy)
            run.throttle.on_abandoned(task.permit, outcome_of(exc))
        await submission_failed(run, task, exc)
        task.permit = None
        task.phase = "settled"
        return None
    task.phase = "answered"
    run.limit.saw_server(run.client.server_version)
    # A stream counts at the gateway when it ends: its slot stays taken until then.
    run.throttle.on_success(task.sent_mono, task.permit, hold=streaming)
    if not streaming:
        task.permit = None
    run.business_streak = ("", 0)
    run.charge(task)
    run.budget.since_read += 1
    run.snap.accepted += 1
    if isinstance(result, Submission):
        task.remote_id = result.task_id
        task.submitted_mono = anyio.current_time()
        await run.ledger.write(
            Transition(
                row.key,
                TaskState.RUNNING,
                remote_id=result.task_id,
                charged=task.charged,
                submitted_at=time.time(),
                error_code=None,
                error_message=None,
                detail=f"remote id {result.task_id}" + (" (stream)" if streaming else ""),
            )
        )
        task.phase = "settled"
        run.update()
        if stream is None:
            run.schedule(first_poll_delay(run), "poll", task)
        return stream
    assert isinstance(result, ImagesResult)
    await generated(run, task, result.images, remote_id=None)
    task.phase = "settled"
    return None


async def _follow(
    run: RunState, task: InFlight, frames: AsyncIterator[TaskInfo], info: TaskInfo
) -> None:
    """Read a stream to its last frame; a stream cut short falls back to polling."""
    try:
        while not info.status.terminal:
            task.last_running = (anyio.current_time() - task.submitted_mono, info.progress)
            info = await anext(frames)
    except BatchgenError as exc:
        # Cut (or garbled) after the id was recorded: the task may still be running.
        run.throttle.on_stream_end(task.permit)
        task.permit = None
        log.debug("stream of %s ended early (%s): polling it", task.remote_id, exc.code)
        run.schedule(next_poll_delay(run, task, None), "poll", task)
        return
    except BaseException:
        # A stop: the task runs on at the service. Polled by this run when it drains,
        # else by the next run (it is ``running`` in the ledger with its id).
        run.throttle.on_stream_end(task.permit)
        task.permit = None
        if run.draining:
            run.schedule(0.0, "poll", task)
        else:
            run.settle(task)
        raise
    run.throttle.on_stream_end(task.permit)
    task.permit = None
    await task_ended(run, task, info, exact=True)
