"""The submit → poll → download pipeline of one run.

Fixed pools of workers, fed from the ledger, inside one anyio task group:

- a feeder pages ``pending`` rows out of the ledger into a bounded work queue;
- submit workers take a slot of the adaptive in-flight limit, wait for the shared
  throttle, commit ``submitting``, send, and commit the remote id;
- a scheduler keeps a heap of due times: polls of running tasks and delayed retries;
- poll workers ask for results; download workers save images into the output tree.

Memory is bounded by the limits (queue sizes, in-flight slots), never by the job size.
Every decision about an error reads only its class flags (``retryable``,
``accepted``) and its code, following the service's error table.

Stopping: :meth:`Pipeline.request_stop` stops new submissions, lets requests already
sent finish (bounded by a grace period) so their answers are recorded, then ends the
run; :meth:`Pipeline.abort` ends it at once. Either way the ledger stays consistent: a
row left ``submitting`` becomes ``unknown`` at the next start.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from batchgen.api.client import CobabaClient
from batchgen.api.responses import ImagesResult, ResultImage, Submission, TaskInfo
from batchgen.errors import (
    Accepted,
    AuthenticationError,
    BatchgenError,
    BusinessError,
    ConfigError,
    DownloadError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    TaskNotFoundError,
)
from batchgen.ledger.schema import TaskRow, TaskState, Transition
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import Downloader, SavedImage
from batchgen.output.tree import resolve_inside
from batchgen.runner.progress import NullHook, ProgressHook, Snapshot
from batchgen.runner.throttle import (
    AdaptiveLimit,
    BackoffPolicy,
    ParkedError,
    Throttle,
    full_jitter,
)

__all__ = ["Pipeline", "PipelineLimits"]

log = logging.getLogger("batchgen.runner.pipeline")

_DOWNLOAD_CODES = frozenset({"download_failed", "truncated", "not_an_image", "disk_full"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineLimits:
    """The knobs of one run (from the spec's ``limits`` and the command line)."""

    concurrency: int = 8
    requests_per_minute: float | None = None
    burst: float | None = None
    max_attempts: int = 5
    task_timeout: float = 3600.0
    budget: float | None = None
    resubmit_unknown: bool = False
    max_retry_after: float = 600.0
    download_workers: int = 8
    poll_workers: int = 16
    first_poll: float = 1.0
    max_poll_interval: float = 15.0
    stop_grace: float = 30.0
    seed: int | None = None


@dataclass(slots=True)
class _Task:
    """A task in flight in this run (the ledger row plus what only memory knows)."""

    row: TaskRow
    attempts: int
    charged: float
    regenerations: int
    remote_id: str | None = None
    submitted_mono: float = 0.0
    sent_mono: float | None = None  # when the last submission left (the throttle's clock)
    polls: int = 0
    poll_failures: int = 0
    download_attempts: int = 0
    results: tuple[ResultImage, ...] = ()
    slot: bool = False
    settled: bool = False  # needs nothing more from this run
    adopted: bool = False  # left at the service (or half-downloaded) by an earlier run
    phase: str = "queued"  # queued → intent → sent → answered → settled

    @property
    def key(self) -> str:
        return self.row.key


class _WorkQueue:
    """Tasks waiting for a submit worker: fresh ones (bounded) and retries (not bounded).

    Retries bypass the bound: they come from workers that must never block on it.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._fresh: collections.deque[_Task] = collections.deque()
        self._retry: collections.deque[_Task] = collections.deque()
        self._changed = anyio.Event()
        self.closed = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._fresh) + len(self._retry)

    async def put_fresh(self, task: _Task) -> bool:
        """Queue a task from the feeder; ``False`` (not queued) once the queue is closed."""
        while len(self._fresh) >= self.bound and not self.closed:
            await self._changed.wait()
        if self.closed:
            return False
        self._fresh.append(task)
        self._notify()
        return True

    def put_retry(self, task: _Task) -> None:
        self._retry.append(task)
        self._notify()

    async def get(self) -> _Task | None:
        """The next task; ``None`` once closed and empty."""
        while True:
            if self._retry:
                task = self._retry.popleft()
                self._notify()
                return task
            if self._fresh:
                task = self._fresh.popleft()
                self._notify()
                return task
            if self.closed:
                return None
            await self._changed.wait()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def drain(self) -> list[_Task]:
        items = list(self._retry) + list(self._fresh)
        self._retry.clear()
        self._fresh.clear()
        self._notify()
        return items


class Pipeline:
    """One run's workers. Build it, then ``await pipeline.run()``."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: CobabaClient,
        downloader: Downloader,
        output_dir: Path,
        limits: PipelineLimits,
        materialize: Any,
        hook: ProgressHook | None = None,
        snapshot: Snapshot | None = None,
        spent_before: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.downloader = downloader
        self.output_dir = output_dir
        self.limits = limits
        self._materialize = materialize
        self.hook: ProgressHook = hook or NullHook()
        self.snap = snapshot or Snapshot()
        self._rng = random.Random(limits.seed)
        self.throttle = Throttle(
            rate_per_minute=limits.requests_per_minute,
            burst=limits.burst,
            # An unknown rate is probed from 10/s up, not met with a burst of everything.
            probe_from=10.0,
            max_pause=limits.max_retry_after,
            rng=self._rng,
        )
        self.poll_throttle = Throttle(
            rate_per_minute=None, discover=False, max_pause=limits.max_retry_after, rng=self._rng
        )
        self.inflight = AdaptiveLimit(limits.concurrency, clock=anyio.current_time)
        self.queue = _WorkQueue(bound=max(4, limits.concurrency * 2))
        self._heap: list[tuple[float, int, str, _Task]] = []
        self._heap_changed = anyio.Event()
        self._seq = itertools.count()
        send, receive = anyio.create_memory_object_stream[_Task](max(1, limits.poll_workers))
        self._poll_send, self._poll_recv = send, receive
        dsend, drecv = anyio.create_memory_object_stream[_Task](max(1, limits.download_workers * 2))
        self._dl_send, self._dl_recv = dsend, drecv
        self.outstanding = 0
        self._idle = anyio.Event()
        self._feeding_done = False
        self._adopting = False
        self.stopping = False
        self.draining = False
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.parked: int = 0
        self.parked_delay: float | None = None
        self.budget_skipped = 0
        self.blocked_models: set[str] = set()
        self._business_streak: tuple[str, int] = ("", 0)
        self._spent = spent_before
        self._reserved = 0.0
        self._latency_ewma: float | None = None
        self._shields: set[anyio.CancelScope] = set()
        self._submit_scope = anyio.CancelScope()
        self._drain_scope = anyio.CancelScope()
        self._main_scope = anyio.CancelScope()

    # --- control -------------------------------------------------------------------------

    def request_stop(self, reason: str = "interrupted", *, drain: bool = False) -> None:
        """Stop submitting and let requests in flight answer (bounded by the grace).

        With ``drain`` the run then waits for tasks already at the service to finish
        and download (a budget or a parked limit); without, it ends as soon as the
        submissions in flight are recorded (Ctrl-C), leaving running tasks to the
        next run.
        """
        if self.stopping:
            if self.draining and not drain:
                # Ctrl-C during a budget or parked drain: stop waiting for the tasks at
                # the service; they are polled by the next run.
                self.draining = False
                self.stop_reason = reason
                self._drain_scope.cancel()
            return
        self.stopping = True
        self.draining = drain
        self.stop_reason = reason
        deadline = anyio.current_time() + self.limits.stop_grace
        for scope in self._shields:
            scope.deadline = min(scope.deadline, deadline)
        self._submit_scope.cancel()
        for task in self.queue.drain():
            self._settle(task)
        self.queue.close()
        self._check_idle()

    def abort(self) -> None:
        """End the run at once (a second Ctrl-C)."""
        self.request_stop(self.stop_reason or "aborted")
        self.draining = False
        for scope in self._shields:
            scope.cancel()
        self._main_scope.cancel()

    def _fail_run(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.request_stop(f"stopped: {exc}")

    def _update(self) -> None:
        snap = self.snap
        snap.in_flight = self.inflight.in_use
        snap.concurrency = self.inflight.current
        snap.rate_limited = self.throttle.rate_limited
        snap.poll_rate_limited = self.poll_throttle.rate_limited
        snap.rpm = self.throttle.rate_per_minute
        snap.spent = self._spent
        self.hook.on_update(snap)

    def _message(self, level: str, text: str) -> None:
        # The hook is how messages reach people; the log gets them at DEBUG only, so a
        # library caller without logging set up never sees them twice on stderr.
        log.debug("%s: %s", level, text)
        self.hook.on_message(level, text)

    def _settle(self, task: _Task) -> None:
        """This task needs nothing more from this run (idempotent)."""
        self._release_slot(task)
        if not task.settled:
            task.settled = True
            self.outstanding -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        done_feeding = self._feeding_done and not self._adopting
        if (done_feeding or self.stopping) and self.outstanding <= 0:
            self._idle.set()
            self.queue.close()

    def _release_slot(self, task: _Task) -> None:
        if task.slot:
            task.slot = False
            self.inflight.release()

    # --- the run ---------------------------------------------------------------------------

    async def run(self, *, started_at: float) -> None:
        """Run until every task of the spec is settled, or a stop/abort/fatal error.

        Rows ``running`` or ``downloading`` last updated before ``started_at`` (left by
        an earlier run) are polled or downloaded; ``pending`` rows are submitted.
        """
        self.snap.concurrency = self.inflight.current
        self.snap.spent = self._spent
        self.hook.on_start(self.snap)
        with self._main_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._scheduler)
                for _ in range(self.limits.poll_workers):
                    tg.start_soon(self._poll_worker)
                for _ in range(self.limits.download_workers):
                    tg.start_soon(self._download_worker)
                with self._submit_scope:
                    async with anyio.create_task_group() as sub:
                        sub.start_soon(self._adopt_earlier, started_at)
                        sub.start_soon(self._feeder)
                        for _ in range(max(1, self.limits.concurrency)):
                            sub.start_soon(self._submit_worker)
                for task in self.queue.drain():  # queued after a stop: still pending
                    self._settle(task)
                # Submissions ended: everything was fed, or a stop. Wait for the tasks in
                # flight unless the stop says to leave them to the next run.
                if not self.stopping or self.draining:
                    with self._drain_scope:
                        await self._idle.wait()
                tg.cancel_scope.cancel()
        self._update()
        self.hook.on_finish(self.snap)

    async def _adopt_earlier(self, started_at: float) -> None:
        """Pick up what an earlier run left at the service or half-downloaded."""
        self._adopting = True
        try:
            for state in (TaskState.RUNNING, TaskState.DOWNLOADING):
                after = (-1, "")
                while True:
                    rows = await self.ledger.page(
                        [state],
                        after=after,
                        limit=500,
                        where="updated_at < ?",
                        params=[started_at],
                    )
                    if not rows:
                        break
                    for row in rows:
                        after = (row.seq, row.key)
                        task = self._adopt(row)
                        task.adopted = True
                        if state is TaskState.RUNNING and row.remote_id:
                            task.slot = True
                            self.inflight.in_use += 1
                            self._schedule(0.0, "poll", task)
                        else:
                            await self._dl_send.send(task)
        finally:
            self._adopting = False
            self._check_idle()

    def _adopt(self, row: TaskRow) -> _Task:
        self.outstanding += 1
        task = _Task(
            row=row,
            attempts=row.attempts,
            charged=row.charged,
            regenerations=row.regenerations,
            remote_id=row.remote_id,
            results=tuple(ResultImage(url=u) for u in row.urls),
        )
        task.submitted_mono = anyio.current_time() - (
            max(0.0, time.time() - row.submitted_at) if row.submitted_at else 0.0
        )
        return task

    async def _feeder(self) -> None:
        after = (-1, "")
        try:
            while not self.stopping:
                rows = await self.ledger.page([TaskState.PENDING], after=after, limit=500)
                if not rows:
                    break
                for row in rows:
                    after = (row.seq, row.key)
                    task = self._adopt(row)
                    try:
                        queued = await self.queue.put_fresh(task)
                    except BaseException:
                        self._settle(task)  # cancelled (a stop): it stays pending
                        raise
                    if not queued:  # a stop closed the queue: it stays pending
                        self._settle(task)
                        return
        finally:
            self._feeding_done = True
            self._check_idle()

    # --- scheduling ---------------------------------------------------------------------

    def _schedule(self, delay: float, kind: str, task: _Task) -> None:
        heapq.heappush(self._heap, (anyio.current_time() + delay, next(self._seq), kind, task))
        self._heap_changed.set()

    async def _scheduler(self) -> None:
        while True:
            now = anyio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, kind, task = heapq.heappop(self._heap)
                if kind == "poll":
                    await self._poll_send.send(task)
                elif kind == "download":
                    await self._dl_send.send(task)
                elif self.stopping:
                    self._settle(task)
                else:
                    self.queue.put_retry(task)
            self._heap_changed = anyio.Event()
            if self._heap:
                with anyio.move_on_after(max(0.0, self._heap[0][0] - anyio.current_time())):
                    await self._heap_changed.wait()
            else:
                await self._heap_changed.wait()

    def _retry_later(self, task: _Task, delay: float) -> None:
        """Send a task back to submission after ``delay`` (still outstanding)."""
        self._release_slot(task)
        if self.stopping:
            self._settle(task)
            return
        self.snap.retried += 1
        self._schedule(delay, "submit", task)

    # --- submitting ---------------------------------------------------------------------

    def _over_budget(self, price: float) -> bool:
        budget = self.limits.budget
        return budget is not None and self._spent + self._reserved + price > budget + 1e-9

    async def _submit_worker(self) -> None:
        while True:
            task = await self.queue.get()
            if task is None:
                return
            try:
                await self._submit_one(task)
            except BaseException:
                if task.phase == "queued":  # cancelled before sending: still pending
                    self._settle(task)
                raise

    async def _submit_one(self, task: _Task) -> None:
        row = task.row
        if row.model in self.blocked_models:
            # Already failed in the ledger (and counted) when the model was blocked.
            self._settle(task)
            return
        if self._over_budget(row.price):
            self.budget_skipped += 1
            if self.budget_skipped == 1:
                self._message(
                    "warning",
                    f"budget {self.limits.budget:g} reached: no more submissions; the rest"
                    " stays pending (raise limits.budget and run again to continue)",
                )
                self.request_stop("budget", drain=True)
            self._settle(task)
            return
        await self.inflight.acquire()
        task.slot = True
        try:
            await self.throttle.acquire()
        except BaseException:
            self._release_slot(task)
            raise
        if self.stopping or self._over_budget(row.price) or row.model in self.blocked_models:
            # Things changed while this worker waited for its turn; look again.
            self.throttle.on_abandoned()
            self.throttle.bucket.refund()
            if self.stopping:
                self._settle(task)
            else:
                self._release_slot(task)
                self.queue.put_retry(task)
            return
        self._reserved += row.price
        # Shielded: a Ctrl-C must not cut the path from intent to recorded answer. A
        # stop gives it a deadline (the grace period), an abort cancels it.
        with anyio.CancelScope(shield=True) as shield:
            self._shields.add(shield)
            try:
                await self._send_submission(task)
            finally:
                self._shields.discard(shield)
                self._reserved -= row.price
        if shield.cancel_called and task.phase != "settled":
            with anyio.CancelScope(shield=True):
                await self._interrupted_submission(task)

    async def _interrupted_submission(self, task: _Task) -> None:
        """Record what is known of a submission cut short by a stop or an abort."""
        if task.phase == "sent":
            await self._to_unknown(task, "interrupted", "stopped before the answer came")
            return
        if task.phase == "answered" and task.remote_id:
            await self.ledger.write(
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
            await self.ledger.write(
                Transition(
                    task.key,
                    TaskState.PENDING,
                    attempts=task.attempts,
                    detail="stopped before sending",
                )
            )
        self._settle(task)

    async def _send_submission(self, task: _Task) -> None:
        row = task.row
        attempt = task.attempts + 1
        task.phase = "intent"
        await self.ledger.write(
            Transition(row.key, TaskState.SUBMITTING, attempts=attempt, detail=f"attempt {attempt}")
        )
        task.attempts = attempt
        self.snap.submitted += 1
        self._update()
        try:
            body = self._materialize(row.request)
            task.phase = "sent"
            task.sent_mono = anyio.current_time()
            result = await self.client.submit(row.endpoint, body)
        except BatchgenError as exc:
            task.phase = "answered"
            self.throttle.on_abandoned()
            await self._submission_failed(task, exc)
            task.phase = "settled"
            return
        task.phase = "answered"
        self.throttle.on_success(task.sent_mono)
        self._business_streak = ("", 0)
        task.charged += row.price
        self._spent += row.price
        self.snap.accepted += 1
        if isinstance(result, Submission):
            task.remote_id = result.task_id
            task.submitted_mono = anyio.current_time()
            await self.ledger.write(
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
            self._update()
            self._schedule(self._first_poll_delay(), "poll", task)
            return
        assert isinstance(result, ImagesResult)
        await self._generated(task, result.images, remote_id=None)
        task.phase = "settled"

    async def _submission_failed(self, task: _Task, exc: BatchgenError) -> None:
        row = task.row
        counted = True
        if exc.accepted is not Accepted.NO:
            # The service may have taken it: never resubmit silently.
            task.charged += row.price
            self._spent += row.price
            await self._to_unknown(task, exc.code, str(exc))
            return
        if isinstance(exc, AuthenticationError):
            await self._back_to_pending(task, exc, counted=False)
            self._settle(task)
            self._fail_run(exc)
            return
        if isinstance(exc, RateLimitError):
            try:
                self.throttle.on_rate_limited(exc.retry_after, task.sent_mono)
            except ParkedError as parked:
                await self._park(task, parked.delay)
                return
            if self.inflight.on_congestion():
                self._update()
            await self._back_to_pending(task, exc, counted=False)
            self._retry_later(task, 0.0)
            return
        if isinstance(exc, PermissionDeniedError):
            await self._block_model(task, exc)
            return
        if exc.retryable:
            counted = self.throttle.on_failure()
            if counted and task.attempts >= self.limits.max_attempts:
                await self._fail(task, exc.code, str(exc))
                return
            await self._back_to_pending(task, exc, counted=counted)
            delay = full_jitter(BackoffPolicy(base=1.0, cap=30.0), task.attempts, self._rng)
            self._retry_later(task, delay)
            return
        self.throttle.on_success(task.sent_mono)  # the service answered: it is up
        if isinstance(exc, BusinessError):
            # Often the account's problem (no credits), not the task's: the task stays
            # pending, and the same refusal three times in a row stops the run.
            code, streak = self._business_streak
            streak = streak + 1 if code == exc.code else 1
            self._business_streak = (exc.code, streak)
            if streak >= 3:
                await self._back_to_pending(task, exc, counted=False)
                self._settle(task)
                self._fail_run(exc)
                return
            if task.attempts < self.limits.max_attempts:
                await self._back_to_pending(task, exc, counted=True)
                self._retry_later(task, full_jitter(BackoffPolicy(), task.attempts, self._rng))
                return
        await self._fail(task, exc.code, str(exc))

    async def _back_to_pending(self, task: _Task, exc: BatchgenError, *, counted: bool) -> None:
        if not counted:
            task.attempts -= 1
        await self.ledger.write(
            Transition(
                task.key,
                TaskState.PENDING,
                attempts=task.attempts,
                error_code=exc.code,
                error_message=str(exc),
                detail=f"not accepted: {exc.code}",
            )
        )

    async def _park(self, task: _Task, delay: float) -> None:
        self.parked += 1
        self.parked_delay = delay
        task.attempts -= 1
        await self.ledger.write(
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
        self._settle(task)
        if not self.stopping:
            hours = delay / 3600
            self._message(
                "warning",
                f"the service asked to wait {delay:,.0f}s ({hours:.1f} h), more than"
                f" limits.max_retry_after ({self.limits.max_retry_after:g}s): pending tasks are"
                " parked; run again later to continue",
            )
            self.request_stop("parked", drain=True)

    async def _block_model(self, task: _Task, exc: BatchgenError) -> None:
        model = task.row.model
        first = model not in self.blocked_models
        self.blocked_models.add(model)  # before any await: other workers see it at once
        await self._fail(task, exc.code, str(exc))
        if not first:
            return
        count = await self.ledger.bulk_set_state(
            from_states=[TaskState.PENDING],
            to_state=TaskState.FAILED,
            detail=f"model {model} forbidden",
            where="model = ?",
            params=[model],
            in_run=True,
            error=(exc.code, f"model {model} is forbidden for this key"),
        )
        self.snap.failed += count
        self._message(
            "error",
            f"model {model} is forbidden for this key (403): {count + 1} of its tasks failed,"
            " the rest of the job goes on",
        )
        self._update()

    async def _to_unknown(self, task: _Task, code: str, message: str) -> None:
        await self.ledger.write(
            Transition(
                task.key,
                TaskState.UNKNOWN,
                charged=task.charged,
                error_code=code,
                error_message=message,
                detail=f"answer lost: {code}",
            )
        )
        if self.limits.resubmit_unknown and not self.stopping:
            await self.ledger.write(
                Transition(task.key, TaskState.PENDING, detail="resubmit unknown (policy)")
            )
            self._retry_later(task, 0.0)
            return
        self.snap.unknown += 1
        self._update()
        self._settle(task)

    async def _fail(self, task: _Task, code: str, message: str, *, refund: bool = False) -> None:
        if refund and task.charged >= task.row.price:
            task.charged -= task.row.price
            self._spent -= task.row.price
        await self.ledger.write(
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
        self.snap.failed += 1
        self._update()
        self._settle(task)

    # --- polling -------------------------------------------------------------------------

    def _first_poll_delay(self) -> float:
        if self._latency_ewma is None:
            return self.limits.first_poll
        return min(max(0.05, 0.9 * self._latency_ewma), 4 * self.limits.max_poll_interval)

    def _observe_latency(self, task: _Task) -> None:
        """Learn when to poll first from a task just found finished."""
        latency = anyio.current_time() - task.submitted_mono
        if self._latency_ewma is None:
            self._latency_ewma = latency
        elif task.polls <= 1:
            # Done at its first poll: the real latency was shorter than observed, by an
            # unknown amount, so probe much earlier next time. Polls are free, and the
            # progress a running answer reports makes the next poll precise anyway.
            self._latency_ewma = 0.25 * min(self._latency_ewma, latency)
        else:
            self._latency_ewma = 0.8 * self._latency_ewma + 0.2 * latency

    def _next_poll_delay(self, task: _Task, info: TaskInfo | None) -> float:
        elapsed = anyio.current_time() - task.submitted_mono
        cap = self.limits.max_poll_interval
        step = max(0.2, 0.05 * (self._latency_ewma or elapsed or 1.0)) * (
            1.3 ** min(task.polls, 20)
        )
        if info is not None and 0 < info.progress < 100 and elapsed > 0:
            # Progress rises with time: aim just after the predicted end.
            predicted = elapsed * (100 - info.progress) / info.progress
            return min(cap, max(0.1, min(predicted + 0.05, max(step, predicted))))
        return min(cap, step)

    async def _poll_worker(self) -> None:
        async with self._poll_recv.clone() as receive:
            async for task in receive:
                await self._poll_one(task)

    async def _poll_one(self, task: _Task) -> None:
        assert task.remote_id is not None
        await self.poll_throttle.acquire()
        task.polls += 1
        try:
            info = await self.client.get_result(task.remote_id)
        except TaskNotFoundError as exc:
            self.poll_throttle.on_success()
            await self._resubmit_after_failure(task, exc.code, str(exc), refund=True)
            return
        except RateLimitError as exc:
            try:
                self.poll_throttle.on_rate_limited(exc.retry_after)
            except ParkedError as parked:
                self._message("warning", f"polling parked: {parked}; run again later")
                self._settle(task)
                self.request_stop("parked", drain=True)
                return
            self._schedule(self._next_poll_delay(task, None), "poll", task)
            return
        except AuthenticationError as exc:
            self._settle(task)
            self._fail_run(exc)
            return
        except BatchgenError as exc:
            self.poll_throttle.on_failure()
            task.poll_failures += 1
            log.debug("poll of %s failed: %s", task.remote_id, exc)
            delay = full_jitter(BackoffPolicy(base=1.0, cap=30.0), task.poll_failures, self._rng)
            self._schedule(max(0.5, delay), "poll", task)
            return
        self.poll_throttle.on_success()
        if not info.status.terminal:
            # Timed out only after a poll that still says running (a task `retry`
            # sends back to running gets the poll it was promised).
            elapsed = anyio.current_time() - task.submitted_mono
            if elapsed > self.limits.task_timeout:
                await self._fail(
                    task,
                    "task_timeout",
                    f"no result after {elapsed:,.0f}s (remote {task.remote_id})",
                )
                return
            self._schedule(self._next_poll_delay(task, info), "poll", task)
            return
        # A task the service finished is the round trip that grows the in-flight limit.
        self.inflight.on_success()
        if not task.adopted:  # an earlier run's task: its age says nothing of latency
            self._observe_latency(task)
        if info.succeeded:
            await self._generated(task, info.results, remote_id=task.remote_id)
            return
        reason = info.reason
        message = info.error or info.failure_reason or info.status.value
        if reason is not None and reason.final:
            await self._fail(task, reason.value, f"{info.status.value}: {message}", refund=True)
            return
        await self._resubmit_after_failure(task, "error", f"task failed: {message}", refund=True)

    async def _resubmit_after_failure(
        self, task: _Task, code: str, message: str, *, refund: bool
    ) -> None:
        if refund and task.charged >= task.row.price:
            task.charged -= task.row.price
            self._spent -= task.row.price
        if task.attempts >= self.limits.max_attempts:
            await self._fail(task, code, message)
            return
        task.remote_id = None
        await self.ledger.write(
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
        self._retry_later(task, full_jitter(BackoffPolicy(), task.attempts, self._rng))

    async def _generated(
        self, task: _Task, images: tuple[ResultImage, ...], *, remote_id: str | None
    ) -> None:
        task.results = images
        urls = [img.url for img in images if img.url]
        await self.ledger.write(
            Transition(
                task.key,
                TaskState.DOWNLOADING,
                urls=urls,
                error_code=None,
                error_message=None,
                detail=f"{len(images)} image(s) ready",
            )
        )
        self._release_slot(task)
        self.snap.generated += 1
        self._update()
        await self._dl_send.send(task)

    # --- downloading ---------------------------------------------------------------------

    async def _download_worker(self) -> None:
        async with self._dl_recv.clone() as receive:
            async for task in receive:
                await self._download_one(task)

    def _dest(self, task: _Task, index: int) -> Path:
        relpath = task.row.layout_path
        if index:
            stem, _, ext = relpath.rpartition(".")
            relpath = f"{stem}-{index + 1}.{ext}"
        return resolve_inside(self.output_dir, relpath)

    async def _download_one(self, task: _Task) -> None:
        saved: list[SavedImage] = []
        try:
            if not task.results:
                # Inline images (b64_json) lost in a crash, or nothing to fetch: the only
                # way to the image is to generate it again.
                await self._regenerate(task, "no image left to download")
                return
            for index, image in enumerate(task.results):
                dest = self._dest(task, index)
                if image.data is not None:
                    saved.append(self.downloader.save_bytes(image.data, dest))
                else:
                    assert image.url is not None
                    saved.append(await self.downloader.fetch(image.url, dest))
        except ResultExpiredError as exc:
            await self._regenerate(task, str(exc))
            return
        except DownloadError as exc:
            task.download_attempts += 1
            if exc.retryable and task.download_attempts < self.limits.max_attempts:
                delay = full_jitter(
                    BackoffPolicy(base=0.5, cap=10.0), task.download_attempts, self._rng
                )
                self._schedule(delay, "download", task)
                return
            await self._fail(task, exc.code, str(exc))
            return
        except ConfigError as exc:
            await self._fail(task, exc.code, str(exc))
            return
        except OSError as exc:
            # A full disk or an unwritable folder stops the run; the task stays
            # ``downloading`` and the next run fetches it again while the URL lives.
            self._settle(task)
            self._fail_run(
                ConfigError(
                    f"cannot write to {self.output_dir}: {exc.strerror or exc}", code="disk_full"
                )
            )
            return
        first = saved[0]
        files = [
            {
                "path": str(s.path.relative_to(self.output_dir.resolve())),
                "bytes": s.size,
                "sha256": s.sha256,
                "width": s.width,
                "height": s.height,
            }
            for s in saved
        ]
        await self.ledger.write(
            Transition(
                task.key,
                TaskState.DONE,
                path=files[0]["path"],
                bytes=first.size,
                sha256=first.sha256,
                files=files,
                error_code=None,
                error_message=None,
                finished_at=time.time(),
                detail=f"saved {files[0]['path']}",
            )
        )
        self.snap.downloaded += 1
        self._update()
        self._settle(task)

    async def _regenerate(self, task: _Task, message: str) -> None:
        if task.regenerations + 1 >= self.limits.max_attempts:
            # Each regeneration is paid for: a URL that is always gone by the time it
            # is fetched must not make the run pay forever.
            await self._fail(
                task,
                "url_expired",
                f"result URL expired {task.regenerations + 1} times; giving up ({message})",
            )
            return
        task.regenerations += 1
        task.remote_id = None
        task.results = ()
        self.snap.regenerated += 1
        warn = self.snap.regenerated <= 3  # decided before the await: workers race here
        await self.ledger.write(
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
            self._message(
                "warning", f"a result URL expired before download; regenerating ({message})"
            )
        if self.stopping:
            self._settle(task)
            return
        self.snap.retried += 1
        self.queue.put_retry(task)


def is_download_code(code: str | None) -> bool:
    """Whether a failed task's code means its images can be fetched again (no new charge)."""
    return code in _DOWNLOAD_CODES
