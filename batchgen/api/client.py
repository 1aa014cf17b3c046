"""The async client for every CobabaAi route.

One :class:`CobabaClient` owns one ``httpx2.AsyncClient`` (httpx2: the maintained
fork of httpx, same API) with explicit timeouts and a
connection pool sized for the caller's concurrency. Every answer becomes a typed value
(:mod:`batchgen.api.responses`) and every failure one error of :mod:`batchgen.errors`,
translated in one place (:mod:`batchgen.api.wire`, called from
:meth:`CobabaClient._send` and :meth:`CobabaClient._stream`). The API key lives only in
the client's default headers; it never appears in a message, a repr or a log line.
Credentials, timeouts and the base URL are in :mod:`batchgen.api.auth`.

This module owns the routes: :data:`ENDPOINTS` (spec endpoint name to route), the
playground's twins, and one method per route.

Result images are not fetched here: :mod:`batchgen.output.fetch` uses a separate client
that sends no credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx2 as httpx

from batchgen.api.auth import (
    DEFAULT_BASE_URL,
    BearerAuth,
    PlaygroundAuth,
    Timeouts,
    check_base_url,
    origin_of,
)
from batchgen.api.dashboard import (
    Pricing,
    SiteStatus,
    Subscription,
    Usage,
    parse_models,
    parse_pricing,
    parse_status,
    parse_subscription,
    parse_usage,
)
from batchgen.api.responses import (
    ChatChunk,
    ChatCompletion,
    Credits,
    ImagesResult,
    ModelStatus,
    Submission,
    TaskInfo,
    parse_chat_chunk,
    parse_chat_completion,
    parse_credits,
    parse_images,
    parse_model_status,
    parse_submission,
    parse_task,
    unwrap,
)
from batchgen.api.wire import (
    decode_response,
    error_for_status,
    guard_loggers,
    sse_payloads,
    translate_transport_error,
)
from batchgen.errors import (
    ConfigError,
    ConnectionLostError,
    ResponseFormatError,
    register_secret,
)

__all__ = ["ENDPOINTS", "PLAYGROUND_ENDPOINTS", "CobabaClient"]

#: Submission routes by spec endpoint name, relative to the base URL (``.../v1``).
ENDPOINTS: Final[Mapping[str, str]] = {
    "generate": "/api/generate",
    "nano-banana": "/draw/nano-banana",
    "draw-completions": "/draw/completions",
    "images": "/images/generations",
}
#: The playground's twins, relative to the host root.
_PLAYGROUND: Final[Mapping[str, str]] = {
    "/api/generate": "/api/user/playground/api/generate",
    "/draw/nano-banana": "/api/user/playground/draw/nano-banana",
    "/draw/result": "/api/user/playground/draw/result",
}
#: Spec endpoints a playground session can submit to.
PLAYGROUND_ENDPOINTS: Final = frozenset(
    name for name, route in ENDPOINTS.items() if route in _PLAYGROUND
)


class CobabaClient:
    """Async client for the CobabaAi API. Use as ``async with CobabaClient(...) as c:``.

    ``auth`` is a :class:`BearerAuth` (default: from ``COBABA_API_KEY``) or a
    :class:`PlaygroundAuth`. ``max_connections`` should be at least the number of
    requests the caller keeps in flight.
    """

    def __init__(
        self,
        *,
        auth: BearerAuth | PlaygroundAuth | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.auth = auth if auth is not None else BearerAuth.from_env()
        self.base_url = check_base_url(base_url)
        self.origin = origin_of(self.base_url)
        self.timeouts = timeouts or Timeouts()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        guard_loggers()
        if isinstance(self.auth, BearerAuth):
            register_secret(self.auth.api_key)
            headers["Authorization"] = f"Bearer {self.auth.api_key}"
        else:
            register_secret(self.auth.session)
            headers["Cookie"] = f"{self.auth.cookie_name}={self.auth.session}"
            headers["New-Api-User"] = self.auth.user_id
        #: The gateway's version (``X-New-Api-Version``) once an answer carried it: the
        #: service runs new-api, whose limiter is a per-user sliding log in minutes.
        self.server_version: str | None = None
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=self.timeouts.for_read(self.timeouts.submit),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            transport=transport,
            trust_env=False,
        )

    def __repr__(self) -> str:
        mode = "bearer" if isinstance(self.auth, BearerAuth) else "playground"
        return f"CobabaClient(base_url={self.base_url!r}, auth={mode})"

    async def __aenter__(self) -> CobabaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    @property
    def playground(self) -> bool:
        """Whether this client speaks the playground routes."""
        return isinstance(self.auth, PlaygroundAuth)

    # --- routing --------------------------------------------------------------------

    def _url(self, route: str) -> str:
        """The absolute URL of an API route given relative to ``/v1``."""
        if self.playground:
            twin = _PLAYGROUND.get(route)
            if twin is None:
                raise ConfigError(f"{route} is not available with a playground session")
            return self.origin + twin
        return self.base_url + route

    # --- the one place where HTTP becomes values or errors (translated by .wire) ------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        route: str,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        read_timeout: float,
    ) -> tuple[object, str | None]:
        """Send one request; return the decoded JSON body and the request id.

        Raises the APIError subclass for an error answer, TransportError for no
        answer, ResponseFormatError for a 2xx body that is not JSON.
        """
        try:
            response = await self._http.request(
                method,
                url,
                json=json_body,
                params=params,
                timeout=self.timeouts.for_read(read_timeout),
            )
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, route) from None
        self._saw(response)
        return decode_response(response, route)

    def _saw(self, response: httpx.Response) -> None:
        if self.server_version is None:
            self.server_version = response.headers.get("x-new-api-version") or None

    @asynccontextmanager
    async def _stream(
        self, url: str, *, route: str, json_body: Mapping[str, Any], read_timeout: float
    ) -> AsyncIterator[tuple[AsyncIterator[object], str | None]]:
        """Open an SSE response; yield the decoded ``data:`` payloads and the request id.

        A JSON answer where a stream was expected is read as an ordinary answer, so a
        business error (HTTP 200, ``code != 0``) raises BusinessError, not a format error.
        """
        request = self._http.build_request(
            "POST",
            url,
            json=json_body,
            timeout=self.timeouts.for_read(read_timeout),
            headers={"Accept": "text/event-stream"},
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, route) from None
        self._saw(response)
        try:
            if response.status_code >= 300 or "event-stream" not in response.headers.get(
                "content-type", ""
            ):
                await response.aread()
                body, request_id = decode_response(response, route)
                unwrap(body, route=route, request_id=request_id)
                raise ResponseFormatError("expected an event stream", route=route)
            yield sse_payloads(response, route), response.headers.get("x-oneapi-request-id")
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, route) from None
        finally:
            await response.aclose()

    # --- task routes ----------------------------------------------------------------

    async def submit(self, endpoint: str, body: Mapping[str, Any]) -> Submission | ImagesResult:
        """Submit one prepared request body to a spec endpoint.

        ``generate``, ``nano-banana`` and ``draw-completions`` return a
        :class:`Submission` (the remote id, to poll); ``images`` runs synchronously and
        returns the :class:`ImagesResult`.
        """
        route = ENDPOINTS.get(endpoint)
        if route is None:
            raise ConfigError(f"unknown endpoint {endpoint!r}")
        if endpoint == "images":
            return await self.images_generations(body)
        data, request_id = await self._send(
            "POST",
            self._url(route),
            route=f"POST {route}",
            json_body=body,
            read_timeout=self.timeouts.submit,
        )
        return parse_submission(data, route=f"POST {route}", request_id=request_id)

    async def generate_async(self, body: Mapping[str, Any]) -> Submission:
        """``POST /v1/api/generate`` with ``replyType: async``: the task id, at once."""
        result = await self.submit("generate", {**body, "replyType": "async"})
        assert isinstance(result, Submission)
        return result

    async def generate_json(self, body: Mapping[str, Any]) -> TaskInfo:
        """``POST /v1/api/generate`` with ``replyType: json``: waits for the final result."""
        route = "POST /api/generate"
        data, request_id = await self._send(
            "POST",
            self._url("/api/generate"),
            route=route,
            json_body={**body, "replyType": "json"},
            read_timeout=self.timeouts.sync,
        )
        return parse_task(data, route=route, request_id=request_id)

    @asynccontextmanager
    async def generate_stream(
        self, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[TaskInfo]]:
        """``POST /v1/api/generate`` with ``replyType: stream``.

        Use as ``async with client.generate_stream(body) as frames: async for f in frames``.
        Frames carry rising progress; the iterator ends after the terminal frame.
        """
        async with self._task_stream("/api/generate", {**body, "replyType": "stream"}) as frames:
            yield frames

    @asynccontextmanager
    async def _task_stream(
        self, route: str, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[TaskInfo]]:
        label = f"POST {route}"
        async with self._stream(
            self._url(route), route=label, json_body=body, read_timeout=self.timeouts.sync
        ) as (payloads, request_id):

            async def frames() -> AsyncIterator[TaskInfo]:
                async for payload in payloads:
                    info = parse_task(payload, route=label, request_id=request_id)
                    yield info
                    if info.status.terminal:
                        return
                raise ConnectionLostError(
                    "the stream ended before the task did; it may still be running",
                    route=label,
                )

            yield frames()

    async def submit_nano_banana(self, body: Mapping[str, Any]) -> Submission:
        """``POST /v1/draw/nano-banana`` with ``webHook: "-1"``: the task id, at once."""
        result = await self.submit("nano-banana", {**body, "webHook": "-1"})
        assert isinstance(result, Submission)
        return result

    async def submit_draw_completions(self, body: Mapping[str, Any]) -> Submission:
        """``POST /v1/draw/completions`` (gpt-image-2) with ``webHook: "-1"``."""
        result = await self.submit("draw-completions", {**body, "webHook": "-1"})
        assert isinstance(result, Submission)
        return result

    async def get_result(self, task_id: str) -> TaskInfo:
        """``POST /v1/draw/result``: the task's state. Free of charge.

        Raises TaskNotFoundError when the service does not know the id (404 or -22).
        """
        route = "POST /draw/result"
        data, request_id = await self._send(
            "POST",
            self._url("/draw/result"),
            route=route,
            json_body={"id": task_id},
            read_timeout=self.timeouts.poll,
        )
        info = parse_task(data, route=route, request_id=request_id)
        if info.id != task_id:
            raise ResponseFormatError(f"asked for {task_id}, got {info.id}", route=route)
        return info

    # --- OpenAI-compatible routes --------------------------------------------------------

    async def images_generations(self, body: Mapping[str, Any]) -> ImagesResult:
        """``POST /v1/images/generations``: synchronous; url or b64_json results."""
        route = "/images/generations"
        data, request_id = await self._send(
            "POST",
            self._url(route),
            route=f"POST {route}",
            json_body=body,
            read_timeout=self.timeouts.sync,
        )
        return parse_images(data, route=f"POST {route}", request_id=request_id)

    async def chat_completions(self, body: Mapping[str, Any]) -> ChatCompletion:
        """``POST /v1/chat/completions`` without streaming."""
        route = "/chat/completions"
        data, request_id = await self._send(
            "POST",
            self._url(route),
            route=f"POST {route}",
            json_body={**body, "stream": False},
            read_timeout=self.timeouts.sync,
        )
        return parse_chat_completion(data, route=f"POST {route}", request_id=request_id)

    @asynccontextmanager
    async def chat_completions_stream(
        self, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """``POST /v1/chat/completions`` with ``stream: true``: an iterator of deltas.

        An ``{"error": ...}`` frame mid-stream raises the matching APIError. Each chunk
        carries the stream's request id; with ``stream_options: {include_usage: true}``
        in ``body`` the last one carries the answer's token counts.
        """
        route = "/chat/completions"
        label = f"POST {route}"
        async with self._stream(
            self._url(route),
            route=label,
            json_body={**body, "stream": True},
            read_timeout=self.timeouts.sync,
        ) as (payloads, request_id):

            async def chunks() -> AsyncIterator[ChatChunk]:
                async for payload in payloads:
                    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
                        raise error_for_status(None, payload, label, request_id)
                    yield parse_chat_chunk(payload, route=label, request_id=request_id)

            yield chunks()

    # --- preflight routes (protocol.md: an ordinary key may call them) --------------

    async def _get(self, url: str, route: str) -> object:
        data, _ = await self._send("GET", url, route=route, read_timeout=self.timeouts.poll)
        return data

    async def list_models(self) -> frozenset[str]:
        """``GET /v1/models``: the ids of exactly the models this key may use."""
        route = "GET /models"
        return parse_models(await self._get(self.base_url + "/models", route), route=route)

    async def billing_subscription(self) -> Subscription:
        """``GET /v1/dashboard/billing/subscription``: the key's quota (display unit)."""
        route = "GET /dashboard/billing/subscription"
        url = self.base_url + "/dashboard/billing/subscription"
        return parse_subscription(await self._get(url, route), route=route)

    async def billing_usage(self) -> Usage:
        """``GET /v1/dashboard/billing/usage``: what the key has used (display unit)."""
        route = "GET /dashboard/billing/usage"
        url = self.base_url + "/dashboard/billing/usage"
        return parse_usage(await self._get(url, route), route=route)

    async def site_status(self) -> SiteStatus:
        """``GET /api/status`` (host root, public): the display unit and the USD rate."""
        route = "GET /api/status"
        return parse_status(await self._get(self.origin + "/api/status", route), route=route)

    async def pricing(self) -> Pricing:
        """``GET /api/pricing`` (host root, public): live prices and group ratios."""
        route = "GET /api/pricing"
        return parse_pricing(await self._get(self.origin + "/api/pricing", route), route=route)

    # --- admin routes (host root) --------------------------------------------------------

    async def get_credits(self) -> Credits:
        """``GET /client/common/getCredits?apikey=...``: the key's balance (admin only)."""
        if not isinstance(self.auth, BearerAuth):
            raise ConfigError("getCredits needs an API key, not a playground session")
        route = "GET /client/common/getCredits"
        data, _ = await self._send(
            "GET",
            self.origin + "/client/common/getCredits",
            route=route,
            params={"apikey": self.auth.api_key},
            read_timeout=self.timeouts.poll,
        )
        return parse_credits(data, route=route)

    async def get_model_status(self, model: str) -> ModelStatus:
        """``GET /client/common/getModelStatus?model=X``: whether a channel serves it."""
        if not isinstance(self.auth, BearerAuth):
            raise ConfigError("getModelStatus needs an API key, not a playground session")
        route = "GET /client/common/getModelStatus"
        data, _ = await self._send(
            "GET",
            self.origin + "/client/common/getModelStatus",
            route=route,
            params={"model": model},
            read_timeout=self.timeouts.poll,
        )
        return parse_model_status(data, model=model, route=route)
