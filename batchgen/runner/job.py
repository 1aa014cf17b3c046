"""A run of a job: start-up, recovery, the pipeline, and what is left behind.

:func:`arun` (and its blocking twin :func:`run`) is the library entry point the CLI
wraps. It opens the job's ledger, turns rows a crashed run left ``submitting`` into
``unknown`` (they may have been charged), syncs the spec's tasks into the ledger
(skipped when the spec did not change), checks that finished files are still in place,
runs the :class:`~batchgen.pipeline.Pipeline`, then rewrites ``metadata.jsonl`` and
``summary.json`` from the ledger, so the manifest always matches the files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts
from batchgen.api.client import CobabaClient
from batchgen.errors import ConfigError, LedgerError, leaf_error
from batchgen.ledger.schema import LEDGER_NAME, NewTask, TaskState, Transition
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import PART_SUFFIX, Downloader, is_local_host
from batchgen.output.tree import (
    METADATA_NAME,
    SUMMARY_NAME,
    layout_relpath,
    write_atomic,
    write_metadata,
)
from batchgen.runner.pipeline import Pipeline, PipelineLimits
from batchgen.runner.progress import NullHook, ProgressHook, Snapshot
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import count_tasks, expand
from batchgen.spec.request import materialize_request

__all__ = [
    "RunHandle",
    "RunOptions",
    "RunSummary",
    "arun",
    "ledger_path",
    "run",
    "sim_session",
    "summarize",
]

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130
_METADATA_MARKER = "metadata_written_at"  # newest event id and spec digest then


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


@dataclass(slots=True)
class RunSummary:
    """What a run did, and where the job stands. Also saved as ``summary.json``."""

    job: str
    spec: str
    output: str
    tasks: int
    counts: dict[str, int]
    this_run: dict[str, Any]
    failures_by_code: dict[str, int]
    spent_total: float
    not_in_spec: int
    elapsed: float
    stop_reason: str | None
    exit_code: int
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    @property
    def complete(self) -> bool:
        """Whether every task of the spec is done."""
        return self.counts.get("done", 0) == self.tasks


def ledger_path(spec: Spec) -> Path:
    """Where the ledger of ``spec`` lives: ``<output>/batchgen.sqlite``."""
    return Path(spec.output_dir) / LEDGER_NAME


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
    )


def _new_tasks(spec: Spec) -> Iterator[NewTask]:
    for task in expand(spec):
        fields: dict[str, object] = dict(task.vars)
        fields.update(
            prompt=task.prompt,
            model=task.model,
            aspect_ratio=task.aspect_ratio,
            image_size=task.image_size,
            variant=task.variant,
            index=task.index,
        )
        yield NewTask(
            key=task.key,
            seq=task.index,
            endpoint=task.endpoint,
            model=task.model,
            prompt=task.prompt,
            request=task.request,
            vars=task.vars,
            layout_path=layout_relpath(spec.layout, fields, key=task.key),
            price=task.price,
        )


async def _startup(ledger: Ledger, spec: Spec, options: RunOptions, hook: ProgressHook) -> int:
    """Recover, sync, verify files. Returns how many tasks a previous run left unknown."""
    recovered = await ledger.bulk_set_state(
        from_states=[TaskState.SUBMITTING],
        to_state=TaskState.UNKNOWN,
        detail="a run stopped between sending and recording the answer",
        error=("interrupted", "the run stopped before the answer was recorded"),
    )
    if recovered:
        hook.on_message(
            "warning",
            f"{recovered} task(s) were being submitted when the last run stopped: marked"
            " unknown (they may have been charged); `batchgen retry SPEC --unknown` resubmits",
        )
    digest, known = await ledger.last_synced()
    if not (digest == spec.digest and known is not None and await ledger.adopt_last_sync()):
        added, seen = await ledger.sync(_new_tasks(spec))
        if added and added != seen:
            hook.on_message("info", f"the spec adds {added} new task(s) to this job")
    missing = await ledger.count_not_in_run()
    if missing:
        hook.on_message(
            "info", f"{missing} task(s) in the ledger are no longer in the spec: left alone"
        )
    if options.resubmit_unknown or spec.limits.resubmit_unknown:
        count = await ledger.bulk_set_state(
            from_states=[TaskState.UNKNOWN],
            to_state=TaskState.PENDING,
            detail="resubmit unknown (policy)",
            in_run=True,
        )
        if count:
            hook.on_message("warning", f"resubmitting {count} unknown task(s) (policy)")
    await _verify_files(ledger, Path(spec.output_dir), hook)
    _clean_partials(Path(spec.output_dir))
    return missing


async def _verify_files(ledger: Ledger, root: Path, hook: ProgressHook) -> None:
    """Send done tasks whose file is missing or has the wrong size back to download."""
    redo: list[Transition] = []
    async for key, files in ledger.done_files():
        for entry in files:
            path = root / str(entry.get("path", ""))
            try:
                ok = path.stat().st_size == entry.get("bytes")
            except OSError:
                ok = False
            if not ok:
                redo.append(
                    Transition(
                        key, TaskState.DOWNLOADING, detail=f"file missing or damaged: {path.name}"
                    )
                )
                break
    if redo:
        await ledger.write(*redo)
        hook.on_message(
            "warning", f"{len(redo)} finished file(s) are missing or damaged: downloading again"
        )


def _clean_partials(root: Path) -> None:
    """Remove ``*.part`` files a killed run left behind (their task is not done)."""
    if not root.exists():
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(PART_SUFFIX) and name.startswith("."):
                Path(dirpath, name).unlink(missing_ok=True)


async def _write_metadata(ledger: Ledger, spec: Spec, output: Path) -> None:
    """Rewrite ``metadata.jsonl`` from the ledger unless it already says the same.

    The file is current when no task changed state since it was last written (the
    newest event id is the one recorded then), the spec is the same (its digest, which
    also covers a re-sync: the same spec syncs to the same rows), and the file is
    still there. Rebuilding it from every row would cost a
    resume of a large finished job seconds for nothing.
    """
    marker = f"{await ledger.last_event_id()}:{spec.digest}"
    if await ledger.get_meta(_METADATA_MARKER) == marker and (output / METADATA_NAME).is_file():
        return
    await write_metadata(output, _metadata_rows(ledger))
    await ledger.set_meta(_METADATA_MARKER, marker)


async def _metadata_rows(ledger: Ledger) -> AsyncIterator[dict[str, Any]]:
    async for row in ledger.iter_rows([TaskState.DONE], in_run=False):
        vars_ = dict(row.vars)
        for entry in row.files:
            yield {
                "file_name": entry.get("path"),
                "prompt": row.prompt,
                "model": row.model,
                "aspect_ratio": vars_.get("aspect_ratio"),
                "image_size": vars_.get("image_size"),
                "vars": vars_,
                "key": row.key,
                "sha256": entry.get("sha256"),
                "width": entry.get("width"),
                "height": entry.get("height"),
            }


async def summarize(
    ledger: Ledger, spec: Spec, *, started: float, pipeline: Pipeline | None
) -> RunSummary:
    """Build the summary of the job as the ledger has it, and of this run."""
    counts = await ledger.counts(in_run=True)
    totals = await ledger.totals()
    tasks = sum(counts.values())
    this_run: dict[str, Any] = {}
    stop_reason = None
    messages: list[str] = []
    if pipeline is not None:
        this_run = pipeline.snap.as_dict()
        this_run["budget_skipped"] = pipeline.budget_skipped
        this_run["parked"] = pipeline.parked
        stop_reason = pipeline.stop_reason
        if pipeline.parked:
            messages.append(
                f"{pipeline.parked} task(s) parked: the service asked to wait"
                f" {pipeline.parked_delay or 0:,.0f}s"
            )
    not_in_spec = await ledger.count_not_in_run()
    if stop_reason in ("interrupted", "aborted"):
        code = EXIT_INTERRUPTED
    elif counts.get("done", 0) == tasks:
        code = EXIT_OK
    else:
        code = EXIT_INCOMPLETE
    return RunSummary(
        job=spec.name,
        spec=str(spec.path),
        output=str(spec.output_dir),
        tasks=tasks,
        counts=counts,
        this_run=this_run,
        failures_by_code=await ledger.failures_by_code(),
        spent_total=totals["spent"],
        not_in_spec=not_in_spec,
        elapsed=round(time.monotonic() - started, 3),
        stop_reason=stop_reason,
        exit_code=code,
        messages=messages,
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
    base_url = options.base_url or spec.base_url
    auth = options.auth or BearerAuth.from_env()
    total = count_tasks(spec)
    limit = options.max_tasks or spec.limits.max_tasks
    if total > limit:
        raise ConfigError(
            f"the job expands to {total:,} tasks, more than max_tasks ({limit:,});"
            " raise limits.max_tasks or pass --max-tasks",
            code="too_many_tasks",
        )
    started = time.monotonic()
    limits = _limits(spec, options)
    host = urlsplit(base_url).hostname or ""
    allow_local = options.allow_local_results
    if allow_local is None:
        allow_local = is_local_host(host)
    output = Path(spec.output_dir)
    async with AsyncExitStack() as stack:
        ledger = await stack.enter_async_context(Ledger.open(ledger_path(spec)))
        await ledger.begin_run(argv=list(options.argv) or sys.argv, spec_digest=spec.digest)
        await _startup(ledger, spec, options, hook)
        client = await stack.enter_async_context(
            CobabaClient(
                auth=auth,
                base_url=base_url,
                timeouts=Timeouts(submit=spec.limits.submit_timeout, poll=spec.limits.poll_timeout),
                max_connections=max(limits.concurrency, limits.poll_workers) + 8,
            )
        )
        downloader = await stack.enter_async_context(
            Downloader(
                max_bytes=spec.limits.max_image_bytes,
                timeout=spec.limits.download_timeout,
                allow_local=allow_local,
                max_connections=limits.download_workers + 4,
            )
        )
        counts = await ledger.counts(in_run=True)
        totals = await ledger.totals()
        snap = Snapshot(
            total=sum(counts.values()),
            already_done=counts["done"],
            to_do=sum(counts.values()) - counts["done"] - counts["failed"] - counts["unknown"],
        )
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
        )
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
                summary = await _close_run(ledger, spec, output, hook, started, pipeline)
        if pipeline.fatal is not None:
            raise pipeline.fatal
        return summary


async def _close_run(
    ledger: Ledger,
    spec: Spec,
    output: Path,
    hook: ProgressHook,
    started: float,
    pipeline: Pipeline,
) -> RunSummary:
    """Write the manifest and the summary, and record the end of the run.

    Each step is tried on its own: on a full disk the error that stopped the run must
    reach the user, not a second failure of the clean-up. What is skipped here is
    rebuilt from the ledger by the next run.
    """
    try:
        await _write_metadata(ledger, spec, output)
    except OSError as exc:
        hook.on_message("warning", f"could not rewrite {output / 'metadata.jsonl'}: {exc}")
    summary = await summarize(ledger, spec, started=started, pipeline=pipeline)
    try:
        await ledger.end_run(summary.as_dict())
    except LedgerError as exc:
        hook.on_message("warning", f"could not record the end of the run: {exc}")
    try:
        write_atomic(output / SUMMARY_NAME, _json(summary.as_dict()))
    except OSError as exc:
        hook.on_message("warning", f"could not write {output / SUMMARY_NAME}: {exc}")
    return summary


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def run(
    spec: Spec | str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    hook: ProgressHook | None = None,
) -> RunSummary:
    """Blocking form of :func:`arun`."""
    return anyio.run(lambda: arun(spec, options, hook=hook), backend="asyncio")


@asynccontextmanager
async def sim_session(**config: Any) -> AsyncIterator[tuple[str, BearerAuth]]:
    """Start the built-in simulator in-process; yield its base URL and a key for it."""
    from batchgen.sim import SimConfig, running_simulator

    key = "sk-sim-" + os.urandom(8).hex()
    sim_config = SimConfig(**config)
    sim_config.keys = [key]
    async with running_simulator(sim_config) as sim:
        yield sim.base_url, BearerAuth(key)
