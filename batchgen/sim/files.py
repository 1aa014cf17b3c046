"""The simulator's result-file host: ``GET /files/<task>-<n>.png`` with its own faults.

Like the object storage behind the real service, it needs no credentials, serves an
image only once its task has succeeded, forgets it ``url_ttl`` seconds after the task
ended, and (when configured) cuts downloads short or streams far too much. Images are
rendered at first download and cached; nothing is rendered at submission.
"""

from __future__ import annotations

from batchgen.sim.images import ImageCache, RenderedImage, RenderParams
from batchgen.sim.state import SUCCEEDED, SimState, Task
from batchgen.sim.wire import ConnectionDrop, Request, error

__all__ = ["FileHost"]

_CHUNK = 1024 * 1024
_OVERSIZE_TOTAL = 64 * _CHUNK + _CHUNK  # past any sane client cap
_PNG = (b"content-type", b"image/png")


class FileHost:
    """Serves result images of ``state``'s tasks from ``cache``."""

    def __init__(self, state: SimState, cache: ImageCache) -> None:
        self.state = state
        self.cache = cache

    def image(self, task: Task, index: int) -> RenderedImage:
        """Image ``index`` of ``task`` at the configured scale (rendered once, then cached)."""
        params = RenderParams.for_request(
            task.model, task.prompt, task.aspect, task.size,
            variant=index, scale=self.state.config.image_scale,
        )  # fmt: skip
        return self.cache.get(params)

    async def download(self, req: Request) -> None:
        """Answer one download: the PNG, 404 (unknown, unfinished, expired), or a fault.

        Counts downloads that carry credentials (clients must never send them), and
        records the digest of every complete download on its task.
        """
        state, counters, config = self.state, self.state.counters, self.state.config
        if b"authorization" in req.headers or b"cookie" in req.headers:
            counters.downloads_with_credentials += 1
        stem, _, ext = req.path[len("/files/") :].rpartition(".")
        task_id, _, index_text = stem.rpartition("-")
        task = state.tasks.get(task_id)
        index = int(index_text) if index_text.isdigit() else -1
        if ext != "png" or task is None or not 0 <= index < task.images:
            raise error(404, "file_not_found", "文件不存在 (no such file)")
        if state.view(task).status != SUCCEEDED:
            raise error(404, "file_not_found", "文件不存在 (no such file)")
        if state.now() > task.ends + config.url_ttl:
            counters.downloads_expired += 1
            raise error(404, "url_expired", "链接已过期 (result URL expired)")
        image = self.image(task, index)
        data = image.data
        if state.roll(config.truncate_rate):
            counters.downloads_truncated += 1
            await req.start(200, [_PNG, (b"content-length", str(len(data)).encode())])
            await req.chunk(data[: len(data) // 2])
            raise ConnectionDrop
        if state.roll(config.oversize_rate):
            counters.downloads_oversize += 1
            await req.start(200, [_PNG])  # no Content-Length: only a size cap can stop it
            await req.chunk(data)
            filler = bytes(_CHUNK)
            for _ in range(_OVERSIZE_TOTAL // _CHUNK):
                await req.chunk(filler)
            await req.chunk(b"", more=False)
            return
        await req.respond(200, data, [_PNG])
        counters.downloads += 1
        task.record_served(image.sha256)
