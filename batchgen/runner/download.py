"""The download stage: from a finished task's images to files in the output tree.

A download worker saves every image of a task (fetched from its URL through the
credential-free :class:`~batchgen.output.fetch.Downloader`, or inline bytes) to the
task's layout path inside the output folder, then commits ``done`` with each file's
size, sha256 and dimensions. With ``embed: parameters`` each file is rewritten with
its parameters inside (:mod:`batchgen.output.embed`): then ``bytes`` and ``sha256`` are
the file's, and ``served_bytes`` and ``served_sha256`` what the service served. Errors
go to :func:`.policy.download_failed`.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchgen.errors import ConfigError, DownloadError
from batchgen.ledger.schema import TaskState, Transition
from batchgen.output.embed import Provenance, embed_file
from batchgen.output.fetch import SavedImage
from batchgen.output.tree import resolve_inside
from batchgen.runner.policy import download_failed
from batchgen.runner.state import InFlight, RunState
from batchgen.runner.transitions import regenerate

__all__ = ["download_worker"]


async def download_worker(run: RunState) -> None:
    """Save the tasks the generate step hands over, one at a time, until cancelled."""
    async with run.dl_recv.clone() as receive:
        async for task in receive:
            await _download_one(run, task)


def _dest(run: RunState, task: InFlight, index: int) -> Path:
    relpath = task.row.layout_path
    if index:
        stem, _, ext = relpath.rpartition(".")
        relpath = f"{stem}-{index + 1}.{ext}"
    return resolve_inside(run.output_dir, relpath)


async def _download_one(run: RunState, task: InFlight) -> None:
    saved: list[SavedImage] = []
    try:
        if not task.results:
            # Inline images (b64_json) lost in a crash, or nothing to fetch: the only
            # way to the image is to generate it again.
            await regenerate(run, task, "no image left to download")
            return
        for index, image in enumerate(task.results):
            dest = _dest(run, task, index)
            if image.data is not None:
                saved.append(run.downloader.save_bytes(image.data, dest))
            else:
                assert image.url is not None
                saved.append(await run.downloader.fetch(image.url, dest))
        files = [_file_entry(run, task, s) for s in saved]
    except (DownloadError, ConfigError, OSError) as exc:
        await download_failed(run, task, exc)
        return
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.DONE,
            path=files[0]["path"],
            bytes=files[0]["bytes"],
            sha256=files[0]["sha256"],
            files=files,
            error_code=None,
            error_message=None,
            finished_at=time.time(),
            detail=f"saved {files[0]['path']}",
        )
    )
    run.snap.downloaded += 1
    run.update()
    run.settle(task)


def _file_entry(run: RunState, task: InFlight, saved: SavedImage) -> dict[str, object]:
    """What the ledger keeps of one saved file (embedding the parameters if asked)."""
    entry: dict[str, object] = {
        "path": str(saved.path.relative_to(run.output_dir.resolve())),
        "bytes": saved.size,
        "sha256": saved.sha256,
        "width": saved.width,
        "height": saved.height,
    }
    if run.limits.embed == "parameters":
        row = task.row
        info = Provenance(
            prompt=row.prompt,
            model=row.model,
            aspect_ratio=str(row.vars.get("aspect_ratio", "")),
            image_size=str(row.vars.get("image_size", "")),
            key=row.key,
            vars={k: str(v) for k, v in row.vars.items()},
            job=run.limits.job,
            width=saved.width,
            height=saved.height,
        )
        size, digest = embed_file(
            saved.path, info, durable=run.downloader.durable, part_tag=run.downloader.part_tag
        )
        entry.update(bytes=size, sha256=digest, served_bytes=saved.size, served_sha256=saved.sha256)
    return entry
