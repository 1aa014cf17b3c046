"""What every stage of one run shares: the task record, the queues, the counters.

The submit, poll and download stages (:mod:`.submit`, :mod:`.poll`, :mod:`.download`)
are functions of one :class:`RunState`. It holds the in-flight record of each task
(:class:`InFlight`: the ledger row plus what only memory knows), the work queue the
submit workers read, the scheduler's heap of due times (polls, delayed retries and
downloads), the channels to the poll and download workers, the shared pacing (the
throttles and the in-flight limit), the money counters, and the stop controls. Nothing
here talks to the service or writes the ledger; :mod:`.transitions` and
:mod:`.policy` do.
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
from batchgen.api.responses import ResultImage
from batchgen.ledger.schema import TaskRow
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import Downloader
from batchgen.runner.budget import Budget
from batchgen.runner.latency import LatencyModel
from batchgen.runner.pacing import AdaptiveLimit
from batchgen.runner.progress import NullHook, ProgressHook, Snapshot
from batchgen.runner.service_limit import POLL, SUBMIT, ServiceLimit
from batchgen.runner.throttle import Throttle
from batchgen.runner.window import Permit

__all__ = ["InFlight", "PipelineLimits", "RunState", "WorkQueue", "submit_throttle"]

log = logging.getLogger("batchgen.runner")


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
    reply: str = "auto"  # the generate route: async, stream, or auto (see the spec's api.reply)
    currency: str = "CNY"  # of prices and the budget (for messages)
    embed: str = "none"  # what saved images carry: none, or parameters (the spec's embed)
    job: str = ""  # the job's name (written into images with embed: parameters)


def submit_throttle(limits: PipelineLimits, rng: random.Random, limit: ServiceLimit) -> Throttle:
    """The pacing of requests that count against the service's limit: submissions, and
    the chat calls of generated axes before them (the gateway counts both)."""
    return Throttle(
        rate_per_minute=limits.requests_per_minute,
        burst=limits.burst,
        # An unknown rate is probed from 10/s up, not met with a burst of everything.
        probe_from=10.0,
        max_pause=limits.max_retry_after,
        rng=rng,
        limit=limit,
        kind=SUBMIT,
    )


@dataclass(slots=True)
class InFlight:
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
    permit: Permit | None = None  # its place in the service's window, while sending
    last_running: tuple[float | None, int] = (None, 0)  # (elapsed, progress) last seen running
    poll_due: float = 0.0  # when its next poll was meant to go (the run's clock)
    slot: bool = False
    settled: bool = False  # needs nothing more from this run
    adopted: bool = False  # left at the service (or half-downloaded) by an earlier run
    phase: str = "queued"  # queued → intent → sent → answered → settled

    @property
    def key(self) -> str:
        return self.row.key


class WorkQueue:
    """Tasks waiting for a submit worker: fresh ones (bounded) and retries (not bounded).

    Retries bypass the bound: they come from workers that must never block on it.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._fresh: collections.deque[InFlight] = collections.deque()
        self._retry: collections.deque[InFlight] = collections.deque()
        self._changed = anyio.Event()
        self.closed = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._fresh) + len(self._retry)

    async def put_fresh(self, task: InFlight) -> bool:
        """Queue a task from the feeder; ``False`` (not queued) once the queue is closed."""
        while len(self._fresh) >= self.bound and not self.closed:
            await self._changed.wait()
        if self.closed:
            return False
        self._fresh.append(task)
        self._notify()
        return True

    def put_retry(self, task: InFlight) -> None:
        self._retry.append(task)
        self._notify()

    async def get(self) -> InFlight | None:
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

    def drain(self) -> list[InFlight]:
        items = list(self._retry) + list(self._fresh)
        self._retry.clear()
        self._fresh.clear()
        self._notify()
        return items


class RunState:
    """The state one run's stages share; see the module docstring."""

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
        budget: Budget | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.downloader = downloader
        self.output_dir = output_dir
        self.limits = limits
        self.materialize = materialize
        self.hook: ProgressHook = hook or NullHook()
        self.snap = snapshot or Snapshot()
        self.rng = random.Random(limits.seed)
        # What the service says of its own limit, shared by submissions and polls (and by
        # the chat calls before the run, when ``throttle`` is the one they used).
        if throttle is not None and throttle.limit is not None:
            self.limit, self.throttle = throttle.limit, throttle
        else:
            self.limit = ServiceLimit(clock=anyio.current_time)
            self.throttle = submit_throttle(limits, self.rng, self.limit)
        self.limit_saved = 0  # the limit's version last kept in the ledger
        self.poll_throttle = Throttle(
            rate_per_minute=None,
            discover=False,
            max_pause=limits.max_retry_after,
            rng=self.rng,
            limit=self.limit,
            kind=POLL,
        )
        self.inflight = AdaptiveLimit(limits.concurrency, clock=anyio.current_time)
        self.queue = WorkQueue(bound=max(4, limits.concurrency * 2))
        self._heap: list[tuple[float, int, str, InFlight]] = []
        self._heap_changed = anyio.Event()
        self._seq = itertools.count()
        send, receive = anyio.create_memory_object_stream[InFlight](max(1, limits.poll_workers))
        self.poll_send, self.poll_recv = send, receive
        dsend, drecv = anyio.create_memory_object_stream[InFlight](
            max(1, limits.download_workers * 2)
        )
        self.dl_send, self.dl_recv = dsend, drecv
        # Tasks taken into this run and not yet settled; the run ends when none is left.
        self.outstanding = 0
        self.idle = anyio.Event()
        self.feeding_done = False
        self.adopting = False
        self.stopping = False
        self.draining = False
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.parked: int = 0
        self.parked_delay: float | None = None
        self.budget_skipped = 0
        self.blocked_models: set[str] = set()
        self.business_streak: tuple[str, int] = ("", 0)
        self.spent = spent_before
        self.reserved = 0.0
        self.budget = budget or Budget(
            limit=limits.budget, spent_before=spent_before, clock=anyio.current_time
        )
        self.latency_ewma: float | None = None
        self.latencies = LatencyModel()
        self.scout: InFlight | None = None  # the one task polled to learn latency (dear polls)
        self.scout_back = anyio.Event()
        self.shields: set[anyio.CancelScope] = set()
        self.submit_scope = anyio.CancelScope()
        self.drain_scope = anyio.CancelScope()
        self.main_scope = anyio.CancelScope()

    # --- stopping ----------------------------------------------------------------------

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
                self.drain_scope.cancel()
            return
        self.stopping = True
        self.draining = drain
        self.stop_reason = reason
        deadline = anyio.current_time() + self.limits.stop_grace
        for scope in self.shields:
            scope.deadline = min(scope.deadline, deadline)
        self.submit_scope.cancel()
        for task in self.queue.drain():
            self.settle(task)
        self.queue.close()
        self.check_idle()

    def abort(self) -> None:
        """End the run at once (a second Ctrl-C)."""
        self.request_stop(self.stop_reason or "aborted")
        self.draining = False
        for scope in self.shields:
            scope.cancel()
        self.main_scope.cancel()

    def fail_run(self, exc: BaseException) -> None:
        """Stop the run because of ``exc``, which the caller of the run then sees."""
        if self.fatal is None:
            self.fatal = exc
        self.request_stop(f"stopped: {exc}")

    # --- reporting ---------------------------------------------------------------------

    def update(self) -> None:
        snap = self.snap
        snap.in_flight = self.inflight.in_use
        snap.concurrency = self.inflight.current
        snap.rate_limited = self.throttle.rate_limited
        snap.poll_rate_limited = self.poll_throttle.rate_limited
        snap.rpm = self.throttle.rate_per_minute
        snap.spent = self.spent
        if self.limit.notices:
            snap.service_limit = self.limit.describe()
            for notice in self.limit.notices:
                self.message("info", notice)
            self.limit.notices.clear()
        self.hook.on_update(snap)

    def message(self, level: str, text: str) -> None:
        # The hook is how messages reach people; the log gets them at DEBUG only, so a
        # library caller without logging set up never sees them twice on stderr.
        log.debug("%s: %s", level, text)
        self.hook.on_message(level, text)

    # --- bookkeeping -------------------------------------------------------------------

    def take(self, row: TaskRow) -> InFlight:
        """Take a ledger row into this run: it is outstanding until settled."""
        self.outstanding += 1
        task = InFlight(
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

    def settle(self, task: InFlight) -> None:
        """This task needs nothing more from this run (idempotent)."""
        self.release_slot(task)
        if not task.settled:
            task.settled = True
            self.outstanding -= 1
        self.check_idle()

    def check_idle(self) -> None:
        done_feeding = self.feeding_done and not self.adopting
        if (done_feeding or self.stopping) and self.outstanding <= 0:
            self.idle.set()
            self.queue.close()

    def release_slot(self, task: InFlight) -> None:
        if task.slot:
            task.slot = False
            self.inflight.release()

    # --- money -------------------------------------------------------------------------

    def over_budget(self, price: float) -> bool:
        """Whether one more submission at ``price`` could pass the budget (or what the
        key can still pay), by the estimate or the service's usage counter."""
        return self.budget.would_pass(self.spent, self.reserved, price)

    def charge(self, task: InFlight) -> None:
        """The service took (or may have taken) the task's submission: count its price."""
        task.charged += task.row.price
        self.spent += task.row.price

    def refund(self, task: InFlight) -> None:
        """The service refunds a failed task: take its price back once."""
        if task.charged >= task.row.price:
            task.charged -= task.row.price
            self.spent -= task.row.price

    # --- scheduling --------------------------------------------------------------------

    def schedule(self, delay: float, kind: str, task: InFlight) -> None:
        """Hand ``task`` to the ``poll``, ``download`` or ``submit`` stage after ``delay``."""
        due = anyio.current_time() + delay
        if kind == "poll":
            task.poll_due = due
        heapq.heappush(self._heap, (due, next(self._seq), kind, task))
        self._heap_changed.set()

    def retry_later(self, task: InFlight, delay: float) -> None:
        """Send a task back to submission after ``delay`` (still outstanding)."""
        self.release_slot(task)
        if self.stopping:
            self.settle(task)
            return
        self.snap.retried += 1
        self.schedule(delay, "submit", task)

    async def scheduler(self) -> None:
        """Run forever: move each task to its stage when its time comes."""
        while True:
            now = anyio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, kind, task = heapq.heappop(self._heap)
                if kind == "poll":
                    await self.poll_send.send(task)
                elif kind == "download":
                    await self.dl_send.send(task)
                elif self.stopping:
                    self.settle(task)
                else:
                    self.queue.put_retry(task)
            self._heap_changed = anyio.Event()
            if self._heap:
                with anyio.move_on_after(max(0.0, self._heap[0][0] - anyio.current_time())):
                    await self._heap_changed.wait()
            else:
                await self._heap_changed.wait()
