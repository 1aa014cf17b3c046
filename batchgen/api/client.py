"""The async client for every CobabaAi route.

One :class:`CobabaClient` owns one ``httpx2.AsyncClient`` (httpx2: the maintained
fork of httpx, same API) with explicit timeouts and a
connection pool sized for the caller's concurrency. Every answer becomes a typed value
(:mod:`batchgen.responses`) and every failure one error of :mod:`batchgen.errors`,
translated in one place (:meth:`CobabaClient._send`). The API key lives only in the
client's default headers; it never appears in a message, a repr or a log line.

Result images are not fetched here: :mod:`batchgen.download` uses a separate client
that sends no credentials.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx2 as httpx

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
from batchgen.errors import (
    Accepted,
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TaskNotFoundError,
    TransportError,
    UpstreamError,
    error_from_mapping,
    redact,
    register_secret,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENDPOINTS",
    "BearerAuth",
    "CobabaClient",
    "PlaygroundAuth",
    "Timeouts",
    "parse_retry_after",
]

DEFAULT_BASE_URL: Final = "https://cobabaai.com/v1"
API_KEY_ENV: Final = "COBABA_API_KEY"
BASE_URL_ENV: Final = "COBABA_BASE_URL"

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


@dataclass(frozen=True, slots=True)
class BearerAuth:
    """The API key, sent as ``Authorization: Bearer <key>``."""

    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls) -> BearerAuth:
        """Read ``COBABA_API_KEY``. Raises ConfigError when it is unset or blank."""
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise ConfigError(
                f"{API_KEY_ENV} is not set: export your CobabaAi key (or use --sim)",
                code="missing_api_key",
            )
        return cls(key)


@dataclass(frozen=True, slots=True)
class PlaygroundAuth:
    """A logged-in site session: the session cookie plus ``New-Api-User: <user id>``."""

    session: str = field(repr=False)
    user_id: str
    cookie_name: str = "session"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed per phase. ``submit`` and ``poll`` bound the wait for an answer."""

    connect: float = 10.0
    submit: float = 60.0
    poll: float = 30.0
    sync: float = 600.0  # replyType json, images/generations: the whole task runs inline
    pool: float = 60.0

    def for_read(self, read: float) -> httpx.Timeout:
        """An httpx timeout with this read (and write) limit."""
        return httpx.Timeout(connect=self.connect, read=read, write=read, pool=self.pool)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` when the header is absent or unreadable; never a negative delay.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class _RedactingFilter(logging.Filter):
    """Masks secrets in log records: httpx logs every URL, and getCredits carries the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_LOG_FILTER = _RedactingFilter()


def _guard_loggers() -> None:
    for name in ("httpx2", "httpcore2"):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


def _origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_base_url(base_url: str) -> str:
    """Normalise ``base_url`` (no trailing slash). Raises ConfigError if it is not http(s)."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base URL must be an http(s) URL, got {redact(url)[:200]!r}")
    if parts.username or parts.password:
        raise ConfigError("base URL must not carry credentials")
    return url


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
        self.origin = _origin_of(self.base_url)
        self.timeouts = timeouts or Timeouts()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        _guard_loggers()
        if isinstance(self.auth, BearerAuth):
            register_secret(self.auth.api_key)
            headers["Authorization"] = f"Bearer {self.auth.api_key}"
        else:
            register_secret(self.auth.session)
            headers["Cookie"] = f"{self.auth.cookie_name}={self.auth.session}"
            headers["New-Api-User"] = self.auth.user_id
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

    # --- the one place where HTTP becomes values or errors ----------------------------

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
        return decode_response(response, route)

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
        try:
            if response.status_code >= 300 or "event-stream" not in response.headers.get(
                "content-type", ""
            ):
                await response.aread()
                body, request_id = decode_response(response, route)
                unwrap(body, route=route, request_id=request_id)
                raise ResponseFormatError("expected an event stream", route=route)
            yield _sse_payloads(response, route), response.headers.get("x-oneapi-request-id")
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
        data, _ = await self._send(
            "POST",
            self._url(route),
            route=f"POST {route}",
            json_body={**body, "stream": False},
            read_timeout=self.timeouts.sync,
        )
        return parse_chat_completion(data, route=f"POST {route}")

    @asynccontextmanager
    async def chat_completions_stream(
        self, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """``POST /v1/chat/completions`` with ``stream: true``: an iterator of deltas.

        An ``{"error": ...}`` frame mid-stream raises the matching APIError.
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
                    yield parse_chat_chunk(payload, route=label)

            yield chunks()

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


# --- translation (module level so the downloader and tests share it) --------------------


def translate_transport_error(exc: httpx.HTTPError, route: str) -> BatchgenError:
    """Turn an httpx failure into our tree, deciding whether the request may have landed.

    A connection never made (or a pool wait) means the request did not leave: not
    accepted. Anything after the request was written means unknown.
    """
    detail = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RequestTimeoutError(
            f"timed out before sending ({type(exc).__name__})", route=route, accepted=Accepted.NO
        )
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeoutError(
            f"no answer in time ({type(exc).__name__}); the service may have accepted it",
            route=route,
            accepted=Accepted.UNKNOWN,
        )
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(f"cannot connect: {detail}", route=route)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ConnectionLostError(f"connection lost before the answer: {detail}", route=route)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ConfigError(f"{route}: {detail}")
    return TransportError(f"{type(exc).__name__}: {detail}", route=route)


def decode_response(response: httpx.Response, route: str) -> tuple[object, str | None]:
    """Return ``(json body, request id)`` for a 2xx answer; raise for anything else."""
    request_id = response.headers.get("x-oneapi-request-id")
    body: object = None
    text = response.text
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = None
            if response.is_success:
                raise ResponseFormatError(
                    f"HTTP {response.status_code} body is not JSON: {text[:120]!r}", route=route
                ) from None
    if response.is_success:
        if body is None:
            raise ResponseFormatError(
                f"HTTP {response.status_code} with an empty body", route=route
            )
        return body, request_id
    raise error_for_status(response, body, route, request_id)


_BY_CODE: Final[Mapping[str, type[APIError]]] = {
    "invalid_api_key": AuthenticationError,
    "token_invalid": AuthenticationError,
    "access_denied": PermissionDeniedError,
    "token_model_forbidden": PermissionDeniedError,
    "task_not_found": TaskNotFoundError,
    "rate_limit_exceeded": RateLimitError,
    "model_not_found": ModelUnavailableError,
    "upstream_error": UpstreamError,
}


def error_for_status(
    response: httpx.Response | None, body: object, route: str, request_id: str | None
) -> APIError:
    """Build the APIError for an error answer (or an error frame when ``response`` is None)."""
    status = response.status_code if response is not None else None
    message = ""
    code = ""
    if isinstance(body, Mapping):
        message = error_from_mapping(body)
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("code"):
            code = str(error.get("code"))
        elif body.get("code") not in (None, 0):
            code = str(body.get("code"))
    elif response is not None and response.text.strip():
        message = response.text.strip()[:200]
    cls: type[APIError]
    if status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = (
            TaskNotFoundError
            if code in ("", "task_not_found") and "result" in route
            else (_BY_CODE.get(code, BadRequestError))
        )
    elif status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after")) if response else None
        return RateLimitError(
            message or "rate limited",
            status=status,
            code=code or None,
            route=route,
            request_id=request_id,
            retry_after=retry_after,
        )
    elif status == 503:
        cls = ModelUnavailableError
    elif (status is not None and status >= 500) or status in (408, 425):
        cls = UpstreamError
    elif status is not None and status >= 400:
        cls = _BY_CODE.get(code, BadRequestError)
    else:
        cls = _BY_CODE.get(code, UpstreamError)
    if cls is RateLimitError:
        return RateLimitError(
            message or "rate limited",
            status=status,
            code=code or None,
            route=route,
            request_id=request_id,
        )
    return cls(
        message or f"{cls.default_code}",
        status=status,
        code=code or None,
        route=route,
        request_id=request_id,
    )


async def _sse_payloads(response: httpx.Response, route: str) -> AsyncIterator[object]:
    """Decode ``data:`` events of a server-sent event stream until ``[DONE]`` or EOF.

    Comment lines (``: PING``) and other fields are skipped; multi-line data joins.
    """
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data_lines:
                payload = "\n".join(data_lines)
                data_lines.clear()
                if payload.strip() == "[DONE]":
                    return
                try:
                    yield json.loads(payload)
                except ValueError:
                    raise ResponseFormatError(
                        f"stream frame is not JSON: {payload[:80]!r}", route=route
                    ) from None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        payload = "\n".join(data_lines)
        if payload.strip() != "[DONE]":
            try:
                yield json.loads(payload)
            except ValueError:
                raise ResponseFormatError("stream ended mid-frame", route=route) from None
