"""Unit tests for batchgen.api.client over httpx.MockTransport: routes, errors, SSE, secrecy."""

from __future__ import annotations

import email.utils
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import pytest

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts
from batchgen.api.client import CobabaClient
from batchgen.api.responses import ImagesResult, Submission, TaskStatus
from batchgen.api.wire import parse_retry_after
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    BusinessError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TaskNotFoundError,
    UpstreamError,
)

KEY = "sk-unitTestKey0123456789"
CANARY = "sk-canary-7f3a9c2e41b8d6f0"
SESSION_CANARY = "canary-session-M8R2K5V1X9Q4"
BASE = "https://cobabaai.com/v1"
ROOT = "https://cobabaai.com"

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Recorder:
    """A MockTransport handler that records requests and answers from a queue or a function."""

    answer: Handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def last(self) -> httpx.Request:
        """The most recent request."""
        return self.requests[-1]

    def body(self) -> Any:
        """The JSON body of the most recent request."""
        return json.loads(self.last.content)


def answer_json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers ``body`` as JSON."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def answer_raw(content: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers the raw ``content``."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


def raising(exc_type: type[httpx.TransportError], message: str = "boom") -> Handler:
    """A handler that fails at the transport with ``exc_type``."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return handler


def client_for(
    handler: Handler, auth: BearerAuth | PlaygroundAuth | None = None, base_url: str = BASE
) -> CobabaClient:
    """A CobabaClient whose HTTP goes to ``handler``."""
    return CobabaClient(
        auth=auth or BearerAuth(KEY),
        base_url=base_url,
        transport=httpx.MockTransport(handler),
    )


TASK_DONE = {
    "code": 0,
    "msg": "success",
    "data": {
        "id": "task_1",
        "status": "succeeded",
        "progress": 100,
        "results": [{"url": "https://cdn.example/1.png", "content": ""}],
        "failure_reason": "",
        "error": "",
    },
}


# --- routes, bodies, headers ----------------------------------------------------------------


@pytest.mark.anyio
async def test_generate_async_route_and_body() -> None:
    """generate_async POSTs /v1/api/generate with the body plus replyType async."""
    rec = Recorder(answer_json({"id": "task_9", "status": "running", "progress": 0}))
    async with client_for(rec) as client:
        sub = await client.generate_async({"model": "nano-banana-fast", "prompt": "cat"})
    assert sub == Submission(task_id="task_9", status=TaskStatus.RUNNING, progress=0)
    assert rec.last.method == "POST"
    assert str(rec.last.url) == f"{BASE}/api/generate"
    assert rec.body() == {"model": "nano-banana-fast", "prompt": "cat", "replyType": "async"}


@pytest.mark.anyio
async def test_generate_async_enveloped_answer() -> None:
    """generate_async also accepts the {code, msg, data} envelope."""
    rec = Recorder(answer_json({"code": 0, "msg": "success", "data": {"id": "task_e"}}))
    async with client_for(rec) as client:
        sub = await client.generate_async({"model": "m", "prompt": "p"})
    assert sub.task_id == "task_e"


@pytest.mark.anyio
async def test_generate_json_route_and_body() -> None:
    """generate_json POSTs replyType json with the sync read timeout and returns the task."""
    rec = Recorder(answer_json(TASK_DONE["data"]))
    async with client_for(rec) as client:
        info = await client.generate_json({"model": "m", "prompt": "p"})
    assert info.succeeded
    assert str(rec.last.url) == f"{BASE}/api/generate"
    assert rec.body()["replyType"] == "json"
    assert rec.last.extensions["timeout"]["read"] == Timeouts().sync


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [("submit_nano_banana", "/draw/nano-banana"), ("submit_draw_completions", "/draw/completions")],
)
async def test_draw_submissions_add_webhook(method: str, path: str) -> None:
    """The draw routes POST their path with webHook "-1" and read {code, data: {id}}."""
    rec = Recorder(answer_json({"code": 0, "msg": "success", "data": {"id": "task_d"}}))
    async with client_for(rec) as client:
        call: Callable[[dict[str, Any]], Awaitable[Submission]] = getattr(client, method)
        sub = await call({"model": "m", "prompt": "p", "aspectRatio": "1:1"})
    assert sub.task_id == "task_d"
    assert rec.last.method == "POST"
    assert str(rec.last.url) == f"{BASE}{path}"
    assert rec.body() == {"model": "m", "prompt": "p", "aspectRatio": "1:1", "webHook": "-1"}


@pytest.mark.anyio
async def test_get_result_posts_the_id() -> None:
    """get_result POSTs {"id": ...} to /v1/draw/result with the poll read timeout."""
    rec = Recorder(answer_json(TASK_DONE))
    async with client_for(rec) as client:
        info = await client.get_result("task_1")
    assert info.urls == ("https://cdn.example/1.png",)
    assert str(rec.last.url) == f"{BASE}/draw/result"
    assert rec.body() == {"id": "task_1"}
    assert rec.last.extensions["timeout"]["read"] == Timeouts().poll


@pytest.mark.anyio
async def test_get_result_for_another_id() -> None:
    """An answer about a different task id is a ResponseFormatError."""
    async with client_for(Recorder(answer_json(TASK_DONE))) as client:
        with pytest.raises(ResponseFormatError, match="asked for task_2"):
            await client.get_result("task_2")


@pytest.mark.anyio
async def test_images_generations_route() -> None:
    """images_generations (and submit('images')) POST /v1/images/generations synchronously."""
    rec = Recorder(answer_json({"created": 5, "data": [{"url": "https://a/1.png"}]}))
    async with client_for(rec) as client:
        direct = await client.images_generations({"model": "gpt-image-2", "prompt": "p"})
        via_submit = await client.submit("images", {"model": "gpt-image-2", "prompt": "p"})
    assert isinstance(via_submit, ImagesResult)
    assert direct.images[0].url == "https://a/1.png"
    assert [str(r.url) for r in rec.requests] == [f"{BASE}/images/generations"] * 2
    assert rec.body() == {"model": "gpt-image-2", "prompt": "p"}


@pytest.mark.anyio
async def test_submit_unknown_endpoint() -> None:
    """submit refuses an endpoint name it does not know, without any request."""
    rec = Recorder(answer_json({}))
    async with client_for(rec) as client:
        with pytest.raises(ConfigError, match="unknown endpoint"):
            await client.submit("video", {})
    assert rec.requests == []


@pytest.mark.anyio
async def test_chat_completions_route() -> None:
    """chat_completions POSTs /v1/chat/completions with stream false."""
    rec = Recorder(
        answer_json({"id": "c", "model": "g", "choices": [{"message": {"content": "hi"}}]})
    )
    async with client_for(rec) as client:
        done = await client.chat_completions({"model": "g", "messages": []})
    assert done.content == "hi"
    assert str(rec.last.url) == f"{BASE}/chat/completions"
    assert rec.body() == {"model": "g", "messages": [], "stream": False}


@pytest.mark.anyio
async def test_get_credits_uses_apikey_on_host_root() -> None:
    """get_credits GETs /client/common/getCredits?apikey=<key> on the host root."""
    rec = Recorder(answer_json({"code": 0, "data": {"credits": 5000}}))
    async with client_for(rec) as client:
        credits = await client.get_credits()
    assert credits.credits == 5000.0
    assert rec.last.method == "GET"
    assert rec.last.url.copy_with(query=None) == httpx.URL(f"{ROOT}/client/common/getCredits")
    assert rec.last.url.params["apikey"] == KEY


@pytest.mark.anyio
async def test_get_model_status_on_host_root() -> None:
    """get_model_status GETs /client/common/getModelStatus?model=X on the host root."""
    rec = Recorder(answer_json({"code": 0, "data": {"status": False, "error": "no channel"}}))
    async with client_for(rec) as client:
        status = await client.get_model_status("nano-banana-pro")
    assert (status.model, status.available, status.error) == (
        "nano-banana-pro",
        False,
        "no channel",
    )
    assert rec.last.method == "GET"
    assert str(rec.last.url) == f"{ROOT}/client/common/getModelStatus?model=nano-banana-pro"


@pytest.mark.anyio
async def test_bearer_headers() -> None:
    """Every request carries the Bearer key, a JSON content type, and no cookie."""
    rec = Recorder(answer_json({"id": "t"}))
    async with client_for(rec) as client:
        await client.generate_async({"model": "m", "prompt": "p"})
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"
    assert rec.last.headers["content-type"] == "application/json"
    assert "cookie" not in rec.last.headers
    assert "new-api-user" not in rec.last.headers


@pytest.mark.anyio
async def test_base_url_with_path_and_trailing_slash() -> None:
    """A base URL with a trailing slash is normalised; admin routes hang off its origin."""
    rec = Recorder(answer_json({"code": 0, "data": {"status": True}}))
    async with client_for(rec, base_url="http://127.0.0.1:8080/v1/") as client:
        await client.get_model_status("m")
        assert client.base_url == "http://127.0.0.1:8080/v1"
    assert str(rec.last.url) == "http://127.0.0.1:8080/client/common/getModelStatus?model=m"


@pytest.mark.parametrize(
    "base_url", ["ftp://cobabaai.com/v1", "cobabaai.com/v1", "https://user:pw@cobabaai.com/v1"]
)
def test_bad_base_url(base_url: str) -> None:
    """A base URL that is not plain http(s) is a ConfigError at construction."""
    with pytest.raises(ConfigError):
        CobabaClient(auth=BearerAuth(KEY), base_url=base_url)


def test_bearer_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """BearerAuth.from_env reads COBABA_API_KEY and refuses an unset or blank value."""
    monkeypatch.setenv("COBABA_API_KEY", f"  {KEY} ")
    assert BearerAuth.from_env().api_key == KEY
    monkeypatch.setenv("COBABA_API_KEY", "  ")
    with pytest.raises(ConfigError) as info:
        BearerAuth.from_env()
    assert info.value.code == "missing_api_key"
    assert info.value.exit_code == 3


# --- playground -----------------------------------------------------------------------------


PLAYGROUND = PlaygroundAuth(session="sess-abc123", user_id="42")


@pytest.mark.anyio
async def test_playground_routes_and_headers() -> None:
    """Playground mode maps generate, nano-banana and result under /api/user/playground."""
    rec = Recorder(
        lambda r: httpx.Response(
            200, json=TASK_DONE if r.url.path.endswith("result") else {"id": "task_1"}
        )
    )
    async with client_for(rec, auth=PLAYGROUND) as client:
        await client.generate_async({"model": "m", "prompt": "p"})
        await client.submit_nano_banana({"model": "m", "prompt": "p"})
        await client.get_result("task_1")
    assert [str(r.url) for r in rec.requests] == [
        f"{ROOT}/api/user/playground/api/generate",
        f"{ROOT}/api/user/playground/draw/nano-banana",
        f"{ROOT}/api/user/playground/draw/result",
    ]
    for request in rec.requests:
        assert request.headers["cookie"] == "session=sess-abc123"
        assert request.headers["new-api-user"] == "42"
        assert "authorization" not in request.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    "call",
    [
        "submit_draw_completions",
        "images_generations",
        "chat_completions",
        "get_credits",
    ],
)
async def test_playground_refuses_other_routes(call: str) -> None:
    """Routes the playground does not serve raise ConfigError without any request."""
    rec = Recorder(answer_json({}))
    async with client_for(rec, auth=PLAYGROUND) as client:
        method: Callable[..., Awaitable[object]] = getattr(client, call)
        with pytest.raises(ConfigError):
            await (method() if call == "get_credits" else method({"model": "m"}))
    assert rec.requests == []


@pytest.mark.anyio
async def test_playground_unauthorised() -> None:
    """A playground 401 {success: false, message} is an AuthenticationError with that message."""
    rec = Recorder(answer_json({"success": False, "message": "未登录"}, status=401))
    async with client_for(rec, auth=PLAYGROUND) as client:
        with pytest.raises(AuthenticationError, match="未登录") as info:
            await client.get_result("task_1")
    assert info.value.exit_code == 3


# --- HTTP errors ----------------------------------------------------------------------------


def envelope_error(code: str, message: str = "出错了") -> dict[str, Any]:
    """The gateway's OpenAI error envelope."""
    return {"error": {"message": message, "type": "new_api_error", "param": "", "code": code}}


@dataclass(frozen=True)
class ErrorCase:
    """One error answer and the error it must become."""

    status: int
    body: bytes
    error: type[APIError]
    code: str
    retryable: bool
    headers: dict[str, str] = field(default_factory=dict)


def jbody(obj: object) -> bytes:
    """Serialise ``obj`` as a JSON body."""
    return json.dumps(obj).encode()


ERROR_CASES: dict[str, ErrorCase] = {
    "401-invalid_api_key": ErrorCase(
        401, jbody(envelope_error("invalid_api_key")), AuthenticationError, "invalid_api_key", False
    ),
    "401-token_invalid": ErrorCase(
        401, jbody(envelope_error("token_invalid")), AuthenticationError, "token_invalid", False
    ),
    "403-access_denied": ErrorCase(
        403, jbody(envelope_error("access_denied")), AccessDeniedError, "access_denied", False
    ),
    "403-token_model_forbidden": ErrorCase(
        403,
        jbody(envelope_error("token_model_forbidden")),
        PermissionDeniedError,
        "token_model_forbidden",
        False,
    ),
    "404-task_not_found": ErrorCase(
        404, jbody(envelope_error("task_not_found")), TaskNotFoundError, "task_not_found", False
    ),
    "404-empty": ErrorCase(404, b"", TaskNotFoundError, "task_not_found", False),
    "429-envelope": ErrorCase(
        429,
        jbody(envelope_error("rate_limit_exceeded")),
        RateLimitError,
        "rate_limit_exceeded",
        True,
    ),
    "429-empty": ErrorCase(429, b"", RateLimitError, "rate_limit_exceeded", True),
    "503-model_not_found": ErrorCase(
        503,
        jbody(envelope_error("model_not_found")),
        ModelUnavailableError,
        "model_not_found",
        True,
    ),
    "500-upstream": ErrorCase(
        500, jbody(envelope_error("upstream_error")), UpstreamError, "upstream_error", True
    ),
    "502-html": ErrorCase(502, b"<html>Bad Gateway</html>", UpstreamError, "upstream_error", True),
    "400-bad_request": ErrorCase(
        400, jbody(envelope_error("invalid_request")), BadRequestError, "invalid_request", False
    ),
    "422-no-body": ErrorCase(422, b"", BadRequestError, "bad_request", False),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
async def test_http_errors(case: ErrorCase) -> None:
    """Each error status (and code) becomes its documented APIError class, code and flags."""
    headers = {"X-Oneapi-Request-Id": "req-77", **case.headers}
    rec = Recorder(answer_raw(case.body, status=case.status, headers=headers))
    async with client_for(rec) as client:
        with pytest.raises(APIError) as info:
            await client.get_result("task_1")
    exc = info.value
    assert type(exc) is case.error
    assert exc.status == case.status
    assert exc.code == case.code
    assert exc.retryable is case.retryable
    assert exc.accepted is Accepted.NO
    assert exc.request_id == "req-77"
    assert "req-77" in str(exc)
    assert exc.route == "POST /draw/result"
    assert f"HTTP {case.status}" in str(exc)


@pytest.mark.anyio
async def test_auth_error_exit_code() -> None:
    """A 401 ends the CLI with exit code 3 and carries the service's message."""
    rec = Recorder(answer_json(envelope_error("token_invalid", "令牌已过期"), status=401))
    async with client_for(rec) as client:
        with pytest.raises(AuthenticationError, match="令牌已过期") as info:
            await client.generate_async({"model": "m", "prompt": "p"})
    assert info.value.exit_code == 3


@pytest.mark.anyio
async def test_http_200_code_minus_22() -> None:
    """HTTP 200 with code -22 on the result route is a TaskNotFoundError."""
    rec = Recorder(answer_json({"code": -22, "msg": "result not exist", "data": None}))
    async with client_for(rec) as client:
        with pytest.raises(TaskNotFoundError, match="result not exist") as info:
            await client.get_result("task_x")
    assert info.value.status == 200


@pytest.mark.anyio
async def test_http_200_business_error() -> None:
    """HTTP 200 with another non-zero code is a BusinessError with the msg text."""
    rec = Recorder(answer_json({"code": 1001, "msg": "积分不足", "data": None}))
    async with client_for(rec) as client:
        with pytest.raises(BusinessError, match="积分不足"):
            await client.submit_nano_banana({"model": "m", "prompt": "p"})


@pytest.mark.anyio
async def test_404_with_other_code_off_the_result_route() -> None:
    """A 404 outside the result route with no known code is a BadRequestError."""
    rec = Recorder(answer_json(envelope_error("not_found"), status=404))
    async with client_for(rec) as client:
        with pytest.raises(BadRequestError):
            await client.generate_async({"model": "m", "prompt": "p"})


@pytest.mark.anyio
async def test_429_retry_after_seconds() -> None:
    """Retry-After: 7 gives retry_after 7.0."""
    rec = Recorder(answer_raw(b"", status=429, headers={"Retry-After": "7"}))
    async with client_for(rec) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_async({"model": "m", "prompt": "p"})
    assert info.value.retry_after == 7.0
    assert "retry after 7s" in str(info.value)


@pytest.mark.anyio
async def test_429_retry_after_http_date() -> None:
    """A Retry-After HTTP date about 30 s ahead gives a delay of about 30 s."""
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    rec = Recorder(answer_json(envelope_error("rate_limit_exceeded"), 429, {"Retry-After": header}))
    async with client_for(rec) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get_result("task_1")
    assert info.value.retry_after is not None
    assert 25.0 <= info.value.retry_after <= 31.0


@pytest.mark.anyio
async def test_429_without_retry_after() -> None:
    """A 429 without Retry-After has retry_after None."""
    rec = Recorder(answer_json(envelope_error("rate_limit_exceeded"), status=429))
    async with client_for(rec) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get_result("task_1")
    assert info.value.retry_after is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [b"", b"   ", b"<html>oops</html>", b"{not json"],
    ids=["empty", "blank", "html", "bad"],
)
async def test_200_unreadable_body(content: bytes) -> None:
    """A 200 whose body is empty or not JSON is a ResponseFormatError, accepted UNKNOWN."""
    rec = Recorder(answer_raw(content))
    async with client_for(rec) as client:
        with pytest.raises(ResponseFormatError) as info:
            await client.generate_async({"model": "m", "prompt": "p"})
    assert info.value.accepted is Accepted.UNKNOWN
    assert info.value.route == "POST /api/generate"


# --- transport failures ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "error", "accepted"),
    [
        (httpx.ConnectError, ConnectError, Accepted.NO),
        (httpx.ConnectTimeout, RequestTimeoutError, Accepted.NO),
        (httpx.PoolTimeout, RequestTimeoutError, Accepted.NO),
        (httpx.ReadTimeout, RequestTimeoutError, Accepted.UNKNOWN),
        (httpx.WriteTimeout, RequestTimeoutError, Accepted.UNKNOWN),
        (httpx.RemoteProtocolError, ConnectionLostError, Accepted.UNKNOWN),
        (httpx.ReadError, ConnectionLostError, Accepted.UNKNOWN),
        (httpx.WriteError, ConnectionLostError, Accepted.UNKNOWN),
    ],
)
async def test_transport_failures(
    raised: type[httpx.TransportError], error: type[BatchgenError], accepted: Accepted
) -> None:
    """Each httpx transport failure becomes its error, retryable, with the right accepted."""
    async with client_for(raising(raised)) as client:
        with pytest.raises(BatchgenError) as info:
            await client.generate_async({"model": "m", "prompt": "p"})
    exc = info.value
    assert type(exc) is error
    assert exc.accepted is accepted
    assert exc.retryable is True
    assert exc.__cause__ is None
    assert exc.__suppress_context__


# --- Retry-After parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("soon", None),
        ("Wed, 99 Foo 2024 25:61:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After: seconds as given, negative clamped to 0, absent or garbage None."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_dates() -> None:
    """An HTTP date gives its distance from now; a date in the past gives 0."""
    now = time.time()
    ahead = email.utils.formatdate(now + 120, usegmt=True)
    past = email.utils.formatdate(now - 3600, usegmt=True)
    ahead_delay = parse_retry_after(ahead, now=now)
    assert ahead_delay is not None
    assert 119.0 <= ahead_delay <= 120.0
    assert parse_retry_after(past, now=now) == 0.0


# --- SSE ------------------------------------------------------------------------------------


def sse(frames: Iterable[str]) -> bytes:
    """Encode SSE lines, each followed by a blank line."""
    return "".join(f"{frame}\n\n" for frame in frames).encode()


def chunked(data: bytes, size: int = 7) -> Callable[[], AsyncIterator[bytes]]:
    """An async body that delivers ``data`` in small chunks, splitting lines."""

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return body


def answer_sse(data: bytes) -> Handler:
    """A handler that answers an event stream with ``data`` delivered in pieces."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=chunked(data)()
        )

    return handler


def frame(progress: int, status: str = "running", **extra: object) -> str:
    """One generate-stream frame."""
    return "data: " + json.dumps({"id": "task_s", "status": status, "progress": progress, **extra})


FINAL = frame(100, "succeeded", results=[{"url": "https://a/1.png"}])


@pytest.mark.anyio
@pytest.mark.parametrize("done", [True, False], ids=["with-DONE", "without-DONE"])
async def test_generate_stream_progress(done: bool) -> None:
    """generate_stream yields rising progress and stops after the terminal frame."""
    frames = [frame(0), frame(5), ": PING", frame(40), FINAL]
    if done:
        frames.append("data: [DONE]")
    else:
        frames.append(frame(100, "succeeded", results=[{"url": "https://a/extra.png"}]))
    rec = Recorder(answer_sse(sse(frames)))
    async with (
        client_for(rec) as client,
        client.generate_stream({"model": "m", "prompt": "p"}) as stream,
    ):
        seen = [info async for info in stream]
    assert [i.progress for i in seen] == [0, 5, 40, 100]
    assert seen[-1].urls == ("https://a/1.png",)
    assert rec.body()["replyType"] == "stream"
    assert rec.last.headers["accept"] == "text/event-stream"


@pytest.mark.anyio
async def test_generate_stream_http_error() -> None:
    """A stream request answered with 401 raises AuthenticationError on open."""
    rec = Recorder(answer_json(envelope_error("invalid_api_key"), status=401))
    async with client_for(rec) as client:
        with pytest.raises(AuthenticationError):
            async with client.generate_stream({"model": "m", "prompt": "p"}):
                pass


@pytest.mark.anyio
async def test_generate_stream_not_event_stream() -> None:
    """A 200 JSON answer to a stream request is a ResponseFormatError."""
    rec = Recorder(answer_json({"id": "task_s", "status": "running"}))
    async with client_for(rec) as client:
        with pytest.raises(ResponseFormatError, match="expected an event stream"):
            async with client.generate_stream({"model": "m", "prompt": "p"}):
                pass


@pytest.mark.anyio
async def test_generate_stream_cut_midway() -> None:
    """A stream whose connection dies mid-way raises ConnectionLostError."""

    async def body() -> AsyncIterator[bytes]:
        yield sse([frame(10)])
        raise httpx.ReadError("peer closed")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    seen: list[int] = []

    async def consume(client: CobabaClient) -> None:
        async with client.generate_stream({"model": "m", "prompt": "p"}) as stream:
            async for info in stream:
                seen.append(info.progress)

    async with client_for(Recorder(handler)) as client:
        with pytest.raises(ConnectionLostError):
            await consume(client)
    assert seen == [10]


def chunk(text: str, finish: str | None = None) -> str:
    """One chat.completion.chunk frame."""
    body = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }
    return "data: " + json.dumps(body, ensure_ascii=False)


@pytest.mark.anyio
async def test_chat_stream_skips_ping_and_stops_at_done() -> None:
    """chat_completions_stream skips ': PING' comments and ends at [DONE]."""
    data = sse(
        [
            ": PING",
            chunk("你"),
            ": PING",
            chunk("好"),
            chunk("", "stop"),
            "data: [DONE]",
            chunk("x"),
        ]
    )
    rec = Recorder(answer_sse(data))
    async with (
        client_for(rec) as client,
        client.chat_completions_stream({"model": "g", "messages": []}) as stream,
    ):
        parts = [c async for c in stream]
    assert "".join(p.delta for p in parts) == "你好"
    assert parts[-1].finish_reason == "stop"
    assert rec.body()["stream"] is True


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("rate_limit_exceeded", RateLimitError),
        ("invalid_api_key", AuthenticationError),
        ("model_not_found", ModelUnavailableError),
        ("upstream_error", UpstreamError),
        ("something_else", UpstreamError),
    ],
)
async def test_chat_stream_error_frame(code: str, error: type[APIError]) -> None:
    """A mid-stream {"error": {...}} frame raises the APIError matching its code."""
    data = sse([chunk("a"), "data: " + json.dumps(envelope_error(code, "stream broke"))])
    got: list[str] = []

    async def consume(client: CobabaClient) -> None:
        async with client.chat_completions_stream({"model": "g", "messages": []}) as stream:
            async for part in stream:
                got.append(part.delta)

    async with client_for(Recorder(answer_sse(data))) as client:
        with pytest.raises(APIError, match="stream broke") as info:
            await consume(client)
    assert type(info.value) is error
    assert got == ["a"]


# --- secrecy: the canary key ----------------------------------------------------------------


def echo_key(request: httpx.Request) -> str:
    """What a careless server would echo: the credentials it received."""
    return f"{request.headers.get('authorization', '')} {request.headers.get('cookie', '')}"


def echo_json(status: int, make: Callable[[str], object], **headers: str) -> Handler:
    """A handler answering JSON built from the echoed credentials."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=make(echo_key(request)), headers=headers)

    return handler


def echo_text(status: int, **headers: str) -> Handler:
    """A handler answering plain text that echoes the credentials."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=f"denied for {echo_key(request)}", headers=headers)

    return handler


def echo_raise(exc_type: type[httpx.TransportError]) -> Handler:
    """A handler failing at the transport with the credentials in the message."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed with {echo_key(request)}", request=request)

    return handler


def echo_sse_error(request: httpx.Request) -> httpx.Response:
    """A chat stream whose error frame echoes the credentials."""
    data = sse(
        [chunk("a"), "data: " + json.dumps(envelope_error("upstream_error", echo_key(request)))]
    )
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)


Action = Callable[[CobabaClient], Awaitable[object]]


async def do_result(client: CobabaClient) -> object:
    """Poll a task."""
    return await client.get_result("task_1")


async def do_generate(client: CobabaClient) -> object:
    """Submit on the unified route."""
    return await client.generate_async({"model": "m", "prompt": "p"})


async def do_credits(client: CobabaClient) -> object:
    """Ask for the balance."""
    return await client.get_credits()


async def do_chat_stream(client: CobabaClient) -> object:
    """Read a whole chat stream."""
    async with client.chat_completions_stream({"model": "g", "messages": []}) as stream:
        return [c async for c in stream]


async def do_generate_stream(client: CobabaClient) -> object:
    """Read a whole generate stream."""
    async with client.generate_stream({"model": "m", "prompt": "p"}) as stream:
        return [f async for f in stream]


@dataclass(frozen=True)
class CanaryCase:
    """One error path driven with a canary credential."""

    handler: Handler
    action: Action
    error: type[BatchgenError]
    playground: bool = False


def env(message: str, code: str) -> dict[str, Any]:
    """Shortcut for the error envelope."""
    return envelope_error(code, message)


CANARY_CASES: dict[str, CanaryCase] = {
    "401-invalid_api_key": CanaryCase(
        echo_json(401, lambda k: env(f"无效的令牌 {k}", "invalid_api_key")),
        do_generate,
        AuthenticationError,
    ),
    "401-token_invalid": CanaryCase(
        echo_json(401, lambda k: env(k, "token_invalid")), do_result, AuthenticationError
    ),
    "403": CanaryCase(
        echo_json(403, lambda k: env(k, "token_model_forbidden")),
        do_generate,
        PermissionDeniedError,
    ),
    "404-task_not_found": CanaryCase(
        echo_json(404, lambda k: env(k, "task_not_found")), do_result, TaskNotFoundError
    ),
    "200-code-22": CanaryCase(
        echo_json(200, lambda k: {"code": -22, "msg": k, "data": None}),
        do_result,
        TaskNotFoundError,
    ),
    "200-business": CanaryCase(
        echo_json(200, lambda k: {"code": 1001, "msg": k, "data": None}),
        do_generate,
        BusinessError,
    ),
    "429-retry-after": CanaryCase(
        echo_json(429, lambda k: env(k, "rate_limit_exceeded"), **{"Retry-After": "7"}),
        do_generate,
        RateLimitError,
    ),
    "429-empty": CanaryCase(answer_raw(b"", status=429), do_generate, RateLimitError),
    "503": CanaryCase(
        echo_json(503, lambda k: env(k, "model_not_found")), do_generate, ModelUnavailableError
    ),
    "500": CanaryCase(
        echo_json(500, lambda k: env(k, "upstream_error")), do_generate, UpstreamError
    ),
    "502-text": CanaryCase(echo_text(502), do_generate, UpstreamError),
    "400": CanaryCase(
        echo_json(400, lambda k: env(k, "bad_request")), do_generate, BadRequestError
    ),
    "400-text": CanaryCase(echo_text(400), do_generate, BadRequestError),
    "200-not-json": CanaryCase(echo_text(200), do_result, ResponseFormatError),
    "200-empty": CanaryCase(answer_raw(b""), do_result, ResponseFormatError),
    "200-bad-status": CanaryCase(
        echo_json(200, lambda k: {"id": "task_1", "status": k.strip()}),
        do_result,
        ResponseFormatError,
    ),
    "request-id-echo": CanaryCase(
        lambda r: httpx.Response(
            500, json=env("x", "upstream_error"), headers={"X-Oneapi-Request-Id": echo_key(r)}
        ),
        do_generate,
        UpstreamError,
    ),
    "connect-error": CanaryCase(echo_raise(httpx.ConnectError), do_generate, ConnectError),
    "connect-timeout": CanaryCase(
        echo_raise(httpx.ConnectTimeout), do_generate, RequestTimeoutError
    ),
    "pool-timeout": CanaryCase(echo_raise(httpx.PoolTimeout), do_generate, RequestTimeoutError),
    "read-timeout": CanaryCase(echo_raise(httpx.ReadTimeout), do_result, RequestTimeoutError),
    "remote-protocol": CanaryCase(
        echo_raise(httpx.RemoteProtocolError), do_result, ConnectionLostError
    ),
    "read-error": CanaryCase(echo_raise(httpx.ReadError), do_result, ConnectionLostError),
    "sse-error-frame": CanaryCase(echo_sse_error, do_chat_stream, UpstreamError),
    "sse-open-401": CanaryCase(
        echo_json(401, lambda k: env(k, "invalid_api_key")), do_generate_stream, AuthenticationError
    ),
    "sse-connect-error": CanaryCase(
        echo_raise(httpx.ConnectError), do_generate_stream, ConnectError
    ),
    "playground-401": CanaryCase(
        echo_json(401, lambda k: {"success": False, "message": f"bad session {k}"}),
        do_result,
        AuthenticationError,
        playground=True,
    ),
    "playground-500-text": CanaryCase(echo_text(500), do_generate, UpstreamError, playground=True),
    "playground-200-not-json": CanaryCase(
        echo_text(200), do_result, ResponseFormatError, playground=True
    ),
    "playground-read-error": CanaryCase(
        echo_raise(httpx.ReadError), do_result, ConnectionLostError, playground=True
    ),
}

FIXED_CANARY_CASES: dict[str, tuple[CanaryCase, str]] = {
    "get-credits-401": (
        CanaryCase(
            echo_json(401, lambda k: env("bad key", "invalid_api_key")),
            do_credits,
            AuthenticationError,
        ),
        "BUG: get_credits puts the key in the URL query and httpx logs that URL at INFO",
    ),
    "code-echo": (
        CanaryCase(echo_json(400, lambda k: env("bad", k.strip())), do_generate, BadRequestError),
        "BUG: an error.code echoing the key is kept unredacted in exc.code and shown by repr",
    ),
}


def texts_of(exc: BaseException, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every rendering of ``exc`` and of the captured log a user might see."""
    out = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    cause = exc.__cause__
    while cause is not None:
        out += [str(cause), repr(cause)]
        cause = cause.__cause__
    out += [record.getMessage() for record in caplog.records]
    out.append(caplog.text)
    return out


def canary_params() -> list[Any]:
    """The canary cases, including those that once leaked (kept as regressions)."""
    params: list[Any] = [pytest.param(case, id=name) for name, case in CANARY_CASES.items()]
    params += [pytest.param(case, id=name) for name, (case, _why) in FIXED_CANARY_CASES.items()]
    return params


@pytest.mark.anyio
@pytest.mark.parametrize("case", canary_params())
async def test_canary_never_leaks(case: CanaryCase, caplog: pytest.LogCaptureFixture) -> None:
    """On every error path the credential is absent from the error, its traceback and the logs."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx2", "httpcore2", "batchgen"):
        caplog.set_level(logging.DEBUG, logger=name)
    secret = SESSION_CANARY if case.playground else CANARY
    auth: BearerAuth | PlaygroundAuth = (
        PlaygroundAuth(session=SESSION_CANARY, user_id="7")
        if case.playground
        else BearerAuth(CANARY)
    )
    client = client_for(case.handler, auth=auth)
    async with client:
        with pytest.raises(BatchgenError) as info:
            await case.action(client)
        assert type(info.value) is case.error
        assert secret not in repr(client)
    for text in texts_of(info.value, caplog):
        assert secret not in text


def test_auth_reprs_hide_secrets() -> None:
    """repr of BearerAuth, PlaygroundAuth and the client never shows the credential."""
    bearer = BearerAuth(CANARY)
    playground = PlaygroundAuth(session=SESSION_CANARY, user_id="7")
    assert CANARY not in repr(bearer)
    assert CANARY not in str(bearer)
    assert SESSION_CANARY not in repr(playground)
    assert repr(CobabaClient(auth=bearer)) == f"CobabaClient(base_url='{BASE}', auth=bearer)"
    assert SESSION_CANARY not in repr(CobabaClient(auth=playground))


@pytest.mark.anyio
async def test_get_credits_logs_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """A successful get_credits leaves no log record containing the key."""
    caplog.set_level(logging.DEBUG)
    async with client_for(
        answer_json({"code": 0, "data": {"credits": 1}}), BearerAuth(CANARY)
    ) as c:
        await c.get_credits()
    assert CANARY not in caplog.text
