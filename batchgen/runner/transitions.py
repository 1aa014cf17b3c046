"""The ledger transitions the stages share, each committed before the run acts on it.

Each function moves one task (or, for a blocked model, every pending task of it) to a
new state in the ledger, then updates the run's counters and hands the task on: back
to the submit stage, to the download stage, or settled for this run. Which transition
an error calls for is decided in :mod:`.policy`; the success paths live in their stage.
"""

from __future__ import annotations

import json
import time

from batchgen.api.responses import ResultImage
from batchgen.errors import BatchgenError
from batchgen.ledger.schema import TaskState, Transition
from batchgen.runner.pacing import BackoffPolicy, full_jitter
from batchgen.runner.state import InFlight, RunState

__all__ = [
    "LIMIT_META",
    "back_to_pending",
    "block_model",
    "fail",
    "generated",
    "park",
    "regenerate",
    "remember_limit",
    "resubmit_after_failure",
    "to_unknown",
]

#: Where the ledger keeps what the service said of its limit, for the next run.
LIMIT_META = "service_limit"


async def back_to_pending(
    run: RunState, task: InFlight, exc: BatchgenError, *, counted: bool
) -> None:
    """Not accepted: pending again; ``counted`` says whether the attempt counts."""
    if not counted:
        task.attempts -= 1
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.PENDING,
            attempts=task.attempts,
            error_code=exc.code,
            error_message=str(exc),
            detail=f"not accepted: {exc.code}",
        )
    )


async def park(run: RunState, task: InFlight, delay: float) -> None:
    """The service asked for longer than the run waits: pending until then; drain, stop."""
    run.parked += 1
    run.parked_delay = delay
    task.attempts -= 1
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.PENDING,
            attempts=task.attempts,
            next_at=time.time() + delay,
            error_code="parked",
            error_message=f"the service asked to wait {delay:,.0f}s",
            detail="parked",
        )
    )
    run.settle(task)
    if not run.stopping:
        hours = delay / 3600
        run.message(
            "warning",
            f"the service asked to wait {delay:,.0f}s ({hours:.1f} h), more than"
            f" limits.max_retry_after ({run.limits.max_retry_after:g}s): pending tasks are"
            " parked; run again later to continue",
        )
        run.request_stop("parked", drain=True)


async def block_model(run: RunState, task: InFlight, exc: BatchgenError) -> None:
    """The key may not use this model: fail its tasks, pending ones included; go on."""
    model = task.row.model
    first = model not in run.blocked_models
    run.blocked_models.add(model)  # before any await: other workers see it at once
    await fail(run, task, exc.code, str(exc))
    if not first:
        return
    count = await run.ledger.bulk_set_state(
        from_states=[TaskState.PENDING],
        to_state=TaskState.FAILED,
        detail=f"model {model} forbidden",
        where="model = ?",
        params=[model],
        in_run=True,
        error=(exc.code, f"model {model} is forbidden for this key"),
    )
    run.snap.failed += count
    run.message(
        "error",
        f"model {model} is forbidden for this key (403): {count + 1} of its tasks failed,"
        " the rest of the job goes on",
    )
    run.update()


async def to_unknown(run: RunState, task: InFlight, code: str, message: str) -> None:
    """The answer was lost: ``unknown`` (maybe charged); resubmitted only by policy."""
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.UNKNOWN,
            charged=task.charged,
            error_code=code,
            error_message=message,
            detail=f"answer lost: {code}",
        )
    )
    if run.limits.resubmit_unknown and not run.stopping:
        await run.ledger.write(
            Transition(task.key, TaskState.PENDING, detail="resubmit unknown (policy)")
        )
        run.retry_later(task, 0.0)
        return
    run.snap.unknown += 1
    run.update()
    run.settle(task)


async def fail(
    run: RunState, task: InFlight, code: str, message: str, *, refund: bool = False
) -> None:
    """Final: ``failed`` with its code (refunded by the service when ``refund``)."""
    if refund:
        run.refund(task)
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.FAILED,
            charged=task.charged,
            error_code=code,
            error_message=message,
            finished_at=time.time(),
            detail=f"failed: {code}",
        )
    )
    run.snap.failed += 1
    run.update()
    run.settle(task)


async def resubmit_after_failure(
    run: RunState, task: InFlight, code: str, message: str, *, refund: bool
) -> None:
    """The task failed (or vanished) at the service: pending again, or failed when out
    of attempts."""
    if refund:
        run.refund(task)
    if task.attempts >= run.limits.max_attempts:
        await fail(run, task, code, message)
        return
    task.remote_id = None
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.PENDING,
            remote_id=None,
            charged=task.charged,
            error_code=code,
            error_message=message,
            detail=f"resubmit: {code}",
        )
    )
    run.retry_later(task, full_jitter(BackoffPolicy(), task.attempts, run.rng))


async def generated(
    run: RunState, task: InFlight, images: tuple[ResultImage, ...], *, remote_id: str | None
) -> None:
    """The service made the images: ``downloading``, then to the download stage."""
    task.results = images
    urls = [img.url for img in images if img.url]
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.DOWNLOADING,
            urls=urls,
            error_code=None,
            error_message=None,
            detail=f"{len(images)} image(s) ready",
        )
    )
    run.release_slot(task)
    run.snap.generated += 1
    run.update()
    await run.dl_send.send(task)


async def regenerate(run: RunState, task: InFlight, message: str) -> None:
    """The images are gone before download (URL expired): pending, to be paid again."""
    if task.regenerations + 1 >= run.limits.max_attempts:
        # Each regeneration is paid for: a URL that is always gone by the time it
        # is fetched must not make the run pay forever.
        await fail(
            run,
            task,
            "url_expired",
            f"result URL expired {task.regenerations + 1} times; giving up ({message})",
        )
        return
    task.regenerations += 1
    task.remote_id = None
    task.results = ()
    run.snap.regenerated += 1
    warn = run.snap.regenerated <= 3  # decided before the await: workers race here
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.PENDING,
            remote_id=None,
            urls=None,
            regenerations=task.regenerations,
            error_code="url_expired",
            error_message=message,
            detail="result URL expired: regenerate",
        )
    )
    if warn:
        run.message("warning", f"a result URL expired before download; regenerating ({message})")
    if run.stopping:
        run.settle(task)
        return
    run.snap.retried += 1
    run.queue.put_retry(task)


async def remember_limit(run: RunState) -> None:
    """Keep what the run learnt of the service's limit in the ledger (when it changed),
    so the next run of the job paces to it from its first request."""
    limit = run.limit
    if limit.version == run.limit_saved:
        return
    run.limit_saved = limit.version
    meta = limit.to_meta()
    if meta is not None:
        meta["base_url"] = run.client.base_url
        await run.ledger.set_meta(LIMIT_META, json.dumps(meta, sort_keys=True))
