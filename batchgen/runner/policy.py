"""The one place where an error becomes a task's next state.

Every decision reads only the error's class, its ``accepted`` and ``retryable`` flags
and its ``code``, following the service's error table. The stages catch errors and
call the function of this module for their stage; the functions pick a transition of
:mod:`.transitions` and tell the shared pacing what happened.

=========  ==========================================  =====================================
stage      error                                       what happens to the task
=========  ==========================================  =====================================
submit     ``accepted`` is not NO (the answer was      ``unknown``, counted as charged; never
           lost after the request left)                resubmitted silently
submit     AuthenticationError (401)                   pending (attempt not counted); the run
                                                       stops with the error
submit     RateLimitError (429)                        pending (not counted), retried after
                                                       the shared cooldown; parked when the
                                                       service asks for more than
                                                       ``max_retry_after``
submit     PermissionDeniedError (403)                 failed, with every pending task of the
                                                       model; the rest of the job goes on
submit     other retryable (5xx, refused connection)   pending, retried with backoff; counted
                                                       unless the service is down (breaker)
submit     BusinessError (HTTP 200, code != 0)         pending, retried; the same refusal
                                                       three times in a row stops the run
submit     any other error (4xx)                       failed
poll       TaskNotFoundError                           resubmitted (refunded)
poll       RateLimitError                              polled again later; parked → stop
poll       AuthenticationError                         the run stops; the task stays running
poll       any other error                             polled again with backoff
poll       task failed, moderation (final reason)      failed (refunded)
poll       task failed, other reason                   resubmitted (refunded)
download   ResultExpiredError                          regenerated (pending, paid again)
download   other retryable DownloadError               downloaded again with backoff, then
                                                       failed
download   ConfigError, final DownloadError            failed
download   OSError (disk full, unwritable)             the run stops; the task stays
                                                       ``downloading``
=========  ==========================================  =====================================
"""

from __future__ import annotations

import logging

from batchgen.api.responses import TaskInfo
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    AuthenticationError,
    BatchgenError,
    BusinessError,
    ConfigError,
    DownloadError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ResultExpiredError,
    TaskNotFoundError,
)
from batchgen.i18n import _
from batchgen.runner.pacing import BackoffPolicy, ParkedError, full_jitter
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import (
    back_to_pending,
    block_model,
    fail,
    park,
    regenerate,
    remember_limit,
    resubmit_after_failure,
    to_unknown,
)
from batchgen.runner.window import Permit

__all__ = ["download_failed", "poll_failed", "submission_failed", "task_failed"]

log = logging.getLogger("batchgen.runner")

#: Codes that refuse a model (not a task): every task of the model would get the same.
MODEL_REFUSALS = frozenset({"model_price_error"})


async def submission_failed(run: RunState, task: InFlight, exc: BatchgenError) -> None:
    """A submission ended in ``exc``; the caller already told the throttle it was
    abandoned (the outcome is reported here)."""
    if exc.accepted is not Accepted.NO:
        # The service may have taken it: never resubmit silently.
        run.charge(task)
        await to_unknown(run, task, exc.code, str(exc))
        return
    if isinstance(exc, AuthenticationError | AccessDeniedError | QuotaExceededError):
        # The key, where it is used from, or the credit: nothing else would be accepted.
        await back_to_pending(run, task, exc, counted=False)
        run.settle(task)
        run.fail_run(exc)
        return
    if isinstance(exc, RateLimitError):
        try:
            run.throttle.on_rate_limited(
                exc.retry_after,
                task.sent_mono,
                limit=exc.limit,
                empty=exc.empty,
                server=exc.server,
                permit=task.permit,
            )
        except ParkedError as parked:
            await park(run, task, parked.delay)
            return
        # Under the service's own window a 429 is not congestion: the window paces.
        if not run.throttle.windowed and run.inflight.on_congestion():
            run.update()
        await remember_limit(run)
        await back_to_pending(run, task, exc, counted=False)
        run.update()
        run.retry_later(task, 0.0)
        return
    if isinstance(exc, PermissionDeniedError) or exc.code in MODEL_REFUSALS:
        await block_model(run, task, exc)
        return
    if exc.retryable:
        counted = run.throttle.on_failure()
        if counted and task.attempts >= run.limits.max_attempts:
            await fail(run, task, exc.code, str(exc))
            return
        await back_to_pending(run, task, exc, counted=counted)
        delay = full_jitter(BackoffPolicy(base=1.0, cap=30.0), task.attempts, run.rng)
        run.retry_later(task, delay)
        return
    run.throttle.on_success(task.sent_mono, record=False)  # the service answered: it is up
    if isinstance(exc, BusinessError):
        # Often the account's problem (no credits), not the task's: the task stays
        # pending, and the same refusal three times in a row stops the run.
        code, streak = run.business_streak
        streak = streak + 1 if code == exc.code else 1
        run.business_streak = (exc.code, streak)
        if streak >= 3:
            await back_to_pending(run, task, exc, counted=False)
            run.settle(task)
            run.fail_run(exc)
            return
        if task.attempts < run.limits.max_attempts:
            await back_to_pending(run, task, exc, counted=True)
            run.retry_later(task, full_jitter(BackoffPolicy(), task.attempts, run.rng))
            return
    await fail(run, task, exc.code, str(exc))


async def poll_failed(
    run: RunState,
    task: InFlight,
    exc: BatchgenError,
    *,
    next_delay: float,
    permit: Permit | None = None,
) -> None:
    """A poll of a running task ended in ``exc``. ``next_delay`` is when a poll that is
    merely refused (429) goes again; ``permit`` its slot in the service's window."""
    if isinstance(exc, TaskNotFoundError):
        run.poll_throttle.on_success(record=False)
        await resubmit_after_failure(run, task, exc.code, str(exc), refund=True)
        return
    if isinstance(exc, RateLimitError):
        try:
            run.poll_throttle.on_rate_limited(
                exc.retry_after, limit=exc.limit, empty=exc.empty, server=exc.server, permit=permit
            )
            run.update()
            await remember_limit(run)
        except ParkedError as parked:
            run.message("warning", f"polling parked: {parked}; run again later")
            run.settle(task)
            run.request_stop("parked", drain=True)
            return
        run.schedule(next_delay, "poll", task)
        return
    if isinstance(exc, AuthenticationError):
        run.settle(task)
        run.fail_run(exc)
        return
    run.poll_throttle.on_failure()
    task.poll_failures += 1
    log.debug("poll of %s failed: %s", task.remote_id, exc)
    delay = full_jitter(BackoffPolicy(base=1.0, cap=30.0), task.poll_failures, run.rng)
    run.schedule(max(0.5, delay), "poll", task)


async def task_failed(run: RunState, task: InFlight, info: TaskInfo) -> None:
    """The service says the task ended without images (it refunds failed tasks)."""
    reason = info.reason
    message = info.error or info.failure_reason or info.status.value
    if reason is not None and reason.final:
        await fail(run, task, reason.value, f"{info.status.value}: {message}", refund=True)
        return
    await resubmit_after_failure(run, task, "error", f"task failed: {message}", refund=True)


async def download_failed(run: RunState, task: InFlight, exc: BaseException) -> None:
    """Saving the task's images failed with ``exc`` (a DownloadError, ConfigError or
    OSError; anything else is re-raised)."""
    if isinstance(exc, ResultExpiredError):
        await regenerate(run, task, str(exc))
    elif isinstance(exc, DownloadError):
        task.download_attempts += 1
        if exc.retryable and task.download_attempts < run.limits.max_attempts:
            delay = full_jitter(BackoffPolicy(base=0.5, cap=10.0), task.download_attempts, run.rng)
            run.schedule(delay, "download", task)
            return
        await fail(run, task, exc.code, str(exc))
    elif isinstance(exc, ConfigError):
        await fail(run, task, exc.code, str(exc))
    elif isinstance(exc, OSError):
        # A full disk or an unwritable folder stops the run; the task stays
        # ``downloading`` and the next run fetches it again while the URL lives.
        run.settle(task)
        run.fail_run(
            ConfigError(
                _("cannot write to {folder}: {reason}").format(
                    folder=run.output_dir, reason=exc.strerror or exc
                ),
                code="disk_full",
            )
        )
    else:
        raise exc
