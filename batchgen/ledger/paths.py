"""Where a job's ledgers live: one at the output's root, or one per shard.

An unsharded job keeps ``<output>/batchgen.sqlite``. A job split into N shards (run by
a scheduler: a Kubernetes Indexed Job, a Slurm array, a CI matrix) keeps one ledger
per shard, ``<output>/shards/<i>-of-<N>/batchgen.sqlite``, each written by one run
only. A task belongs to shard ``int(key, 16) % N``: a stable hash of its key, so its
shard never depends on the order of the matrix or on the other tasks. Once any shard
has started, the job's shard count is fixed (:func:`check_layout`): a task submitted by
one shard must never be submitted by another.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen.errors import UsageError
from batchgen.i18n import _
from batchgen.ledger.schema import LEDGER_NAME
from batchgen.spec.load import Spec

__all__ = [
    "SHARDS_DIR",
    "Shard",
    "check_layout",
    "job_ledgers",
    "ledger_path",
    "parse_shard",
    "shard_from_env",
    "shard_of_folder",
]

SHARDS_DIR: Final = "shards"
_NAME = re.compile(r"(\d+)-of-(\d+)")
_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count}: the index runs from 0 to count - 1",
                code="bad_shard",
            )

    @property
    def name(self) -> str:
        """The shard's folder name: ``<index>-of-<count>``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the task with this key belongs to this shard."""
        return int(key, 16) % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``"I/N"`` as a Shard (raises UsageError for anything else)."""
    match = _TEXT.fullmatch(text)
    if match is None:
        raise UsageError(f"a shard is I/N (0-based), e.g. 0/4; not {text!r}", code="bad_shard")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(env: Mapping[str, str], *, shards: int | None = None) -> Shard | None:
    """The shard a scheduler asks for, if any.

    ``BATCHGEN_SHARD=I/N``; Kubernetes Indexed Jobs set ``JOB_COMPLETION_INDEX`` (the
    count comes from ``--shards N``); Slurm arrays set ``SLURM_ARRAY_TASK_ID`` and
    ``SLURM_ARRAY_TASK_COUNT`` (ids counted from ``SLURM_ARRAY_TASK_MIN``, default 0).
    """
    if text := env.get("BATCHGEN_SHARD", "").strip():
        return parse_shard(text)
    if (index := env.get("JOB_COMPLETION_INDEX", "").strip()) and shards is not None:
        return Shard(_int(index, "JOB_COMPLETION_INDEX"), shards)
    if (task := env.get("SLURM_ARRAY_TASK_ID", "").strip()) and (
        count := env.get("SLURM_ARRAY_TASK_COUNT", "").strip()
    ):
        first = _int(env.get("SLURM_ARRAY_TASK_MIN", "0") or "0", "SLURM_ARRAY_TASK_MIN")
        return Shard(
            _int(task, "SLURM_ARRAY_TASK_ID") - first, _int(count, "SLURM_ARRAY_TASK_COUNT")
        )
    if shards is not None and env.get("JOB_COMPLETION_INDEX") is None:
        raise UsageError(
            "--shards N needs the shard's index: JOB_COMPLETION_INDEX (a Kubernetes"
            " Indexed Job sets it), or give --shard I/N",
            code="bad_shard",
        )
    return None


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a whole number", code="bad_shard") from None


def shard_of_folder(name: str) -> Shard | None:
    """The shard a ``shards/`` folder name (``I-of-N``) stands for, or None."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    index, count = int(match.group(1)), int(match.group(2))
    return Shard(index, count) if 0 <= index < count else None


def ledger_path(spec: Spec, shard: Shard | None = None) -> Path:
    """The ledger of ``spec`` (of one of its shards): see the module docstring."""
    root = Path(spec.output_dir)
    if shard is None:
        return root / LEDGER_NAME
    return root / SHARDS_DIR / shard.name / LEDGER_NAME


def job_ledgers(spec: Spec) -> list[tuple[Shard | None, Path]]:
    """Every ledger the job has: the root's, then each shard's, in shard order."""
    root = Path(spec.output_dir)
    found: list[tuple[Shard | None, Path]] = []
    if (root / LEDGER_NAME).is_file():
        found.append((None, root / LEDGER_NAME))
    folder = root / SHARDS_DIR
    if folder.is_dir():
        shards = []
        for entry in os.scandir(folder):
            shard = shard_of_folder(entry.name)
            if shard is not None and (Path(entry.path) / LEDGER_NAME).is_file():
                shards.append(shard)
        for shard in sorted(shards, key=lambda s: (s.count, s.index)):
            found.append((shard, ledger_path(spec, shard)))
    return found


def check_layout(spec: Spec, shard: Shard | None, *, root_has_tasks: bool = True) -> None:
    """Refuse a run whose sharding disagrees with the ledgers the job has already.

    Raises UsageError naming the way out: the shard count is fixed once any shard has
    started, and an unsharded job cannot be split (nor a split one joined) mid-way.
    ``root_has_tasks=False`` says the job's unsharded ledger holds only what
    ``batchgen lock`` wrote (its chat calls): no task was submitted from it, so shards
    may start beside it.
    """
    existing = job_ledgers(spec)
    counts = sorted({s.count for s, _ in existing if s is not None})
    has_root = root_has_tasks and any(s is None for s, _ in existing)
    if shard is None and counts:
        raise UsageError(
            _(
                "this job runs as {n} shards ({dir}/*-of-{n} in {output}): run each with"
                " --shard I/{n}, and `batchgen merge SPEC` for the whole; or give the job"
                " another output folder to run it unsharded"
            ).format(n=counts[0], dir=SHARDS_DIR, output=spec.output_dir),
            code="shard_mismatch",
        )
    if shard is not None and has_root:
        raise UsageError(
            _(
                "this job was run unsharded ({ledger} in {output}): it cannot be split now,"
                " since a task it submitted could be submitted again by a shard; run it"
                " without --shard, or give the sharded job another output folder"
            ).format(ledger=LEDGER_NAME, output=spec.output_dir),
            code="shard_mismatch",
        )
    if shard is not None and counts and counts != [shard.count]:
        raise UsageError(
            _(
                "this job runs as {n} shards, not {asked}: the count is fixed once a shard"
                " has started; run --shard I/{n}, or give the job another output folder to"
                " start over with another count"
            ).format(n=counts[0], asked=shard.count),
            code="shard_mismatch",
        )
