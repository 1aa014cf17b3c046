"""A run of a job: start-up, recovery, the pipeline, and what is left behind.

:func:`arun` (and its blocking twin :func:`run`) is the library entry point the CLI
wraps. It opens the job's ledger, turns rows a crashed run left ``submitting`` into
``unknown`` (they may have been charged), syncs the spec's tasks into the ledger
(skipped when the spec did not change), checks that finished files are still in place,
runs the :class:`~batchgen.pipeline.Pipeline`, then rewrites ``metadata.jsonl`` and
``summary.json`` from the ledger, so the manifest always matches the files.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts, auth_from_env
from batchgen.api.client import PLAYGROUND_ENDPOINTS, CobabaClient
from batchgen.errors import ConfigError, LeaseHeldError, SpecError, UsageError, leaf_error
from batchgen.i18n import _
from batchgen.ledger.lease import Holder, hold, refuse_if_held
from batchgen.ledger.paths import Shard, check_layout, ledger_path
from batchgen.ledger.schema import MEASURED_META
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import Downloader, is_local_host
from batchgen.preflight.before_run import before_run
from batchgen.runner.budget import Budget
from batchgen.runner.locking import lock_for_run
from batchgen.runner.pipeline import Pipeline, PipelineLimits
from batchgen.runner.progress import NullHook, ProgressHook, Snapshot
from batchgen.runner.service_limit import ServiceLimit
from batchgen.runner.startup import remembered_limit, startup, sync_digest
from batchgen.runner.state import submit_throttle
from batchgen.runner.summary import RunSummary, close_run
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.lock import unlocked_issues
from batchgen.spec.matrix import count_tasks
from batchgen.spec.request import materialize_request

__all__ = ["RunHandle", "RunOptions", "arun", "run", "sim_session"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What the command line (or a library caller) adds to the spec."""

    base_url: str | None = None
    concurrency: int | None = None
    rpm: float | None = None
    max_tasks: int | None = None
    resubmit_unknown: bool = False
    auth: BearerAuth | PlaygroundAuth | None = None
    allow_local_results: bool | None = None
    argv: Sequence[str] = ()
    stop_grace: float = 30.0
    seed: int | None = None
    first_poll: float | None = None
    reply: str | None = None  # overrides the spec's api.reply
    check: bool = True  # the preflight (a few GETs); --no-check skips it
    shard: Shard | None = None  # run only this shard's tasks, in its own ledger
    take_over: bool = False  # take the ledger's lease even from a live-looking holder


def _limits(spec: Spec, options: RunOptions) -> PipelineLimits:
    lim = spec.limits
    concurrency = options.concurrency or lim.concurrency
    return PipelineLimits(
        concurrency=concurrency,
        requests_per_minute=options.rpm if options.rpm is not None else lim.requests_per_minute,
        burst=lim.burst,
        max_attempts=lim.max_attempts,
        task_timeout=lim.task_timeout,
        budget=lim.budget,
        resubmit_unknown=options.resubmit_unknown or lim.resubmit_unknown,
        max_retry_after=lim.max_retry_after,
        poll_workers=max(4, min(64, concurrency)),
        download_workers=max(2, min(16, concurrency)),
        stop_grace=options.stop_grace,
        seed=options.seed,
        first_poll=options.first_poll if options.first_poll is not None else 1.0,
        reply=options.reply or spec.reply,
        currency=spec.currency,
        embed=spec.embed,
        job=spec.name,
    )


class RunHandle:
    """Lets the caller stop a run: graceful first, at once the second time."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.requests = 0

    def interrupt(self) -> None:
        """First call: stop submitting and record what is in flight. Second: abort."""
        self.requests += 1
        if self.pipeline is None:
            return
        if self.requests == 1:
            self.pipeline.request_stop("interrupted")
        else:
            self.pipeline.abort()


async def arun(
    spec: Spec | str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    hook: ProgressHook | None = None,
    handle: RunHandle | None = None,
) -> RunSummary:
    """Run (or resume) a job and return its summary.

    Raises SpecError for a bad spec, ConfigError for a missing key or bad URL,
    AuthenticationError when the key is refused (the ledger is left consistent), and
    LedgerError when the ledger cannot be used.
    """
    options = options or RunOptions()
    hook = hook or NullHook()
    if not isinstance(spec, Spec):
        spec = load_spec(spec, base_url=options.base_url, max_tasks=options.max_tasks)
    if spec.stale:  # nothing regenerates silently: `batchgen lock --refresh` does
        raise SpecError(unlocked_issues(spec.display_path, spec.stale))
    base_url = options.base_url or spec.base_url
    auth = options.auth or auth_from_env()
    if isinstance(auth, PlaygroundAuth) and spec.endpoint not in PLAYGROUND_ENDPOINTS:
        raise ConfigError(
            f"the playground (COBABA_SESSION) has no {spec.endpoint} route: use an API key"
            f" (COBABA_API_KEY) or api.endpoint {' or '.join(sorted(PLAYGROUND_ENDPOINTS))}",
            code="playground_route",
        )
    total = count_tasks(spec)
    limit = options.max_tasks or spec.limits.max_tasks
    if total > limit:
        raise ConfigError(
            _(
                "the job expands to {total:,} tasks, more than max_tasks ({limit:,});"
                " raise limits.max_tasks or pass --max-tasks"
            ).format(total=total, limit=limit),
            code="too_many_tasks",
        )
    shard = options.shard
    if shard is not None and spec.unlocked:
        # Shards lock nothing: each would ask for its own values and run another matrix.
        raise UsageError(
            _(
                "{spec}: generated axes ({axes}) have no lock yet, and shards cannot write"
                " one: run `batchgen lock {spec}` once, commit the lock file, then start"
                " the shards"
            ).format(spec=spec.display_path, axes=", ".join(g.name for g in spec.unlocked)),
            code="unlocked_shards",
        )
    root = ledger_path(spec)
    root_has_tasks = True
    if shard is not None and root.exists():  # a ledger `batchgen lock` alone wrote?
        async with Ledger.open(root, read_only=True) as lock_ledger:
            root_has_tasks = sum((await lock_ledger.counts()).values()) > 0
    check_layout(spec, shard, root_has_tasks=root_has_tasks)
    started = time.monotonic()
    limits = _limits(spec, options)
    host = urlsplit(base_url).hostname or ""
    allow_local = options.allow_local_results
    if allow_local is None:
        allow_local = is_local_host(host)
    output = Path(spec.output_dir)
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            CobabaClient(
                auth=auth,
                base_url=base_url,
                timeouts=Timeouts(submit=spec.limits.submit_timeout, poll=spec.limits.poll_timeout),
                max_connections=max(limits.concurrency, limits.poll_workers) + 8,
            )
        )
        if not options.take_over:  # another run of the job: say so before asking anything
            await refuse_if_held(ledger_path(spec, shard))
        # Before the ledger is touched: a refused key or an unusable model ends the run
        # with nothing written and nothing paid.
        prepared = await before_run(spec, client, check=options.check)
        for level, text in prepared.messages:
            hook.on_message(level, text)
        spec = prepared.spec
        ledger = await stack.enter_async_context(Ledger.open(ledger_path(spec, shard)))
        # One writer per ledger: a second run of the job is refused here, unchanged.
        lost: list[Pipeline] = []
        await stack.enter_async_context(
            hold(
                ledger,
                command=" ".join(["batchgen run", *([f"--shard {shard}"] if shard else [])]),
                take_over=options.take_over,
                on_message=hook.on_message,
                on_lost=lambda holder: _lease_lost(lost, holder),
            )
        )
        # One throttle for the chat calls of a lock (if the spec needs one) and the
        # submissions after it: the gateway counts both in the same window.
        throttle = submit_throttle(
            limits, random.Random(limits.seed), ServiceLimit(clock=anyio.current_time)
        )
        assert throttle.limit is not None
        limit_saved = await remembered_limit(ledger, throttle.limit, client.base_url, hook)
        before_lock = (await ledger.totals())["spent"]
        if spec.unlocked:
            spec = await lock_for_run(
                spec,
                ledger=ledger,
                client=client,
                throttle=throttle,
                budget=Budget(
                    limit=spec.limits.budget,
                    spent_before=before_lock,
                    balance=prepared.balance,
                    clock=anyio.current_time,
                ),
                spent=before_lock,
                hook=hook,
            )
        await ledger.begin_run(argv=list(options.argv) or sys.argv, spec_digest=sync_digest(spec))
        await startup(
            ledger, spec, resubmit_unknown=options.resubmit_unknown, hook=hook, shard=shard
        )
        downloader = await stack.enter_async_context(
            Downloader(
                max_bytes=spec.limits.max_image_bytes,
                timeout=spec.limits.download_timeout,
                allow_local=allow_local,
                max_connections=limits.download_workers + 4,
                part_tag=shard.name if shard is not None else "",
            )
        )
        counts = await ledger.counts(in_run=True)
        totals = await ledger.totals()
        snap = Snapshot(
            total=sum(counts.values()),
            already_done=counts["done"],
            to_do=sum(counts.values()) - counts["done"] - counts["failed"] - counts["unknown"],
        )
        measured = _float(await ledger.get_meta(MEASURED_META))
        budget = Budget(
            limit=_budget_share(spec, shard, hook),
            spent_before=totals["spent"],
            # What the service measured before this run (its counter, read before any chat
            # call of the lock, is the baseline): the lock's cost is measured in this run.
            measured_before=before_lock if measured is None else measured,
            balance=prepared.balance,
            meter=prepared.meter,
            clock=anyio.current_time,
        )
        if prepared.usage is not None:
            # The counter was read before any chat call of the lock: the estimate to
            # measure against starts there too.
            budget.start(prepared.usage, before_lock)
        pipeline = Pipeline(
            ledger=ledger,
            client=client,
            downloader=downloader,
            output_dir=output,
            limits=limits,
            materialize=materialize_request,
            hook=hook,
            snapshot=snap,
            spent_before=totals["spent"],
            budget=budget,
            throttle=throttle,
        )
        lost.append(pipeline)
        pipeline.state.limit_saved = limit_saved
        if handle is not None:
            handle.pipeline = pipeline
            if handle.requests:
                pipeline.request_stop("interrupted")
        try:
            await pipeline.run(started_at=time.time())
        except BaseExceptionGroup as group:
            raise leaf_error(group) from None
        finally:
            with anyio.CancelScope(shield=True):
                summary = await close_run(
                    ledger, spec, output, hook, started, pipeline, shard=shard
                )
        if pipeline.fatal is not None:
            raise pipeline.fatal
        return summary


def _budget_share(spec: Spec, shard: Shard | None, hook: ProgressHook) -> float | None:
    """The budget this run holds: ``limits.budget``, or a shard's even share of it.

    Shards may run on machines that see nothing of one another, so each holds its
    share; the job as a whole then never spends past the budget.
    """
    budget = spec.limits.budget
    if budget is None or shard is None:
        return budget
    share = budget / shard.count
    hook.on_message(
        "info",
        f"shard {shard}: its share of limits.budget is {share:.4f} {spec.currency}"
        f" (the job's {budget:g} over {shard.count} shards)",
    )
    return share


def _lease_lost(pipelines: list[Pipeline], holder: Holder | None) -> None:
    """Another process took the lease over: stop writing at once."""
    who = holder.describe() if holder is not None else "another process"
    error = LeaseHeldError(f"the job's lease was taken over by {who}: this run stops")
    for pipeline in pipelines:
        pipeline.state.fail_run(error)


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def run(
    spec: Spec | str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    hook: ProgressHook | None = None,
) -> RunSummary:
    """Blocking form of :func:`arun`."""
    return anyio.run(lambda: arun(spec, options, hook=hook), backend="asyncio")


@asynccontextmanager
async def sim_session(
    *, profile: str | None = None, **config: Any
) -> AsyncIterator[tuple[str, BearerAuth]]:
    """Start the built-in simulator in-process; yield its base URL and a key for it.

    ``profile="gateway"`` starts it like the real service (new-api's limiter, error
    bodies and preflight routes; see ``batchgen sim --profile gateway``).
    """
    from batchgen.sim import SimConfig, gateway_profile, running_simulator

    key = "sk-sim-" + os.urandom(8).hex()
    sim_config = gateway_profile(**config) if profile == "gateway" else SimConfig(**config)
    sim_config.keys = [key]
    async with running_simulator(sim_config) as sim:
        yield sim.base_url, BearerAuth(key)
