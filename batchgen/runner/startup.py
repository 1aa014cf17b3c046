"""The start of a run: what the last one left, the spec's tasks, the files on disk.

Before the stages start, :func:`startup` turns rows a crashed run left ``submitting``
into ``unknown`` (they may have been charged), syncs the spec's tasks into the ledger
(adopting the last sync when the spec did not change), applies the unknown-task
policy, sends finished tasks whose file is gone back to download, and removes the
partial files a killed run left. :func:`remembered_limit` gives the run what an
earlier one learnt of the service's rate limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from batchgen.ledger.paths import Shard
from batchgen.ledger.schema import NewTask, TaskState, Transition
from batchgen.ledger.store import Ledger
from batchgen.output.fetch import PART_SUFFIX
from batchgen.output.tree import layout_relpath
from batchgen.runner.progress import ProgressHook
from batchgen.runner.service_limit import ServiceLimit
from batchgen.runner.transitions import LIMIT_META
from batchgen.spec.load import Spec
from batchgen.spec.matrix import expand

__all__ = ["new_tasks", "remembered_limit", "startup", "sync_digest"]


def sync_digest(spec: Spec) -> str:
    """What a sync of ``spec`` depends on: its content and the prices its rows get (the
    live prices may change between runs of an unchanged spec)."""
    used = {m: spec.prices.get(m, 0.0) for m in sorted(spec.tasks_by_model)}
    prices = hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]
    return f"{spec.digest}:{prices}"


def new_tasks(spec: Spec, shard: Shard | None = None) -> Iterator[NewTask]:
    """The spec's planned tasks (of one shard) as the ledger stores them, with their
    file paths."""
    for task in expand(spec):
        if shard is not None and not shard.owns(task.key):
            continue
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


async def startup(
    ledger: Ledger,
    spec: Spec,
    *,
    resubmit_unknown: bool,
    hook: ProgressHook,
    shard: Shard | None = None,
) -> int:
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
    if not (digest == sync_digest(spec) and known is not None and await ledger.adopt_last_sync()):
        added, seen = await ledger.sync(new_tasks(spec, shard))
        if added and added != seen:
            hook.on_message("info", f"the spec adds {added} new task(s) to this job")
    missing = await ledger.count_not_in_run()
    if missing:
        hook.on_message(
            "info", f"{missing} task(s) in the ledger are no longer in the spec: left alone"
        )
    if resubmit_unknown or spec.limits.resubmit_unknown:
        count = await ledger.bulk_set_state(
            from_states=[TaskState.UNKNOWN],
            to_state=TaskState.PENDING,
            detail="resubmit unknown (policy)",
            in_run=True,
        )
        if count:
            hook.on_message("warning", f"resubmitting {count} unknown task(s) (policy)")
    await _verify_files(ledger, Path(spec.output_dir), hook)
    _clean_partials(Path(spec.output_dir), shard=shard)
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


#: A partial file this old is a killed run's, not a download in progress (a live one is
#: written to far more often than this, and its download times out well before).
STALE_PARTIAL = 600.0


def _clean_partials(root: Path, *, shard: Shard | None = None) -> None:
    """Remove ``*.part`` files a killed run left behind (their task is not done).

    A shard removes its own at once (they are named after it, and it holds its
    ledger's lease: nothing else writes them); other shards may be downloading into
    the same tree right now, so of theirs only partial files untouched for
    :data:`STALE_PARTIAL` seconds (a dead run's) are removed.
    """
    if not root.exists():
        return
    now = time.time()
    own = f".bg-{shard.name}-" if shard is not None else ""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(PART_SUFFIX) and name.startswith("."):
                path = Path(dirpath, name)
                if shard is not None and not name.startswith(own):
                    try:
                        if now - path.stat().st_mtime < STALE_PARTIAL:
                            continue
                    except OSError:
                        continue
                path.unlink(missing_ok=True)


async def remembered_limit(
    ledger: Ledger, limit: ServiceLimit, base_url: str, hook: ProgressHook
) -> int:
    """Start from the limit an earlier run learnt of this service, if any; return the
    version of ``limit`` that the ledger holds (0: none)."""
    text = await ledger.get_meta(LIMIT_META)
    if not text:
        return 0
    try:
        meta = json.loads(text)
    except ValueError:
        return 0
    if not isinstance(meta, dict) or meta.get("base_url") != base_url:
        return 0
    limit.remember(meta)
    if described := limit.describe():
        hook.on_message("info", f"pacing to the service's limit an earlier run learnt: {described}")
    return limit.version
