"""The simulator's task routes: generate, draw, result, and their SSE streams.

``/v1/api/generate`` (replyType json, stream or async), ``/v1/draw/nano-banana`` and
``/v1/draw/completions`` (webhook ``"-1"`` for a task id, else a stream) and
``/v1/draw/result`` (the poll), with their playground twins. :meth:`TaskRoutes.result_data`
spells a task's state the way ``/draw/result`` (and every final frame) does.
"""

from __future__ import annotations

from batchgen.sim.service import EVENT_STREAM, RouteGroup
from batchgen.sim.state import FAILED, MODERATION, RUNNING, SUCCEEDED, Account, Task, TaskView
from batchgen.sim.wire import (
    ConnectionDrop,
    Reply,
    Request,
    bad_request,
    error,
    json_bytes,
    parse_order,
    spell_status,
)

__all__ = ["TaskRoutes"]


class TaskRoutes(RouteGroup):
    """Handlers of the task routes; each takes the request and its signed-in account."""

    async def generate(self, req: Request, account: Account) -> None:
        service = self.service
        service.check_submit_bucket(account)
        body = await req.json_object()
        reply_type = body.get("replyType", "json")
        if reply_type not in ("json", "stream", "async"):
            raise bad_request("replyType must be json, stream or async")
        order = parse_order(body, service.check_model)
        task = await service.accept(
            # A json answer's id is not pollable upstream ("result not exist"); a
            # stream's is (its first frame carries it), so a cut stream can be resumed.
            req,
            account,
            order,
            pollable=reply_type != "json",
            unified=True,
        )
        if reply_type == "async":
            status = spell_status(RUNNING, self.config.status_style)
            data: dict[str, object] = {"id": task.id, "status": status, "progress": 0}
            if self.config.wrap_async:
                data = {"code": 0, "msg": "success", "data": data}
            await req.respond(200, data)
        elif reply_type == "json":
            view = await service.wait_end(req, task)
            await req.respond(200, self.result_data(req, task, view))
        else:
            await self._stream(req, task, quiet=False)

    async def draw(self, req: Request, account: Account) -> None:
        service = self.service
        service.check_submit_bucket(account)
        body = await req.json_object()
        completions = req.path.endswith("/completions")
        order = parse_order(body, service.check_model, variants=completions)
        task = await service.accept(req, account, order, pollable=True, unified=False)
        if body.get("webHook"):  # the simulator never calls a webhook: any value means "-1"
            await req.respond(200, {"code": 0, "msg": "success", "data": {"id": task.id}})
        else:
            await self._stream(req, task, quiet=bool(body.get("shutProgress")))

    async def result(self, req: Request, account: Account) -> None:
        state, service = self.state, self.service
        service.check_poll_bucket(account)
        body = await req.json_object()
        task_id = body.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise bad_request("id is required")
        if state.roll(self.config.poll_hang_rate):
            state.counters.polls_hung += 1
            if await service.until_disconnect_or_close(req):
                await service.drop(req)
            return
        task = state.lookup(account, task_id)
        if task is None:
            if self.config.not_found_style == "code-22":
                raise Reply(200, {"code": -22, "msg": "任务不存在", "data": None})
            raise error(404, "task_not_found", "任务不存在 (task not found)")
        data = self.result_data(req, task, state.view(task))
        await req.respond(200, {"code": 0, "msg": "success", "data": data})

    def result_data(self, req: Request, task: Task, view: TaskView) -> dict[str, object]:
        """The result object (``/draw/result``'s ``data``) in the configured spelling."""
        cfg = self.config
        status = view.status
        if status == FAILED and task.unified and view.failure_reason in MODERATION:
            status = "violation"
        data: dict[str, object] = {
            "id": task.id,
            "status": spell_status(status, cfg.status_style),
            "progress": view.progress,
        }
        urls = self.service.urls(req, task) if view.status == SUCCEEDED else []
        if cfg.single_url:
            data["url"] = urls[0] if urls else ""
        else:
            content = f"Simulated image for: {task.prompt[:200]}"
            data["results"] = [{"url": url, "content": content} for url in urls]
        data["failure_reason"] = view.failure_reason
        data["error"] = view.error
        return data

    async def _stream(self, req: Request, task: Task, *, quiet: bool) -> None:
        """SSE progress frames (rising), the terminal result frame, then maybe [DONE]."""
        state = self.state
        await req.start(200, EVENT_STREAM)
        interval = min(1.0, max(0.02, (task.ends - task.created) / 10))
        last = -1
        while True:
            view = state.view(task)
            frame: dict[str, object] | None = None
            if view.terminal:
                frame = self.result_data(req, task, view)
            elif not quiet and view.progress > last:
                last = view.progress
                status = spell_status(RUNNING, self.config.status_style)
                frame = {"id": task.id, "status": status, "progress": view.progress}
            if frame is not None:
                await req.chunk(b"data: " + json_bytes(frame) + b"\n\n")
            if view.terminal:
                break
            if await self.service.sleep(max(0.001, min(interval, task.ends - state.now()))):
                raise ConnectionDrop
        await req.chunk(b"data: [DONE]\n\n" if self.config.sse_done else b"", more=False)
