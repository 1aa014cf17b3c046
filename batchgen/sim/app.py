"""The simulator's ASGI app: routes, request parsing, answers, SSE streams and faults.

Hand-written routing over a dict (``path -> method -> handler``) keeps a small JSON
request to a few dozen microseconds of Python, which is what lets one process answer
well over a thousand polls a second. Handlers answer by sending, or by raising
:class:`Reply` (any early exit: errors, 429s, business errors), which the dispatcher
turns into one response. A deliberate connection drop sends ``http.response.start`` and
raises :class:`ConnectionDrop`: uvicorn then closes the transport, so the client sees a
lost connection, not an error status; :func:`quiet_deliberate_drops` keeps uvicorn from
printing a traceback for it.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import parse_qs

import anyio

from batchgen.sim.config import SimConfig
from batchgen.sim.files import FileHost
from batchgen.sim.images import DEFAULT_CACHE_BYTES, ImageCache
from batchgen.sim.state import (
    FAILED,
    MODERATION,
    RUNNING,
    SUCCEEDED,
    Account,
    InsufficientCredits,
    SimState,
    Task,
    TaskView,
)
from batchgen.sim.wire import (
    ClientGone,
    ConnectionDrop,
    Order,
    Reply,
    Request,
    bad_request,
    chat_reply,
    chat_stream,
    error,
    forbidden,
    json_bytes,
    no_channel,
    parse_chat,
    parse_images_request,
    parse_order,
    quiet_deliberate_drops,
    retry_after,
    spell_status,
)

__all__ = ["SimApp", "create_app"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Request], Awaitable[None]]

_EVENT_STREAM = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class SimApp:
    """The ASGI 3 application of one simulator; ``state.config`` is read live.

    :meth:`close` ends every long wait (json/stream tasks, hung polls) by dropping its
    connection, so a server can shut down promptly.
    """

    def __init__(self, state: SimState, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.state = state
        self.images = ImageCache(cache_bytes)
        self.files = FileHost(state, self.images)
        self._closed = False
        self._closing: anyio.Event | None = None
        quiet_deliberate_drops()
        api, play = self._api, self._playground
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/api/generate": {"POST": api(self._generate)},
            "/v1/draw/nano-banana": {"POST": api(self._draw)},
            "/v1/draw/completions": {"POST": api(self._draw)},
            "/v1/draw/result": {"POST": api(self._result)},
            "/v1/images/generations": {"POST": api(self._images_generations)},
            "/v1/chat/completions": {"POST": api(self._chat)},
            "/api/user/playground/api/generate": {"POST": play(self._generate)},
            "/api/user/playground/draw/nano-banana": {"POST": play(self._draw)},
            "/api/user/playground/draw/result": {"POST": play(self._result)},
            "/client/common/getCredits": {"GET": self._credits},
            "/client/common/getModelStatus": {"GET": self._model_status},
            "/_sim/config": {"GET": self._get_config, "POST": self._set_config},
            "/_sim/stats": {"GET": self._stats},
            "/_sim/tasks": {"GET": self._tasks},
            "/_sim/redirect": {"GET": self._redirect},
        }

    @property
    def config(self) -> SimConfig:
        """The live config (the state's)."""
        return self.state.config

    def close(self) -> None:
        """Make every long wait end now (their connections are dropped)."""
        self._closed = True
        if self._closing is not None:
            self._closing.set()

    # --- ASGI entry ----------------------------------------------------------------

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Serve one ASGI ``http`` (or ``lifespan``) connection scope."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        state = self.state
        state.settle()
        method: str = scope["method"]
        path: str = scope["path"]
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host:
            origin = "http://" + host.decode("latin-1")
        else:
            server = scope.get("server") or ("127.0.0.1", 80)
            origin = f"http://{server[0]}:{server[1]}"
        req = Request(
            method, path, scope.get("query_string", b""), headers, receive, send,
            state.next_request_id().encode(), origin,
        )  # fmt: skip
        methods = self._routes.get(path)
        handler: Handler | None
        if methods is not None:
            label = f"{method} {path}"
            handler = methods.get(method)
            if handler is None:
                label = "other"
                handler = self._method_not_allowed
        elif path.startswith("/files/"):
            label = f"{method} /files/*"
            handler = self.files.download if method == "GET" else self._method_not_allowed
        else:
            label, handler = "other", self._not_found
        state.count_request(label)
        try:
            await handler(req)
        except Reply as reply:
            await req.respond(reply.status, reply.body, reply.headers)
        except ClientGone:
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _not_found(self, req: Request) -> None:
        raise error(404, "not_found", f"Invalid URL ({req.method} {req.path})")

    async def _method_not_allowed(self, req: Request) -> None:
        raise error(405, "method_not_allowed", f"Method {req.method} not allowed on {req.path}")

    # --- time, closing, drops ------------------------------------------------------

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True (at once) if the app is closing."""
        if self._closed:
            return True
        if self._closing is None:
            self._closing = anyio.Event()
        with anyio.move_on_after(delay):
            await self._closing.wait()
            return True
        return False

    async def _drop(self, req: Request) -> NoReturn:
        """Start an answer that will never come, then make uvicorn cut the connection."""
        await req.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        raise ConnectionDrop

    async def _wait_end(self, req: Request, task: Task) -> TaskView:
        """Wait (in simulated latency) until ``task`` ends; drop the connection on close."""
        state = self.state
        while True:
            view = state.view(task)
            if view.terminal:
                return view
            if await self._sleep(max(0.001, task.ends - state.now())):
                await self._drop(req)

    async def _until_disconnect_or_close(self, req: Request) -> bool:
        """Wait until the client hangs up (False) or the app closes (True)."""
        if self._closing is None:
            self._closing = anyio.Event()
        closing = self._closing
        closed = self._closed
        async with anyio.create_task_group() as tg:

            async def watch_close() -> None:
                nonlocal closed
                await closing.wait()
                closed = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch_close)
            if not closed:
                while (await req.receive())["type"] != "http.disconnect":
                    pass
            tg.cancel_scope.cancel()
        return closed

    # --- auth and limits -----------------------------------------------------------

    def _api(self, handler: Callable[[Request, Account], Awaitable[None]]) -> Handler:
        async def with_key(req: Request) -> None:
            await handler(req, self._key_account(req))

        return with_key

    def _playground(self, handler: Callable[[Request, Account], Awaitable[None]]) -> Handler:
        async def with_session(req: Request) -> None:
            await handler(req, self._session_account(req))

        return with_session

    def _key_of(self, req: Request) -> str:
        scheme, _, token = req.header(b"authorization").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.config.keys:
            if token and self.state.knows_key(token):  # it worked before: revoked/expired
                raise error(401, "token_invalid", "令牌已过期或被禁用 (token revoked or expired)")
            raise error(401, "invalid_api_key", "无效的令牌 (invalid API key)")
        return token

    def _key_account(self, req: Request) -> Account:
        return self.state.account_for_key(self._key_of(req))

    def _session_account(self, req: Request) -> Account:
        user = req.header(b"new-api-user")
        if not user:
            raise Reply(
                401, {"success": False, "message": "未提供 New-Api-User (missing New-Api-User)"}
            )
        session = ""
        for part in req.header(b"cookie").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session":
                session = value
        if self.config.sessions.get(session) != user:
            raise Reply(401, {"success": False, "message": "未登录或登录已过期 (not logged in)"})
        return self.state.account_for_user(user)

    def _rate_limited(self, wait: float | None, message: str) -> Reply:
        """A 429 as configured: Retry-After (seconds or date, real or forced), body or not."""
        self.state.counters.rate_limited += 1
        cfg = self.config
        headers: list[tuple[bytes, bytes]] = []
        if cfg.retry_after:
            value = retry_after(
                wait, cfg.retry_after_value, cfg.retry_after_format, self.state.wall()
            )
            headers.append((b"retry-after", value.encode()))
        if cfg.empty_429:
            return Reply(429, None, headers)
        return error(429, "rate_limit_exceeded", message, headers)

    def _check_submit_bucket(self, account: Account) -> None:
        wait = self.state.take_submit_token(account)
        if wait > 0:
            raise self._rate_limited(wait, "请求过于频繁,请稍后再试 (rate limit exceeded)")

    def _check_model(self, model: str) -> float:
        if model in self.config.forbid:
            raise forbidden(model)
        price = self.state.price_of(model)
        if price is None:
            raise no_channel(model)
        return price

    # --- task submission -----------------------------------------------------------

    async def _accept(self, req: Request, account: Account, order: Order, **kw: bool) -> Task:
        """Run a checked submission through the faults and billing; return its task."""
        state, cfg = self.state, self.config
        if state.roll(cfg.busy_rate):
            state.counters.busy_injected += 1
            raise self._rate_limited(None, "上游繁忙,请稍后再试 (upstream busy)")
        if state.roll(cfg.error_rate):
            state.counters.errors_injected += 1
            status = 500 if state.rng.random() < 0.5 else 502
            raise error(status, "upstream_error", "上游异常 (upstream error, simulated)")
        try:
            task = state.submit(
                account, model=order.model, prompt=order.prompt, aspect=order.aspect,
                size=order.size, images=order.images, **kw,
            )  # fmt: skip
        except InsufficientCredits:
            raise Reply(
                200, {"code": -1, "msg": "积分不足 (insufficient credits)", "data": None}
            ) from None
        if state.roll(cfg.drop_rate):
            state.counters.submissions_dropped += 1
            await self._drop(req)
        return task

    async def _generate(self, req: Request, account: Account) -> None:
        self._check_submit_bucket(account)
        body = await req.json_object()
        reply_type = body.get("replyType", "json")
        if reply_type not in ("json", "stream", "async"):
            raise bad_request("replyType must be json, stream or async")
        order = parse_order(body, self._check_model)
        task = await self._accept(req, account, order, pollable=reply_type == "async", unified=True)
        if reply_type == "async":
            status = spell_status(RUNNING, self.config.status_style)
            data: dict[str, object] = {"id": task.id, "status": status, "progress": 0}
            if self.config.wrap_async:
                data = {"code": 0, "msg": "success", "data": data}
            await req.respond(200, data)
        elif reply_type == "json":
            view = await self._wait_end(req, task)
            await req.respond(200, self._result_data(req, task, view))
        else:
            await self._stream(req, task, quiet=False)

    async def _draw(self, req: Request, account: Account) -> None:
        self._check_submit_bucket(account)
        body = await req.json_object()
        completions = req.path.endswith("/completions")
        order = parse_order(body, self._check_model, variants=completions)
        task = await self._accept(req, account, order, pollable=True, unified=False)
        if body.get("webHook"):  # the simulator never calls a webhook: any value means "-1"
            await req.respond(200, {"code": 0, "msg": "success", "data": {"id": task.id}})
        else:
            await self._stream(req, task, quiet=bool(body.get("shutProgress")))

    async def _result(self, req: Request, account: Account) -> None:
        state = self.state
        wait = state.take_poll_token(account)
        if wait > 0:
            raise self._rate_limited(wait, "查询过于频繁 (poll rate limit exceeded)")
        body = await req.json_object()
        task_id = body.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise bad_request("id is required")
        if state.roll(self.config.poll_hang_rate):
            state.counters.polls_hung += 1
            if await self._until_disconnect_or_close(req):
                await self._drop(req)
            return
        task = state.lookup(account, task_id)
        if task is None:
            if self.config.not_found_style == "code-22":
                raise Reply(200, {"code": -22, "msg": "任务不存在", "data": None})
            raise error(404, "task_not_found", "任务不存在 (task not found)")
        data = self._result_data(req, task, state.view(task))
        await req.respond(200, {"code": 0, "msg": "success", "data": data})

    def _urls(self, req: Request, task: Task) -> list[str]:
        template = self.config.result_url_template
        files = [f"{task.id}-{i}.png" for i in range(task.images)]
        if template is None:
            return [f"{req.origin}/files/{name}" for name in files]
        return [template.format(origin=req.origin, file=name) for name in files]

    def _result_data(self, req: Request, task: Task, view: TaskView) -> dict[str, object]:
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
        urls = self._urls(req, task) if view.status == SUCCEEDED else []
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
        await req.start(200, _EVENT_STREAM)
        interval = min(1.0, max(0.02, (task.ends - task.created) / 10))
        last = -1
        while True:
            view = state.view(task)
            frame: dict[str, object] | None = None
            if view.terminal:
                frame = self._result_data(req, task, view)
            elif not quiet and view.progress > last:
                last = view.progress
                status = spell_status(RUNNING, self.config.status_style)
                frame = {"id": task.id, "status": status, "progress": view.progress}
            if frame is not None:
                await req.chunk(b"data: " + json_bytes(frame) + b"\n\n")
            if view.terminal:
                break
            if await self._sleep(max(0.001, min(interval, task.ends - state.now()))):
                raise ConnectionDrop
        await req.chunk(b"data: [DONE]\n\n" if self.config.sse_done else b"", more=False)

    # --- OpenAI-compatible routes ----------------------------------------------------

    async def _images_generations(self, req: Request, account: Account) -> None:
        self._check_submit_bucket(account)
        order, b64 = parse_images_request(await req.json_object(), self._check_model)
        task = await self._accept(req, account, order, pollable=False, unified=False)
        view = await self._wait_end(req, task)
        if view.status == FAILED:
            if view.failure_reason in MODERATION:
                raise error(400, "content_policy_violation", view.error)
            raise error(500, "upstream_error", view.error)
        data: list[dict[str, object]] = []
        urls = self._urls(req, task)
        for i in range(order.images):
            if b64:
                image = self.files.image(task, i)
                task.record_served(image.sha256)
                encoded = base64.b64encode(image.data).decode()
                data.append({"url": "", "b64_json": encoded, "revised_prompt": task.prompt})
            else:
                data.append({"url": urls[i], "b64_json": "", "revised_prompt": task.prompt})
        await req.respond(200, {"created": int(self.state.wall(task.created)), "data": data})

    async def _chat(self, req: Request, account: Account) -> None:
        chat = parse_chat(await req.json_object())
        if chat.model in self.config.forbid:
            raise forbidden(chat.model)
        if chat.model in self.config.down:  # chat is free: it needs no price, only a channel
            raise no_channel(chat.model)
        created = int(self.state.wall())
        chat_id = f"chatcmpl-{req.request_id.decode()}"
        if chat.failing:
            self.state.counters.errors_injected += 1
        if not chat.stream:
            if chat.failing:
                raise error(500, "upstream_error", "上游异常 (upstream error, simulated)")
            await req.respond(200, chat_reply(chat_id, created, chat.model, chat.last_user_text))
            return
        await req.start(200, _EVENT_STREAM)
        for frame in chat_stream(chat_id, created, chat.model, chat.last_user_text, chat.failing):
            await req.chunk(frame)
        await req.chunk(b"", more=False)

    # --- dashboard routes --------------------------------------------------------------

    async def _credits(self, req: Request) -> None:
        key = parse_qs(req.query.decode("latin-1")).get("apikey", [""])[0]
        if key not in self.config.keys:
            raise error(401, "invalid_api_key", "无效的令牌 (invalid or revoked API key)")
        balance = round(self.state.balance(key), 6)
        await req.respond(200, {"code": 0, "data": {"credits": balance}})

    async def _model_status(self, req: Request) -> None:
        self._key_of(req)
        model = parse_qs(req.query.decode("latin-1")).get("model", [""])[0]
        if not model:
            raise bad_request("model is required")
        ok = self.state.price_of(model) is not None
        data = {"status": ok, "error": "" if ok else "model_not_found"}
        await req.respond(200, {"code": 0, "data": data})

    # --- simulator control -------------------------------------------------------------

    async def _get_config(self, req: Request) -> None:
        await req.respond(200, self.config.to_json())

    async def _set_config(self, req: Request) -> None:
        changes = await req.json_object()
        try:
            self.config.update(changes)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        if "seed" in changes:
            self.state.rng.seed(self.config.seed)
        await req.respond(200, self.config.to_json())

    async def _stats(self, req: Request) -> None:
        await req.respond(200, self.state.stats())

    async def _tasks(self, req: Request) -> None:
        await req.respond(200, self.state.task_rows())

    async def _redirect(self, req: Request) -> None:
        target = parse_qs(req.query.decode("latin-1")).get("to", [""])[0]
        if not target:
            raise bad_request("to is required")
        await req.respond(302, b"", [(b"location", target.encode())])


def create_app(
    config: SimConfig | None = None,
    *,
    state: SimState | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> SimApp:
    """A simulator ASGI app for ``config`` (default settings when None), or over ``state``."""
    if state is None:
        state = SimState(config if config is not None else SimConfig())
    return SimApp(state, cache_bytes=cache_bytes)
