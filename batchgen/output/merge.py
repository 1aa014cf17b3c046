"""One dataset again: a sharded job's ledgers (and trees) made into one output.

:func:`merge` writes the job's single ``metadata.jsonl`` and ``summary.json`` from all
of its ledgers. It reads them only (a snapshot each), so it is safe while shards still
run and gives a consistent partial view; run it again to bring it up to date.

Where the shards ran on machines without a shared volume, ``sources`` are their output
folders: each source's shard ledgers are copied in (SQLite's online backup, so a copy
is consistent even of a ledger being written), and every image its done tasks list is
copied into this tree, checked against the sha256 its ledger recorded. A shard present
in several places is taken from the one with the most done tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import ConfigError, LedgerError
from batchgen.ledger.job import JobLedgers, open_job
from batchgen.ledger.paths import SHARDS_DIR, job_ledgers, shard_of_folder
from batchgen.ledger.schema import LEDGER_NAME, TaskState
from batchgen.output.tree import (
    METADATA_NAME,
    SUMMARY_NAME,
    file_sha256,
    write_atomic,
    write_metadata,
)
from batchgen.spec.load import Spec
from batchgen.spec.matrix import expand

__all__ = ["MergeResult", "manifest_rows", "merge"]


@dataclass(slots=True)
class MergeResult:
    """What a merge did."""

    ledgers: int
    tasks: int
    images: int
    counts: dict[str, int]
    copied_ledgers: list[str] = field(default_factory=list)
    copied_images: int = 0
    metadata: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


async def manifest_rows(job: JobLedgers) -> AsyncIterator[dict[str, Any]]:
    """One ``metadata.jsonl`` row per saved image of the job, in plan order."""
    async for row in job.iter_rows([TaskState.DONE]):
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


async def merge(spec: Spec, *, sources: Sequence[Path] = ()) -> MergeResult:
    """Write the job's one manifest from all its ledgers (gathering ``sources`` first).

    Raises ConfigError when a source is not an output folder of this job or an image
    does not match its ledger's sha256, LedgerError when the job has no ledger.
    """
    root = Path(spec.output_dir)
    copied: list[str] = []
    images = 0
    if sources:
        keys = {task.key for task in expand(spec)}
        for source in sources:
            # Plain file work: nothing else runs meanwhile.
            got, n = _gather(Path(source), root, keys, _counts(spec))
            copied += got
            images += n
    if not job_ledgers(spec):
        raise LedgerError(f"no ledger in {root}: nothing has run yet (or give --from DIR)")
    async with open_job(spec) as job:
        counts = await job.counts()
        missing = [
            str(row["file_name"])
            async for row in manifest_rows(job)
            if not (root / str(row["file_name"])).is_file()
        ]
        if missing:
            raise ConfigError(
                f"{len(missing)} image(s) the ledgers list as saved are not in {root}"
                f" (first: {missing[0]}): give --from the output folder of the machine"
                " that ran their shard"
            )
        await write_metadata(root, manifest_rows(job))
        lines = sum(1 for _ in (root / METADATA_NAME).open(encoding="utf-8"))
        result = MergeResult(
            ledgers=len(job.ledgers),
            tasks=sum(counts.values()),
            images=lines,
            counts=counts,
            copied_ledgers=copied,
            copied_images=images,
            metadata=str(root / METADATA_NAME),
        )
    summary = {"job": spec.name, "spec": str(spec.path), "output": str(root), **result.as_dict()}
    write_atomic(root / SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return result


# --- gathering from other trees ------------------------------------------------------------


def _done(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE state = 'done'").fetchone()[0])


def _counts(spec: Spec) -> set[int]:
    """The shard counts this tree's ledgers already have."""
    return {shard.count for shard, _ in job_ledgers(spec) if shard is not None}


def _gather(source: Path, root: Path, keys: set[str], counts: set[int]) -> tuple[list[str], int]:
    """Copy ``source``'s shard ledgers and their images into ``root``.

    ``keys`` are the job's task keys (a ledger none of whose tasks is among them is of
    another job); ``counts`` the shard counts already here (one count per job).
    """
    folder = source / SHARDS_DIR
    if not folder.is_dir():
        raise ConfigError(f"{source} has no {SHARDS_DIR}/ folder: not the output of a shard run")
    copied: list[str] = []
    images = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        ledger = Path(entry.path) / LEDGER_NAME
        shard = shard_of_folder(entry.name)
        if shard is None or not ledger.is_file():
            continue
        if counts - {shard.count}:
            raise ConfigError(
                f"{source} has shard {entry.name}, but this job runs as"
                f" {min(counts)} shards: a job's shards all have one count"
            )
        counts.add(shard.count)
        target = root / SHARDS_DIR / entry.name / LEDGER_NAME
        with sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True) as conn:
            _same_job(conn, ledger, keys)
            images += _copy_images(conn, source, root)
            theirs = _done(conn)
            if target.is_file():
                with sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True) as mine:
                    if _done(mine) >= theirs:
                        continue  # ours is as far along: keep it
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.merge")
            with sqlite3.connect(temp) as copy:
                conn.backup(copy)  # consistent even while the source is written
            os.replace(temp, target)
            copied.append(f"{SHARDS_DIR}/{entry.name}")
    return copied, images


def _same_job(conn: sqlite3.Connection, ledger: Path, keys: set[str]) -> None:
    """Refuse a ledger that has tasks but none of them of this job's plan."""
    theirs = [str(key) for (key,) in conn.execute("SELECT key FROM tasks")]
    if theirs and keys.isdisjoint(theirs):
        raise ConfigError(
            f"{ledger} is not a ledger of this job: none of its {len(theirs)} tasks is in"
            " the spec's plan (another job, or the spec changed since)"
        )


def _copy_images(conn: sqlite3.Connection, source: Path, root: Path) -> int:
    """Copy every file the source's done tasks list; verify each by its sha256."""
    copied = 0
    done = conn.execute("SELECT files FROM tasks WHERE state = 'done' AND files IS NOT NULL")
    for (files,) in done:
        for entry in json.loads(files):
            rel = str(entry.get("path", ""))
            want = str(entry.get("sha256", ""))
            if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ConfigError(f"a ledger in {source} lists a file outside its tree: {rel!r}")
            dest = root / rel
            if dest.is_file() and file_sha256(dest) == want:
                continue
            src = source / rel
            if not src.is_file():
                raise ConfigError(f"{src} is missing: its shard's ledger says it was saved")
            if file_sha256(src) != want:
                raise ConfigError(f"{src} does not match the sha256 its ledger recorded")
            dest.parent.mkdir(parents=True, exist_ok=True)
            temp = dest.with_name(f".{dest.name}.merge")
            shutil.copyfile(src, temp)
            os.replace(temp, dest)
            copied += 1
    return copied
