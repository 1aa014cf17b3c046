"""The canary-key test: a unique key, driven through every error path, must leak nowhere.

Each scenario runs against its own simulator with the canary as its API key, catches the
error it provokes, and then the canary (and its distinctive hex body, which would survive
a partial mask) must be absent from the exception's str, repr, args, attributes and
formatted traceback, from every log record captured at every level (httpx, httpcore,
uvicorn, batchgen), and from the ``/_sim/stats``, ``/_sim/tasks`` and ``/_sim/config``
bodies.
"""

from __future__ import annotations

import logging
import secrets
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts
from batchgen.api.client import CobabaClient
from batchgen.errors import (
    Accepted,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    BusinessError,
    ConnectError,
    ConnectionLostError,
    DownloadTooLargeError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResultExpiredError,
    TaskNotFoundError,
    TruncatedDownloadError,
    UnsafeURLError,
    UpstreamError,
)
from batchgen.output.fetch import Downloader
from batchgen.sim import SimConfig, SimServer
from tests.conftest import SimFactory
from tests.test_client_sim import NOW

pytestmark = pytest.mark.anyio

#: Every logger whose records are captured, at every level.
LOGGERS = (
    "",
    "httpx2",
    "httpcore2",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.asgi",
    "batchgen",
)
SUBMIT = {"model": "nano-banana", "prompt": f"p {NOW}"}
CHAT = {"model": "gemini-3.1-pro-preview", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True)
class Secrets:
    """The canaries of one test: an API key and a playground session cookie."""

    key: str
    session: str

    def needles(self) -> tuple[str, ...]:
        """Every string that must not appear: each canary and its random part alone."""
        return (
            self.key,
            self.key.removeprefix("sk-canary-"),
            self.session,
            self.session.removeprefix("canary-session-"),
        )


@pytest.fixture
def canary() -> Secrets:
    """A fresh canary key ``sk-canary-<hex>`` and session cookie for this test only."""
    return Secrets(
        key=f"sk-canary-{secrets.token_hex(16)}",
        session=f"canary-session-{secrets.token_hex(16)}",
    )


@dataclass
class World:
    """What a scenario works with: the simulator, the canaries, a scratch folder."""

    sim: SimServer
    secrets: Secrets
    tmp: Path

    def client(self, *, timeouts: Timeouts | None = None) -> CobabaClient:
        """A client authenticated with the canary key."""
        return CobabaClient(
            auth=BearerAuth(self.secrets.key), base_url=self.sim.base_url, timeouts=timeouts
        )

    async def result_url(self) -> str:
        """The URL of a finished task's image, submitted with the canary key."""
        async with self.client() as client:
            submission = await client.generate_async(SUBMIT)
            return (await client.get_result(submission.task_id)).urls[0]

    async def download(self, url: str, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        """Fetch ``url`` into the scratch folder with a local-allowing Downloader."""
        async with Downloader(allow_local=True, max_bytes=max_bytes) as downloader:
            await downloader.fetch(url, self.tmp / "image.png")


Scenario = Callable[[World], Awaitable[None]]
#: name -> (the error class expected, its ``accepted`` flag, the scenario raising it)
SCENARIOS: dict[str, tuple[type[BatchgenError], Accepted, Scenario]] = {}


def scenario(
    name: str, expected: type[BatchgenError], accepted: Accepted = Accepted.NO
) -> Callable[[Scenario], Scenario]:
    """Register an error scenario under ``name``."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (expected, accepted, fn)
        return fn

    return register


# --- the error paths ------------------------------------------------------------------------


@scenario("invalid-key", AuthenticationError)
async def _invalid_key(w: World) -> None:
    w.sim.config.keys = ["sk-sim"]
    async with w.client() as client:
        await client.generate_async(SUBMIT)


@scenario("invalid-key-credits", AuthenticationError)
async def _invalid_key_credits(w: World) -> None:
    w.sim.config.keys = ["sk-sim"]
    async with w.client() as client:
        await client.get_credits()  # the key travels in the query string here


@scenario("revoked", AuthenticationError)
async def _revoked(w: World) -> None:
    async with w.client() as client:
        await client.generate_async(SUBMIT)
        w.sim.config.keys = []
        await client.generate_async(SUBMIT)


@scenario("revoked-credits", AuthenticationError)
async def _revoked_credits(w: World) -> None:
    async with w.client() as client:
        await client.get_credits()
        w.sim.config.keys = []
        await client.get_credits()


@scenario("revoked-stream", AuthenticationError)
async def _revoked_stream(w: World) -> None:
    async with w.client() as client:
        await client.generate_async(SUBMIT)
        w.sim.config.keys = []
        async with client.generate_stream(SUBMIT) as frames:
            async for _ in frames:
                pass


@scenario("playground-wrong-user", AuthenticationError)
async def _playground_wrong_user(w: World) -> None:
    auth = PlaygroundAuth(session=w.secrets.session, user_id="2")
    async with CobabaClient(auth=auth, base_url=w.sim.base_url) as client:
        await client.generate_async(SUBMIT)


@scenario("forbidden", PermissionDeniedError)
async def _forbidden(w: World) -> None:
    w.sim.config.forbid = ["nano-banana"]
    async with w.client() as client:
        await client.generate_async(SUBMIT)


@scenario("not-found-404", TaskNotFoundError)
async def _not_found_404(w: World) -> None:
    async with w.client() as client:
        await client.get_result("task_0123")


@scenario("not-found-code-22", TaskNotFoundError)
async def _not_found_22(w: World) -> None:
    w.sim.config.not_found_style = "code-22"
    async with w.client() as client:
        await client.get_result("task_0123")


async def _twice(w: World) -> None:
    w.sim.config.rpm = 6
    w.sim.config.burst = 1
    async with w.client() as client:
        await client.generate_async(SUBMIT)
        await client.generate_async(SUBMIT)


@scenario("rate-limit-seconds", RateLimitError)
async def _rate_limit_seconds(w: World) -> None:
    await _twice(w)


@scenario("rate-limit-date", RateLimitError)
async def _rate_limit_date(w: World) -> None:
    w.sim.config.retry_after_format = "date"
    await _twice(w)


@scenario("rate-limit-no-retry-after", RateLimitError)
async def _rate_limit_bare(w: World) -> None:
    w.sim.config.retry_after = False
    await _twice(w)


@scenario("rate-limit-empty-body", RateLimitError)
async def _rate_limit_empty(w: World) -> None:
    w.sim.config.empty_429 = True
    await _twice(w)


@scenario("poll-rate-limit", RateLimitError)
async def _poll_rate_limit(w: World) -> None:
    w.sim.config.poll_rpm = 6
    async with w.client() as client:
        submission = await client.generate_async(SUBMIT)
        await client.get_result(submission.task_id)
        await client.get_result(submission.task_id)


@scenario("model-down", ModelUnavailableError)
async def _model_down(w: World) -> None:
    w.sim.config.down = ["nano-banana"]
    async with w.client() as client:
        await client.generate_async(SUBMIT)


@scenario("upstream-error", UpstreamError)
async def _upstream_error(w: World) -> None:
    w.sim.config.error_rate = 1.0
    async with w.client() as client:
        await client.submit_nano_banana(SUBMIT)


@scenario("chat-error", UpstreamError)
async def _chat_error(w: World) -> None:
    async with w.client() as client:
        await client.chat_completions(
            {**CHAT, "messages": [{"role": "user", "content": "[sim:error]"}]}
        )


@scenario("chat-stream-error", UpstreamError)
async def _chat_stream_error(w: World) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "[sim:error]"}]}
    async with w.client() as client, client.chat_completions_stream(body) as chunks:
        async for _ in chunks:
            pass


@scenario("no-credits", BusinessError)
async def _no_credits(w: World) -> None:
    w.sim.config.credits = 0.0
    async with w.client() as client:
        await client.generate_async(SUBMIT)


@scenario("bad-aspect-ratio", BadRequestError)
async def _bad_aspect(w: World) -> None:
    async with w.client() as client:
        await client.generate_async({**SUBMIT, "aspectRatio": "7:5"})


@scenario("dropped-answer", ConnectionLostError, Accepted.UNKNOWN)
async def _dropped(w: World) -> None:
    w.sim.config.drop_rate = 1.0
    async with w.client() as client:
        await client.generate_async(SUBMIT)


@scenario("hung-poll", RequestTimeoutError, Accepted.UNKNOWN)
async def _hung_poll(w: World) -> None:
    async with w.client(timeouts=Timeouts(poll=0.3)) as client:
        submission = await client.generate_async(SUBMIT)
        w.sim.config.poll_hang_rate = 1.0
        await client.get_result(submission.task_id)


@scenario("slow-json-reply", RequestTimeoutError, Accepted.UNKNOWN)
async def _slow_json(w: World) -> None:
    async with w.client(timeouts=Timeouts(sync=0.2)) as client:
        await client.generate_json({"model": "nano-banana", "prompt": "p [sim:latency=30]"})


@contextmanager
def refused_base_url() -> Iterator[str]:
    """A base URL on a loopback port that is bound but not listening (connections refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@scenario("unreachable", ConnectError)
async def _unreachable(w: World) -> None:
    with refused_base_url() as base:
        async with CobabaClient(auth=BearerAuth(w.secrets.key), base_url=base) as client:
            await client.generate_async(SUBMIT)


@scenario("unreachable-credits", ConnectError)
async def _unreachable_credits(w: World) -> None:
    with refused_base_url() as base:
        async with CobabaClient(auth=BearerAuth(w.secrets.key), base_url=base) as client:
            await client.get_credits()


@scenario("truncated-download", TruncatedDownloadError)
async def _truncated(w: World) -> None:
    url = await w.result_url()
    w.sim.config.truncate_rate = 1.0
    await w.download(url)


@scenario("oversize-download", DownloadTooLargeError)
async def _oversize(w: World) -> None:
    url = await w.result_url()
    w.sim.config.oversize_rate = 1.0
    await w.download(url, max_bytes=256 * 1024)


@scenario("expired-url", ResultExpiredError)
async def _expired(w: World) -> None:
    w.sim.config.url_ttl = 0.0  # any time after the task ended is too late
    await w.download(await w.result_url())


@scenario("file-url", UnsafeURLError)
async def _file_url(w: World) -> None:
    w.sim.config.result_url_template = "file:///etc/{file}"
    await w.download(await w.result_url())


@scenario("redirect-elsewhere", UnsafeURLError)
async def _redirect(w: World) -> None:
    w.sim.config.result_url_template = "{origin}/_sim/redirect?to=http://10.0.0.1/{file}"
    await w.download(await w.result_url())


@scenario("loopback-refused", UnsafeURLError)
async def _loopback(w: World) -> None:
    url = await w.result_url()
    async with Downloader() as downloader:
        await downloader.fetch(url, w.tmp / "image.png")


# --- the checks -------------------------------------------------------------------------------


def exception_texts(exc: BaseException) -> list[str]:
    """Every text an exception shows: str, repr, args, attributes, traceback, its chain."""
    texts = [
        str(exc),
        repr(exc),
        repr(exc.args),
        "".join(traceback.format_exception(exc)),
        repr(getattr(exc, "__notes__", None)),
    ]
    texts.extend(f"{name}={value!r}" for name, value in vars(exc).items())
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            texts.extend([str(linked), repr(linked)])
    return texts


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    """Every text of the captured log records: the message, raw msg and args, any traceback."""
    texts: list[str] = []
    formatter = logging.Formatter()
    for record in records:
        texts.extend([record.getMessage(), str(record.msg), repr(record.args)])
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return texts


def assert_absent(needles: tuple[str, ...], texts: list[str], where: str) -> None:
    """No needle occurs in any of ``texts``."""
    for text in texts:
        for needle in needles:
            assert needle not in text, f"canary leaked into {where}: {text[:300]!r}"


async def sim_bodies(sim: SimServer) -> dict[str, str]:
    """The raw bodies of the simulator's stats, tasks and config routes."""
    async with httpx.AsyncClient(trust_env=False) as plain:
        return {
            path: (await plain.get(sim.origin + path)).text
            for path in ("/_sim/stats", "/_sim/tasks", "/_sim/config")
        }


@pytest.fixture
async def world(
    sim_factory: SimFactory, canary: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[World]:
    """A simulator keyed with the canary, every logger captured at every level."""
    config = SimConfig(
        latency=0.05,
        seed=0,
        image_scale=0.05,
        keys=[canary.key],
        sessions={canary.session: "1"},
    )
    async with sim_factory(config) as sim:
        # uvicorn sets its loggers to WARNING when a server is configured: lower them after.
        for name in LOGGERS:
            caplog.set_level(1, logger=name or None)
        yield World(sim, canary, tmp_path)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_canary_absent_from_every_error_path(
    world: World, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """The error of each scenario, the logs and the simulator's reports never show the canary."""
    expected, accepted, run = SCENARIOS[name]
    with pytest.raises(BatchgenError) as caught:
        await run(world)
    error = caught.value
    assert type(error) is expected, repr(error)
    assert error.accepted is accepted
    needles = world.secrets.needles()
    assert_absent(needles, exception_texts(error), f"the {type(error).__name__}")
    bodies = await sim_bodies(world.sim)
    assert caplog.records, "the capture works (httpx logs every request)"
    assert_absent(needles, record_texts(caplog.records), "a log record")
    assert_absent(needles, [caplog.text], "the captured log text")
    assert_absent(world.secrets.needles()[:2], list(bodies.values()), "a /_sim body")


def test_every_error_class_has_a_canary_scenario() -> None:
    """The scenarios cover every leaf error class the client and downloader raise from HTTP."""
    covered = {expected for expected, _, _ in SCENARIOS.values()}
    assert covered >= {
        AuthenticationError,
        PermissionDeniedError,
        TaskNotFoundError,
        RateLimitError,
        ModelUnavailableError,
        UpstreamError,
        BadRequestError,
        BusinessError,
        ConnectError,
        RequestTimeoutError,
        ConnectionLostError,
        ResultExpiredError,
        UnsafeURLError,
        DownloadTooLargeError,
        TruncatedDownloadError,
    }


async def test_canary_key_works_while_valid(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """The canary is a real key: every route succeeds with it, and still nothing shows it."""
    async with world.client() as client:
        submission = await client.generate_async(SUBMIT)
        await client.get_result(submission.task_id)
        await client.generate_json(SUBMIT)
        await client.get_credits()
        await client.get_model_status("nano-banana")
        await client.chat_completions(CHAT)
        rendered = [repr(client), repr(client.auth), repr(submission)]
    assert_absent(world.secrets.needles(), rendered, "a repr")
    assert_absent(world.secrets.needles(), record_texts(caplog.records), "a log record")
    bodies = await sim_bodies(world.sim)
    assert_absent(world.secrets.needles()[:2], list(bodies.values()), "a /_sim body")


async def test_session_cookie_absent_from_sim_config(world: World) -> None:
    """GET /_sim/config does not reveal a playground session cookie (a login credential)."""
    bodies = await sim_bodies(world.sim)
    assert world.secrets.session not in bodies["/_sim/config"]


async def test_canary_absent_from_an_enabled_access_log(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """With the simulator's access log switched on, its request lines do not show the key."""
    caplog.set_level(1, logger="uvicorn.access")
    access = logging.getLogger("uvicorn.access")  # it does not propagate: attach directly
    access.addHandler(caplog.handler)
    try:
        async with world.client() as client:
            await client.get_credits()
    finally:
        access.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    if not lines:
        pytest.fail("the access log recorded nothing: the check would be vacuous")
    assert_absent(world.secrets.needles(), lines, "the simulator's access log")
