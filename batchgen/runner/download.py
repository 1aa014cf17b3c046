"""The download stage: from a finished task's images to files in the output tree.

A download worker saves every image of a task (fetched from its URL through the
credential-free :class:`~batchgen.output.fetch.Downloader`, or inline bytes) to the
task's layout path inside the output folder, then commits ``done`` with each file's
size, sha256 and dimensions. Errors go to :func:`.policy.download_failed`.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchgen.errors import ConfigError, DownloadError
from batchgen.ledger.schema import TaskState, Transition
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
    except (DownloadError, ConfigError, OSError) as exc:
        await download_failed(run, task, exc)
        return
    first = saved[0]
    files = [
        {
            "path": str(s.path.relative_to(run.output_dir.resolve())),
            "bytes": s.size,
            "sha256": s.sha256,
            "width": s.width,
            "height": s.height,
        }
        for s in saved
    ]
    await run.ledger.write(
        Transition(
            task.key,
            TaskState.DONE,
            path=files[0]["path"],
            bytes=first.size,
            sha256=first.sha256,
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
