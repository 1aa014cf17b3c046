"""The submit → poll → download pipeline of one run.

Fixed pools of workers, fed from the ledger, inside one anyio task group:

- a feeder pages ``pending`` rows out of the ledger into a bounded work queue, and an
  adopter picks up what an earlier run left ``running`` or ``downloading``;
- submit workers (:mod:`.submit`) take a slot of the adaptive in-flight limit, wait
  for the shared throttle, commit ``submitting``, send, and commit the remote id;
- a scheduler keeps a heap of due times: polls of running tasks and delayed retries;
- poll workers (:mod:`.poll`) ask for results; download workers (:mod:`.download`)
  save images into the output tree.

They share one :class:`~batchgen.runner.state.RunState`; every error becomes a
transition in :mod:`.policy`. Memory is bounded by the limits (queue sizes, in-flight
slots), never by the job size.

Stopping: :meth:`Pipeline.request_stop` stops new submissions, lets requests already
sent finish (bounded by a grace period) so their answers are recorded, then ends the
run; :meth:`Pipeline.abort` ends it at once. Either way the ledger stays consistent: a
row left ``submitting`` becomes ``unknown`` at the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from batchgen.api.client import CobabaClient
from batchgen.ledger.schema import TaskState
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import Downloader
from batchgen.runner.budget import Budget
from batchgen.runner.download import download_worker
from batchgen.runner.poll import poll_worker
from batchgen.runner.progress import ProgressHook, Snapshot
from batchgen.runner.state import PipelineLimits, RunState
from batchgen.runner.submit import submit_worker
from batchgen.runner.throttle import Throttle

__all__ = ["Pipeline", "PipelineLimits"]


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
        budget: Budget | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.state = RunState(
            ledger=ledger,
            client=client,
            downloader=downloader,
            output_dir=output_dir,
            limits=limits,
            materialize=materialize,
            hook=hook,
            snapshot=snapshot,
            spent_before=spent_before,
            budget=budget,
            throttle=throttle,
        )

    # --- what the caller reads and controls ----------------------------------------------

    @property
    def snap(self) -> Snapshot:
        """The run's counters."""
        return self.state.snap

    @property
    def stop_reason(self) -> str | None:
        """Why the run stopped early (``interrupted``, ``budget``, ``parked``, ...)."""
        return self.state.stop_reason

    @property
    def fatal(self) -> BaseException | None:
        """The error that stopped the run, if one did."""
        return self.state.fatal

    @property
    def parked(self) -> int:
        """Tasks parked because the service asked for a longer pause than allowed."""
        return self.state.parked

    @property
    def parked_delay(self) -> float | None:
        """The pause the service asked for when tasks were parked."""
        return self.state.parked_delay

    @property
    def budget_skipped(self) -> int:
        """Tasks left pending because the budget was reached."""
        return self.state.budget_skipped

    def request_stop(self, reason: str = "interrupted", *, drain: bool = False) -> None:
        """Stop submitting; see :meth:`RunState.request_stop`."""
        self.state.request_stop(reason, drain=drain)

    def abort(self) -> None:
        """End the run at once (a second Ctrl-C)."""
        self.state.abort()

    # --- the run ---------------------------------------------------------------------------

    async def run(self, *, started_at: float) -> None:
        """Run until every task of the spec is settled, or a stop/abort/fatal error.

        Rows ``running`` or ``downloading`` last updated before ``started_at`` (left by
        an earlier run) are polled or downloaded; ``pending`` rows are submitted.
        """
        run = self.state
        run.snap.concurrency = run.inflight.current
        run.snap.spent = run.spent
        run.hook.on_start(run.snap)
        with run.main_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.scheduler)
                for _ in range(run.limits.poll_workers):
                    tg.start_soon(poll_worker, run)
                for _ in range(run.limits.download_workers):
                    tg.start_soon(download_worker, run)
                with run.submit_scope:
                    async with anyio.create_task_group() as sub:
                        sub.start_soon(self._adopt_earlier, started_at)
                        sub.start_soon(self._feeder)
                        for _ in range(max(1, run.limits.concurrency)):
                            sub.start_soon(submit_worker, run)
                for task in run.queue.drain():  # queued after a stop: still pending
                    run.settle(task)
                # Submissions ended: everything was fed, or a stop. Wait for the tasks in
                # flight unless the stop says to leave them to the next run.
                if not run.stopping or run.draining:
                    with run.drain_scope:
                        await run.idle.wait()
                tg.cancel_scope.cancel()
        run.update()
        run.hook.on_finish(run.snap)

    async def _adopt_earlier(self, started_at: float) -> None:
        """Pick up what an earlier run left at the service or half-downloaded."""
        run = self.state
        run.adopting = True
        try:
            for state in (TaskState.RUNNING, TaskState.DOWNLOADING):
                after = (-1, "")
                while True:
                    rows = await run.ledger.page(
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
                        task = run.take(row)
                        task.adopted = True
                        if state is TaskState.RUNNING and row.remote_id:
                            task.slot = True
                            run.inflight.in_use += 1
                            run.schedule(0.0, "poll", task)
                        else:
                            await run.dl_send.send(task)
        finally:
            run.adopting = False
            run.check_idle()

    async def _feeder(self) -> None:
        run = self.state
        after = (-1, "")
        try:
            while not run.stopping:
                rows = await run.ledger.page([TaskState.PENDING], after=after, limit=500)
                if not rows:
                    break
                for row in rows:
                    after = (row.seq, row.key)
                    task = run.take(row)
                    try:
                        queued = await run.queue.put_fresh(task)
                    except BaseException:
                        run.settle(task)  # cancelled (a stop): it stays pending
                        raise
                    if not queued:  # a stop closed the queue: it stays pending
                        run.settle(task)
                        return
        finally:
            run.feeding_done = True
            run.check_idle()
