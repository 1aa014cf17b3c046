"""Reading and amending a job's ledgers outside a run: status, retry, export, the card.

``status`` and ``export`` read (never write) every ledger of the job, shards included,
so they work while runs write them. ``retry`` changes rows, so it takes each ledger's
lease like a run does, and is refused while a run holds it. ``export --format hf``
rewrites ``metadata.jsonl`` from every ledger (its rows are made by
:func:`batchgen.output.merge.manifest_rows`) and writes the dataset card beside it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from batchgen.errors import REFETCHABLE_CODES, LedgerError, UsageError
from batchgen.ledger.job import open_job
from batchgen.ledger.lease import hold, read_holder
from batchgen.ledger.paths import job_ledgers, ledger_path
from batchgen.ledger.schema import MEASURED_META, TaskState
from batchgen.ledger.store import Ledger
from batchgen.output.card import CardFacts, write_card
from batchgen.output.merge import manifest_rows
from batchgen.output.tree import write_metadata
from batchgen.spec.load import Spec

__all__ = ["export_card", "export_rows", "job_status", "retry_tasks"]


async def job_status(spec: Spec) -> dict[str, Any]:
    """Counts by state (every state, ``unknown`` included), failures by code, spend, and
    who is running the job now; across every shard of a sharded job."""
    counts: Counter[str] = Counter({s.value: 0 for s in TaskState})
    failures: Counter[str] = Counter()
    spent = remaining = 0.0
    regenerations = 0
    measured: list[float | None] = []
    changed = False
    not_in_spec = 0
    last: dict[str, Any] | None = None
    running: list[str] = []
    shards: dict[str, dict[str, int]] = {}
    async with open_job(spec) as job:
        for shard, ledger in job.ledgers:
            these = await ledger.counts()
            counts.update(these)
            failures.update(await ledger.failures_by_code())
            totals = await ledger.totals()
            spent += totals["spent"]
            remaining += totals["remaining"]
            regenerations += int(totals["regenerations"])
            digest, spec_tasks = await ledger.last_synced()
            changed = changed or (digest or "").partition(":")[0] != spec.digest
            if spec_tasks is not None:
                not_in_spec += sum(these.values()) - spec_tasks
            text = await ledger.get_meta(MEASURED_META)
            measured.append(None if text is None else float(text))
            summary = await ledger.last_run_summary()
            if summary is not None and (
                last is None or summary["finished_at"] > last["finished_at"]
            ):
                last = summary
            holder = await ledger.read(read_holder) if "lease" in ledger.tables else None
            if holder is not None:
                running.append(holder.describe())
            if shard is not None:
                shards[shard.name] = {k: v for k, v in these.items() if v}
        paths = [str(ledger.path) for _, ledger in job.ledgers]
    return {
        "job": spec.name,
        "spec": str(spec.path),
        "ledger": paths[0] if len(paths) == 1 else paths,
        "tasks": sum(counts.values()),
        "counts": dict(counts),
        "failures_by_code": dict(failures.most_common()),
        "spent": round(spent, 6),
        "spent_measured": None if None in measured else round(sum(m or 0.0 for m in measured), 6),
        "remaining": round(remaining, 6),
        "currency": spec.currency,
        "regenerations": regenerations,
        "spec_changed": changed,
        "not_in_spec": not_in_spec,
        "last_run": last,
        "running": running,
        "shards": shards,
    }


async def retry_tasks(
    spec: Spec, *, failed: bool, unknown: bool, code: str | None = None
) -> list[str]:
    """Mark tasks for the next run; return one line per kind of change.

    Failed tasks whose images exist at the service (a download failed) go back to
    ``downloading`` (no new charge); those that gave up polling go back to ``running``;
    the others to ``pending``, attempts reset. ``unknown`` tasks go to ``pending``:
    they may already have been charged, so resubmitting may pay twice.
    """
    if not failed and not unknown:
        raise UsageError("nothing to retry: give --failed and/or --unknown")
    lines: list[str] = []
    found = job_ledgers(spec)
    if not found:
        raise LedgerError(f"no ledger at {ledger_path(spec)}: nothing has run yet")
    for shard, path in found:
        async with (
            Ledger.open(path, create=False) as ledger,
            hold(ledger, command="batchgen retry"),
        ):
            changes = await _retry(ledger, failed=failed, unknown=unknown, code=code)
        lines += [f"shard {shard}: {line}" if shard is not None else line for line in changes]
    return lines


async def _retry(ledger: Ledger, *, failed: bool, unknown: bool, code: str | None) -> list[str]:
    lines: list[str] = []
    where_code = "error_code = ?" if code else ""
    params = [code] if code else []
    if failed:
        codes = sorted(REFETCHABLE_CODES)
        marks = ", ".join("?" for _ in codes)
        redownload = await ledger.bulk_set_state(
            from_states=[TaskState.FAILED],
            to_state=TaskState.DOWNLOADING,
            detail="retry: download again",
            where=" AND ".join(
                w for w in (f"error_code IN ({marks}) AND urls IS NOT NULL", where_code) if w
            ),
            params=[*codes, *params],
            reset_attempts=True,
            clear_error=True,
        )
        repoll = await ledger.bulk_set_state(
            from_states=[TaskState.FAILED],
            to_state=TaskState.RUNNING,
            detail="retry: poll again",
            restart_clock=True,
            where=" AND ".join(
                w
                for w in ("error_code = 'task_timeout' AND remote_id IS NOT NULL", where_code)
                if w
            ),
            params=params,
            clear_error=True,
        )
        resubmit = await ledger.bulk_set_state(
            from_states=[TaskState.FAILED],
            to_state=TaskState.PENDING,
            detail="retry: resubmit",
            where=where_code,
            params=params,
            reset_attempts=True,
            clear_error=True,
        )
        lines.append(
            f"failed: {resubmit} to resubmit, {redownload} to download again,"
            f" {repoll} to poll again"
        )
    if unknown:
        count = await ledger.bulk_set_state(
            from_states=[TaskState.UNKNOWN],
            to_state=TaskState.PENDING,
            detail="retry: resubmit unknown (may pay twice)",
            where=where_code,
            params=params,
            clear_error=True,
        )
        lines.append(f"unknown: {count} to resubmit (each may already have been charged)")
    return lines


async def export_rows(spec: Spec) -> list[dict[str, Any]]:
    """Every task of the job (all its shards) with its inputs and results, in plan order."""
    rows: list[dict[str, Any]] = []
    async with open_job(spec) as job:
        async for row in job.iter_rows():
            vars_ = dict(row.vars)
            rows.append(
                {
                    "key": row.key,
                    "state": row.state.value,
                    "model": row.model,
                    "aspect_ratio": vars_.get("aspect_ratio"),
                    "image_size": vars_.get("image_size"),
                    "prompt": row.prompt,
                    "vars": vars_,
                    "remote_id": row.remote_id,
                    "attempts": row.attempts,
                    "error_code": row.error_code,
                    "error_message": row.error_message,
                    "price": row.price,
                    "charged": row.charged,
                    "path": row.path,
                    "bytes": row.bytes,
                    "sha256": row.sha256,
                    "files": list(row.files),
                }
            )
    return rows


async def export_card(spec: Spec) -> Path:
    """Rewrite ``metadata.jsonl`` from the ledger and write the ``README.md`` dataset card
    beside it (Hugging Face format); return the card's path."""
    root = Path(spec.output_dir)
    models: Counter[str] = Counter()
    variables: dict[str, None] = {}
    folders: set[str] = set()
    finished: list[float] = []
    served = False
    images = 0
    async with open_job(spec) as job:  # raises LedgerError when nothing has run yet
        await write_metadata(root, manifest_rows(job))
        counts = await job.counts()
        async for row in job.iter_rows([TaskState.DONE]):
            for entry in row.files:
                images += 1
                models[row.model] += 1
                variables.update(dict.fromkeys(row.vars))
                path = str(entry.get("path", ""))
                folders.add(path.split("/", 1)[0] if "/" in path else "")
                served |= "served_sha256" in entry
            if row.finished_at:
                finished.append(row.finished_at)
    day = "%Y-%m-%d"
    facts = CardFacts(
        name=spec.name,
        description=spec.description,
        spec_file=spec.path.name,
        spec_digest=spec.digest,
        images=images,
        tasks=sum(counts.values()),
        counts=counts,
        models=dict(models),
        variables=list(variables),
        folders=sorted(folders),
        first_made=time.strftime(day, time.gmtime(min(finished))) if finished else "",
        last_made=time.strftime(day, time.gmtime(max(finished))) if finished else "",
        served_sha256=served,
        embed=spec.embed,
        generated=[
            {
                "name": g.name,
                "model": g.model,
                "count": g.count,
                "instruction": g.instruction,
                "generated_at": g.locked.generated_at if g.locked else "",
            }
            for g in spec.generated
        ],
    )
    return write_card(root, facts)
