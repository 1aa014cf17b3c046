"""What every route group of the simulator shares: time, drops, sign-in, limits, billing.

One :class:`Service` per app holds the state and the file host and the rules that more
than one route applies: sleeping in simulated latency (and ending every wait when the app
closes), deliberate connection drops, who a request is (an API key or a playground
session), 429s as configured (the ``bucket`` limiter's in the handlers, the ``gateway``
limiter's around them, in :meth:`Service.api` and :meth:`Service.playground`), model
checks, and running a checked submission through the faults and billing. Errors of the
gateway's table come from :mod:`.gateway`, in the configured wire. The route handlers
live in :class:`RouteGroup` subclasses (:mod:`.task_routes`, :mod:`.openai_routes`,
:mod:`.preflight_routes`, :mod:`.admin_routes`) and answer by
sending, or by raising :class:`~batchgen.sim.wire.Reply`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

import batchgen.sim.gateway as gateway
from batchgen.sim.config import SimConfig
from batchgen.sim.files import FileHost
from batchgen.sim.limits import GatewayLimits, Refused
from batchgen.sim.state import (
    Account,
    InsufficientCredits,
    InsufficientTokenQuota,
    SimState,
    Task,
    TaskView,
)
from batchgen.sim.wire import ConnectionDrop, Order, Reply, Request, error, retry_after

__all__ = ["EVENT_STREAM", "AccountHandler", "Handler", "RouteGroup", "Service"]

Handler = Callable[[Request], Awaitable[None]]
AccountHandler = Callable[[Request, Account], Awaitable[None]]

EVENT_STREAM = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Service:
    """The shared behaviour of one simulator app; ``state.config`` is read live.

    :meth:`close` ends every long wait (json/stream tasks, hung polls) by dropping its
    connection, so a server can shut down promptly.
    """

    def __init__(self, state: SimState, files: FileHost) -> None:
        self.state = state
        self.files = files
        self._closed = False
        self._closing: anyio.Event | None = None

    @property
    def config(self) -> SimConfig:
        """The live config (the state's)."""
        return self.state.config

    def close(self) -> None:
        """Make every long wait end now (their connections are dropped)."""
        self._closed = True
        if self._closing is not None:
            self._closing.set()

    # --- time, closing, drops ------------------------------------------------------

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True (at once) if the app is closing."""
        if self._closed:
            return True
        if self._closing is None:
            self._closing = anyio.Event()
        with anyio.move_on_after(delay):
            await self._closing.wait()
            return True
        return False

    async def drop(self, req: Request) -> NoReturn:
        """Start an answer that will never come, then make uvicorn cut the connection."""
        await req.start(200, [(b"content-type", b"application/json"), (b"content-length", b"64")])
        raise ConnectionDrop

    async def wait_end(self, req: Request, task: Task) -> TaskView:
        """Wait (in simulated latency) until ``task`` ends; drop the connection on close."""
        state = self.state
        while True:
            view = state.view(task)
            if view.terminal:
                return view
            if await self.sleep(max(0.001, task.ends - state.now())):
                await self.drop(req)

    async def until_disconnect_or_close(self, req: Request) -> bool:
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

    def api(self, handler: AccountHandler, *, poll: bool = False) -> Handler:
        """``handler`` behind an API key (``Authorization: Bearer``) and the gateway
        limiter (for a ``poll`` route only with ``gateway_polls``)."""

        async def with_key(req: Request) -> None:
            await self.limited(req, self.key_account(req), handler, poll)

        return with_key

    def playground(self, handler: AccountHandler, *, poll: bool = False) -> Handler:
        """``handler`` behind a site session (cookie plus ``New-Api-User``), as :meth:`api`."""

        async def with_session(req: Request) -> None:
            await self.limited(req, self.session_account(req), handler, poll)

        return with_session

    async def limited(
        self, req: Request, account: Account, handler: AccountHandler, poll: bool
    ) -> None:
        """Run ``handler`` under the gateway limiter when it applies, as new-api does:
        check when the request arrives (raising its 429), record when the answer ends
        with a status < 400 (a raised Reply's, or the one :meth:`Request.start` sent)."""
        cfg = self.config
        if cfg.limiter != "gateway" or (poll and not cfg.gateway_polls):
            await handler(req, account)
            return
        limits = account.limits
        if limits is None:
            limits = account.limits = GatewayLimits()
        now = self.state.now()
        refused = limits.check(cfg.gateway_limit, cfg.gateway_window, cfg.gateway_total, now)
        if refused is not None:
            raise self.gateway_limited(refused)
        status: int | None = None
        try:
            await handler(req, account)
        except Reply as reply:
            status = reply.status
            raise
        finally:
            if status is None:
                status = req.status  # None: nothing was answered (the client left)
            if status is not None and status < 400:
                limits.record(self.config.gateway_limit, self.state.now())

    def gateway_limited(self, refused: Refused) -> Reply:
        """The gateway limiter's 429: never Retry-After; empty with ``empty_429``."""
        self.state.counters.rate_limited += 1
        cfg = self.config
        if cfg.empty_429:
            return Reply(429)
        limit = cfg.gateway_limit if refused == "success" else cfg.gateway_total
        return gateway.rate_limit(refused, limit, cfg.gateway_window)

    def key_of(self, req: Request) -> str:
        """The request's valid API key; raises the service's 401 (or 403) otherwise."""
        scheme, _, token = req.header(b"authorization").partition(" ")
        token = token.strip()
        cfg = self.config
        if scheme.lower() != "bearer" or token not in cfg.keys:
            if token and self.state.knows_key(token):  # it worked before: revoked/expired
                raise gateway.invalid_token(cfg.wire, "revoked")
            raise gateway.invalid_token(cfg.wire, "unknown")
        if token in cfg.ip_blocked:
            raise gateway.ip_blocked(cfg.wire)
        if cfg.token_quota is not None:
            left = self.state.token_left(self.state.account_for_key(token))
            if left is not None and left <= 1e-9:
                raise gateway.invalid_token(cfg.wire, "used_up")
        return token

    def key_account(self, req: Request) -> Account:
        return self.state.account_for_key(self.key_of(req))

    def session_account(self, req: Request) -> Account:
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

    def rate_limited(self, wait: float | None, message: str) -> Reply:
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

    def check_submit_bucket(self, account: Account) -> None:
        """The ``bucket`` limiter's submission check (nothing with the gateway limiter)."""
        if self.config.limiter == "gateway":
            return
        wait = self.state.take_submit_token(account)
        if wait > 0:
            raise self.rate_limited(wait, "请求过于频繁,请稍后再试 (rate limit exceeded)")

    def check_poll_bucket(self, account: Account) -> None:
        """The ``bucket`` limiter's poll check (nothing with the gateway limiter)."""
        if self.config.limiter == "gateway":
            return
        wait = self.state.take_poll_token(account)
        if wait > 0:
            raise self.rate_limited(wait, "查询过于频繁 (poll rate limit exceeded)")

    def check_channel(self, model: str) -> None:
        """Refuse a model the key may not use, that has no channel, or that has no price
        configured (``unpriced``), in that order (the gateway's)."""
        cfg = self.config
        if model in cfg.forbid:
            raise gateway.model_forbidden(cfg.wire, model)
        if model in cfg.down:
            raise gateway.no_channel_for(cfg.wire, model, cfg.group)
        if model in cfg.unpriced:
            raise gateway.model_price(cfg.wire, model)

    def check_model(self, model: str) -> float:
        """:meth:`check_channel`, then the model's price (unknown models: no channel)."""
        self.check_channel(model)
        price = self.state.price_of(model)
        if price is None:
            raise gateway.no_channel_for(self.config.wire, model, self.config.group)
        return price

    # --- task submission -----------------------------------------------------------

    async def accept(self, req: Request, account: Account, order: Order, **kw: bool) -> Task:
        """Run a checked submission through the faults and billing; return its task."""
        state, cfg = self.state, self.config
        if state.roll(cfg.busy_rate):
            state.counters.busy_injected += 1
            raise self.rate_limited(None, "上游繁忙,请稍后再试 (upstream busy)")
        if state.roll(cfg.error_rate):
            state.counters.errors_injected += 1
            status = 500 if state.rng.random() < 0.5 else 502
            raise error(status, "upstream_error", "上游异常 (upstream error, simulated)")
        try:
            task = state.submit(
                account, model=order.model, prompt=order.prompt, aspect=order.aspect,
                size=order.size, images=order.images, **kw,
            )  # fmt: skip
        except InsufficientCredits as exc:
            raise gateway.user_quota(cfg.wire, exc.balance) from None
        except InsufficientTokenQuota as exc:
            raise gateway.token_quota(cfg.wire, exc.left, exc.cost) from None
        if state.roll(cfg.drop_rate):
            state.counters.submissions_dropped += 1
            await self.drop(req)
        return task

    def urls(self, req: Request, task: Task) -> list[str]:
        """The result URLs of ``task`` (its files here, or the configured template)."""
        template = self.config.result_url_template
        files = [f"{task.id}-{i}.png" for i in range(task.images)]
        if template is None:
            return [f"{req.origin}/files/{name}" for name in files]
        return [template.format(origin=req.origin, file=name) for name in files]


class RouteGroup:
    """A group of route handlers over one :class:`Service` (``state.config`` read live)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.state = service.state

    @property
    def config(self) -> SimConfig:
        """The live config (the state's)."""
        return self.state.config
