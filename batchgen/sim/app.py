"""The simulator's ASGI app: dispatch, lifecycle and the table of routes.

Hand-written routing over a dict (``path -> method -> handler``) keeps a small JSON
request to a few dozen microseconds of Python, which is what lets one process answer
well over a thousand polls a second. Handlers answer by sending, or by raising
:class:`Reply` (any early exit: errors, 429s, business errors), which the dispatcher
turns into one response (its body written for the request and the configured wire by
:func:`~batchgen.sim.gateway.body_of`; 429s counted by route). A deliberate connection
drop sends ``http.response.start`` and raises :class:`ConnectionDrop`: uvicorn then
closes the transport, so the client sees a lost connection, not an error status;
:func:`quiet_deliberate_drops` keeps uvicorn from printing a traceback for it.

This module owns the ASGI entry, the lifespan and the route table. The handlers are in
route groups over one shared :class:`~batchgen.sim.service.Service` (time, drops,
sign-in, limits, billing): :mod:`.task_routes` (generate, draw, result, streams),
:mod:`.openai_routes` (images, chat), :mod:`.preflight_routes` (models, billing,
``/api/status``, ``/api/pricing``) and :mod:`.admin_routes` (getCredits,
getModelStatus, ``/_sim/*``); a new group of routes gets a module of its own and its
rows in the table here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from batchgen.sim.admin_routes import AdminRoutes
from batchgen.sim.config import SimConfig
from batchgen.sim.files import FileHost
from batchgen.sim.gateway import body_of
from batchgen.sim.images import DEFAULT_CACHE_BYTES, ImageCache
from batchgen.sim.openai_routes import OpenAIRoutes
from batchgen.sim.preflight_routes import PreflightRoutes
from batchgen.sim.service import Handler, Service
from batchgen.sim.state import SimState
from batchgen.sim.task_routes import TaskRoutes
from batchgen.sim.wire import ClientGone, Reply, Request, error, quiet_deliberate_drops

__all__ = ["SimApp", "create_app"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SimApp:
    """The ASGI 3 application of one simulator; ``state.config`` is read live.

    :meth:`close` ends every long wait (json/stream tasks, hung polls) by dropping its
    connection, so a server can shut down promptly.
    """

    def __init__(self, state: SimState, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.state = state
        self.images = ImageCache(cache_bytes)
        self.files = FileHost(state, self.images)
        self.service = Service(state, self.files)
        quiet_deliberate_drops()
        api, play = self.service.api, self.service.playground
        tasks, openai, admin = (
            TaskRoutes(self.service),
            OpenAIRoutes(self.service),
            AdminRoutes(self.service),
        )
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/api/generate": {"POST": api(tasks.generate)},
            "/v1/draw/nano-banana": {"POST": api(tasks.draw)},
            "/v1/draw/completions": {"POST": api(tasks.draw)},
            "/v1/draw/result": {"POST": api(tasks.result, poll=True)},
            "/v1/images/generations": {"POST": api(openai.images_generations)},
            "/v1/chat/completions": {"POST": api(openai.chat)},
            "/api/user/playground/api/generate": {"POST": play(tasks.generate)},
            "/api/user/playground/draw/nano-banana": {"POST": play(tasks.draw)},
            "/api/user/playground/draw/result": {"POST": play(tasks.result, poll=True)},
            **PreflightRoutes(self.service, self._not_found).table(),
            "/client/common/getCredits": {"GET": admin.credits},
            "/client/common/getModelStatus": {"GET": admin.model_status},
            "/_sim/config": {"GET": admin.get_config, "POST": admin.set_config},
            "/_sim/stats": {"GET": admin.stats},
            "/_sim/tasks": {"GET": admin.tasks},
            "/_sim/redirect": {"GET": admin.redirect},
        }

    @property
    def config(self) -> SimConfig:
        """The live config (the state's)."""
        return self.state.config

    def close(self) -> None:
        """Make every long wait end now (their connections are dropped)."""
        self.service.close()

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
        config = state.config
        stamp: tuple[tuple[bytes, bytes], ...] = ()
        if config.wire == "gateway":
            stamp = ((b"x-new-api-version", config.api_version.encode()),)
        client = scope.get("client")
        req = Request(
            method, path, scope.get("query_string", b""), headers, receive, send,
            state.next_request_id().encode(), origin, stamp, client[0] if client else "",
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
            if reply.status == 429:
                state.count_rate_limited(label)
            rid, language = req.request_id.decode(), req.header(b"accept-language")
            body = body_of(reply, rid, language, config.wire)
            await req.respond(reply.status, body, reply.headers)
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
