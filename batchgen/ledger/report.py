"""Reading and amending a job's ledger outside a run: status, retry, export, the card.

The manifest's rows (:func:`metadata_rows`) are made here too: ``metadata.jsonl`` is
an export of the ledger, rewritten by every run and by ``export --format hf``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from batchgen.errors import REFETCHABLE_CODES, UsageError
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.schema import MEASURED_META, TaskState
from batchgen.ledger.store import Ledger
from batchgen.output.card import CardFacts, write_card
from batchgen.output.tree import write_metadata
from batchgen.spec.load import Spec

__all__ = ["export_card", "export_rows", "job_status", "metadata_rows", "retry_tasks"]


async def job_status(spec: Spec) -> dict[str, Any]:
    """Counts by state (every state, ``unknown`` included), failures by code, spend."""
    path = ledger_path(spec)
    async with Ledger.open(path, create=False) as ledger:
        counts = await ledger.counts()
        totals = await ledger.totals()
        failures = await ledger.failures_by_code()
        digest, spec_tasks = await ledger.last_synced()
        last = await ledger.last_run_summary()
        measured = await ledger.get_meta(MEASURED_META)
    return {
        "job": spec.name,
        "spec": str(spec.path),
        "ledger": str(path),
        "tasks": sum(counts.values()),
        "counts": counts,
        "failures_by_code": failures,
        "spent": totals["spent"],
        "spent_measured": None if measured is None else float(measured),
        "remaining": totals["remaining"],
        "currency": spec.currency,
        "regenerations": int(totals["regenerations"]),
        "spec_changed": (digest or "").partition(":")[0] != spec.digest,
        "not_in_spec": (sum(counts.values()) - spec_tasks) if spec_tasks is not None else 0,
        "last_run": last,
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
    where_code = "error_code = ?" if code else ""
    params = [code] if code else []
    async with Ledger.open(ledger_path(spec), create=False) as ledger:
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
    """Every task of the ledger with its inputs and results, in plan order."""
    rows: list[dict[str, Any]] = []
    async with Ledger.open(ledger_path(spec), create=False) as ledger:
        async for row in ledger.iter_rows():
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


async def metadata_rows(ledger: Ledger) -> AsyncIterator[dict[str, Any]]:
    """The lines of ``metadata.jsonl``: one per image of every done task, in plan order."""
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
                # With embed: parameters the file is not the service's bytes.
                **({"served_sha256": entry["served_sha256"]} if "served_sha256" in entry else {}),
            }


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
    async with Ledger.open(ledger_path(spec), create=False) as ledger:
        await write_metadata(root, metadata_rows(ledger))
        counts = await ledger.counts()
        async for row in ledger.iter_rows([TaskState.DONE]):
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
