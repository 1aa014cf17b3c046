"""The end of a run: the manifest, the summary, and the exit code they imply.

:func:`close_run` rewrites ``metadata.jsonl`` from the ledger (only when something
changed), builds the :class:`RunSummary` of the job and of this run, records it in
the ledger and writes it to ``summary.json``; each step on its own, so the error that
stopped a run reaches the user rather than a second failure of the clean-up.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import LedgerError
from batchgen.ledger.report import metadata_rows
from batchgen.ledger.schema import MEASURED_META
from batchgen.ledger.store import Ledger
from batchgen.output.tree import METADATA_NAME, SUMMARY_NAME, write_atomic, write_metadata
from batchgen.runner.pipeline import Pipeline
from batchgen.runner.progress import ProgressHook
from batchgen.spec.load import Spec

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RunSummary",
    "close_run",
    "summarize",
    "write_metadata_if_changed",
]

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130
_METADATA_MARKER = "metadata_written_at"  # newest event id and spec digest then


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
    #: The job's spend as the service's usage counter measured it (None: not measured).
    spent_measured: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    @property
    def complete(self) -> bool:
        """Whether every task of the spec is done."""
        return self.counts.get("done", 0) == self.tasks


async def write_metadata_if_changed(ledger: Ledger, spec: Spec, output: Path) -> None:
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
    await write_metadata(output, metadata_rows(ledger))
    await ledger.set_meta(_METADATA_MARKER, marker)


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
    measured: float | None = None
    if pipeline is not None:
        this_run = pipeline.snap.as_dict()
        this_run["budget_skipped"] = pipeline.budget_skipped
        this_run["parked"] = pipeline.parked
        budget = pipeline.state.budget
        measured = budget.measured
        this_run["spent_measured"] = (
            None if budget.measured_run is None else round(budget.measured_run, 6)
        )
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
        spent_measured=None if measured is None else round(measured, 6),
    )


async def close_run(
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
    budget = pipeline.state.budget
    warning = await budget.read(pipeline.state.spent, force=True)  # what the run cost
    if warning is not None:
        hook.on_message("warning", warning)
    if budget.measured is not None:
        try:
            await ledger.set_meta(MEASURED_META, f"{budget.measured:.6f}")
        except LedgerError as exc:
            hook.on_message("warning", f"could not record the measured spend: {exc}")
    try:
        await write_metadata_if_changed(ledger, spec, output)
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
