"""The submit stage: from a pending task to a remote id the service is working on.

A submit worker takes a task from the work queue, checks the budget and the blocked
models, takes a slot of the adaptive in-flight limit, waits for the shared throttle,
commits ``submitting`` (with the attempt number) *before* the request leaves, sends
it, and commits the remote id as soon as the answer arrives. The path from intent to
recorded answer is shielded: a Ctrl-C gives it the stop grace to finish, an abort
cuts it and records what is known. Errors go to :func:`.policy.submission_failed`.
"""

from __future__ import annotations

import time

import anyio

from batchgen.api.responses import ImagesResult, Submission
from batchgen.errors import BatchgenError
from batchgen.ledger.schema import TaskState, Transition
from batchgen.runner.policy import submission_failed
from batchgen.runner.poll import first_poll_delay
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import generated, to_unknown

__all__ = ["submit_worker"]


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
    if run.over_budget(row.price):
        run.budget_skipped += 1
        if run.budget_skipped == 1:
            run.message(
                "warning",
                f"budget {run.limits.budget:g} reached: no more submissions; the rest"
                " stays pending (raise limits.budget and run again to continue)",
            )
            run.request_stop("budget", drain=True)
        run.settle(task)
        return
    await run.inflight.acquire()
    task.slot = True
    try:
        await run.throttle.acquire()
    except BaseException:
        run.release_slot(task)
        raise
    if run.stopping or run.over_budget(row.price) or row.model in run.blocked_models:
        # Things changed while this worker waited for its turn; look again.
        run.throttle.on_abandoned()
        run.throttle.bucket.refund()
        if run.stopping:
            run.settle(task)
        else:
            run.release_slot(task)
            run.queue.put_retry(task)
        return
    run.reserved += row.price
    # Shielded: a Ctrl-C must not cut the path from intent to recorded answer. A
    # stop gives it a deadline (the grace period), an abort cancels it.
    with anyio.CancelScope(shield=True) as shield:
        run.shields.add(shield)
        try:
            await _send(run, task)
        finally:
            run.shields.discard(shield)
            run.reserved -= row.price
    if shield.cancel_called and task.phase != "settled":
        with anyio.CancelScope(shield=True):
            await _interrupted(run, task)


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


async def _send(run: RunState, task: InFlight) -> None:
    row = task.row
    attempt = task.attempts + 1
    task.phase = "intent"
    await run.ledger.write(
        Transition(row.key, TaskState.SUBMITTING, attempts=attempt, detail=f"attempt {attempt}")
    )
    task.attempts = attempt
    run.snap.submitted += 1
    run.update()
    try:
        body = run.materialize(row.request)
        task.phase = "sent"
        task.sent_mono = anyio.current_time()
        result = await run.client.submit(row.endpoint, body)
    except BatchgenError as exc:
        task.phase = "answered"
        run.throttle.on_abandoned()
        await submission_failed(run, task, exc)
        task.phase = "settled"
        return
    task.phase = "answered"
    run.throttle.on_success(task.sent_mono)
    run.business_streak = ("", 0)
    run.charge(task)
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
                detail=f"remote id {result.task_id}",
            )
        )
        task.phase = "settled"
        run.update()
        run.schedule(first_poll_delay(run), "poll", task)
        return
    assert isinstance(result, ImagesResult)
    await generated(run, task, result.images, remote_id=None)
    task.phase = "settled"
