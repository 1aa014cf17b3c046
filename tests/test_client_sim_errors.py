"""Every error class of batchgen.errors, produced by the real simulator over loopback HTTP.

Each test pins the class, the flags the runner's policy reads (``retryable``,
``accepted``, ``code``) and, where money is involved, what the simulator charged.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping

import pytest

from batchgen.api.auth import BearerAuth, Timeouts
from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.api.client import CobabaClient
from batchgen.api.responses import TaskStatus
from batchgen.errors import (
    Accepted,
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    BusinessError,
    ConnectError,
    ConnectionLostError,
    ModelUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    TaskNotFoundError,
    UpstreamError,
)
from batchgen.sim import SimConfig, SimServer
from tests.conftest import SimFactory
from tests.test_client_sim import NOW, client_for, sim_json

pytestmark = pytest.mark.anyio

SUBMIT = {"model": "nano-banana", "prompt": f"p {NOW}"}


def assert_refusal(error: APIError, *, status: int | None, code: str, retryable: bool) -> None:
    """An answered error: its status, code and retry flag, never accepted, with a request id."""
    assert error.status == status
    assert error.code == code
    assert error.retryable is retryable
    assert error.accepted is Accepted.NO
    assert error.route
    assert error.request_id


# --- 401 / 403 ------------------------------------------------------------------------


async def test_invalid_key_is_an_authentication_error(sim: SimServer) -> None:
    """An unknown key is AuthenticationError invalid_api_key, exit code 3, nothing charged."""
    async with client_for(sim, "sk-not-a-real-key-123") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate_async(SUBMIT)
        with pytest.raises(AuthenticationError) as on_credits:
            await client.get_credits()
    error = caught.value
    assert_refusal(error, status=401, code="invalid_api_key", retryable=False)
    assert error.exit_code == 3
    assert "invalid API key" in str(error)
    assert on_credits.value.code == "invalid_api_key"
    assert sim.stats()["submissions_charged"] == 0


async def test_key_revoked_mid_test_is_token_invalid(sim: SimServer) -> None:
    """A key that worked and is then removed from the simulator answers token_invalid."""
    async with client_for(sim) as client:
        first = await client.generate_async(SUBMIT)
        sim.config.keys = ["sk-someone-else"]
        with pytest.raises(AuthenticationError) as on_submit:
            await client.generate_async(SUBMIT)
        with pytest.raises(AuthenticationError) as on_poll:
            await client.get_result(first.task_id)
        with pytest.raises(AuthenticationError) as on_status:
            await client.get_model_status("nano-banana")
    for caught in (on_submit, on_poll, on_status):
        assert_refusal(caught.value, status=401, code="token_invalid", retryable=False)
        assert caught.value.exit_code == 3
    assert sim.stats()["submissions_charged"] == 1


async def drain_stream(client: CobabaClient) -> None:
    """Open a task stream for SUBMIT and read it to the end."""
    async with client.generate_stream(SUBMIT) as frames:
        async for _ in frames:
            pass


async def test_revoked_key_on_a_stream_route(sim: SimServer) -> None:
    """A revoked key on generate_stream raises AuthenticationError before any frame."""
    async with client_for(sim) as client:
        await client.generate_async(SUBMIT)
        sim.config.keys = []
        with pytest.raises(AuthenticationError) as caught:
            await drain_stream(client)
    assert caught.value.code == "token_invalid"


async def test_forbidden_model_is_permission_denied(sim: SimServer) -> None:
    """A forbidden model is PermissionDeniedError token_model_forbidden on every route."""
    sim.config.forbid = ["nano-banana", "gemini-3.1-pro-preview"]
    async with client_for(sim) as client:
        with pytest.raises(PermissionDeniedError) as on_generate:
            await client.generate_async(SUBMIT)
        with pytest.raises(PermissionDeniedError) as on_draw:
            await client.submit_nano_banana(SUBMIT)
        with pytest.raises(PermissionDeniedError) as on_chat:
            await client.chat_completions(
                {"model": "gemini-3.1-pro-preview", "messages": [{"role": "user", "content": "x"}]}
            )
    for caught in (on_generate, on_draw):
        assert_refusal(caught.value, status=403, code="token_model_forbidden", retryable=False)
    assert on_chat.value.status == 403
    assert sim.stats()["submissions_charged"] == 0


# --- 404 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "status"), [("404", 404), ("code-22", 200)])
async def test_unknown_task_id_is_task_not_found(sim: SimServer, style: str, status: int) -> None:
    """An unknown id is TaskNotFoundError task_not_found in both not-found styles."""
    sim.config.not_found_style = style  # type: ignore[assignment]
    async with client_for(sim) as client:
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_result("task_ffffffffffffffffffffffffffffffff")
    assert_refusal(caught.value, status=status, code="task_not_found", retryable=False)


async def test_another_keys_task_is_not_found(sim: SimServer) -> None:
    """A task of another key is TaskNotFoundError, not someone else's result."""
    sim.config.keys = ["sk-sim", "sk-other-key-0001"]
    async with client_for(sim) as owner, client_for(sim, "sk-other-key-0001") as other:
        submission = await owner.generate_async(SUBMIT)
        with pytest.raises(TaskNotFoundError):
            await other.get_result(submission.task_id)
        assert (await owner.get_result(submission.task_id)).status is TaskStatus.SUCCEEDED


# --- 429 ------------------------------------------------------------------------------------


@pytest.fixture
def limited(sim: SimServer) -> SimServer:
    """The simulator with one submission per 10 s (6 rpm, burst 1)."""
    sim.config.rpm = 6
    sim.config.burst = 1
    return sim


async def second_submission_error(sim: SimServer) -> RateLimitError:
    """Submit twice in a row and return the RateLimitError of the second."""
    async with client_for(sim) as client:
        await client.generate_async(SUBMIT)
        with pytest.raises(RateLimitError) as caught:
            await client.generate_async(SUBMIT)
    return caught.value


async def test_rate_limit_with_retry_after_seconds(limited: SimServer) -> None:
    """Past the burst, RateLimitError carries the bucket's wait from Retry-After in seconds."""
    error = await second_submission_error(limited)
    assert_refusal(error, status=429, code="rate_limit_exceeded", retryable=True)
    assert error.retry_after == 10.0
    assert "retry after 10s" in str(error)
    stats = limited.stats()
    assert stats["rate_limited"] == 1
    assert stats["submissions_charged"] == 1


async def test_rate_limit_with_retry_after_date(limited: SimServer) -> None:
    """A Retry-After sent as an HTTP date becomes about the same number of seconds."""
    limited.config.retry_after_format = "date"
    error = await second_submission_error(limited)
    assert error.retry_after is not None
    assert 9.0 <= error.retry_after <= 11.5


async def test_rate_limit_without_retry_after(limited: SimServer) -> None:
    """Without a Retry-After header the error is still RateLimitError, retry_after None."""
    limited.config.retry_after = False
    error = await second_submission_error(limited)
    assert error.retry_after is None
    assert error.retryable
    assert error.status == 429


async def test_rate_limit_with_an_empty_body(limited: SimServer) -> None:
    """An empty 429 body is still RateLimitError rate_limit_exceeded with its Retry-After."""
    limited.config.empty_429 = True
    error = await second_submission_error(limited)
    assert error.code == "rate_limit_exceeded"
    assert error.status == 429
    assert error.retry_after == 10.0
    assert "rate limited" in str(error)


async def test_forced_retry_after_value(limited: SimServer) -> None:
    """A forced Retry-After value reaches retry_after unchanged."""
    limited.config.retry_after_value = 3
    error = await second_submission_error(limited)
    assert error.retry_after == 3.0


async def test_upstream_busy_is_a_rate_limit(sim: SimServer) -> None:
    """busy_rate 1 ("upstream busy") is a retryable RateLimitError, nothing charged."""
    sim.config.busy_rate = 1.0
    async with client_for(sim) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.submit_nano_banana(SUBMIT)
    assert caught.value.retry_after == 1.0
    assert "upstream busy" in str(caught.value)
    assert sim.stats()["submissions_charged"] == 0


async def test_poll_rate_limit(sim: SimServer) -> None:
    """The separate poll bucket (poll_rpm) makes get_result raise RateLimitError."""
    sim.config.poll_rpm = 6
    async with client_for(sim) as client:
        submission = await client.generate_async(SUBMIT)
        await client.get_result(submission.task_id)
        with pytest.raises(RateLimitError) as caught:
            await client.get_result(submission.task_id)
    assert caught.value.route == "POST /draw/result"
    assert caught.value.retry_after == 10.0


# --- 5xx and business errors --------------------------------------------------------------


async def test_down_model_is_model_unavailable(sim: SimServer) -> None:
    """A model with no channel is ModelUnavailableError model_not_found, retryable."""
    sim.config.down = ["nano-banana"]
    async with client_for(sim) as client:
        with pytest.raises(ModelUnavailableError) as caught:
            await client.generate_async(SUBMIT)
        with pytest.raises(ModelUnavailableError):
            await client.images_generations({"model": "nano-banana", "prompt": "p"})
    assert_refusal(caught.value, status=503, code="model_not_found", retryable=True)
    assert sim.stats()["submissions_charged"] == 0


async def test_injected_upstream_errors_are_not_charged(sim: SimServer) -> None:
    """error_rate 1 gives 500/502 UpstreamError: retryable, not accepted, nothing charged."""
    sim.config.error_rate = 1.0
    errors: list[UpstreamError] = []
    async with client_for(sim) as client:
        for _ in range(6):
            with pytest.raises(UpstreamError) as caught:
                await client.generate_async(SUBMIT)
            errors.append(caught.value)
        with pytest.raises(UpstreamError):
            await client.submit_draw_completions({"model": "gpt-image-2", "prompt": "p"})
        with pytest.raises(UpstreamError):
            await client.generate_json(SUBMIT)
    for error in errors:
        assert error.status in (500, 502)
        assert_refusal(error, status=error.status, code="upstream_error", retryable=True)
    assert {e.status for e in errors} == {500, 502}, "the seeded draws give both statuses"
    stats = sim.stats()
    assert stats["errors_injected"] == 8
    assert stats["submissions_charged"] == 0
    assert stats["charged_total"] == 0
    assert await sim_json(sim, "/_sim/tasks") == []


async def test_exhausted_credits_are_a_business_error(sim_factory: SimFactory) -> None:
    """A submission the balance cannot pay is BusinessError (HTTP 200, code -1), uncharged."""
    config = SimConfig(latency=0.05, seed=0, credits=DEFAULT_PRICES["nano-banana"] * 1.5)
    async with sim_factory(config) as sim, client_for(sim) as client:
        await client.generate_async(SUBMIT)
        with pytest.raises(BusinessError) as caught:
            await client.generate_async(SUBMIT)
        with pytest.raises(BusinessError):
            await client.generate_json(SUBMIT)
        with pytest.raises(BusinessError):
            await client.submit_nano_banana(SUBMIT)
        credits = await client.get_credits()
        stats = sim.stats()
    assert_refusal(caught.value, status=200, code="code_-1", retryable=False)
    assert "insufficient credits" in str(caught.value)
    assert credits.credits == pytest.approx(DEFAULT_PRICES["nano-banana"] * 0.5)
    assert stats["submissions_charged"] == 1


# --- no usable answer -------------------------------------------------------------------------


async def test_dropped_answer_is_connection_lost_but_charged(sim: SimServer) -> None:
    """drop_rate 1: ConnectionLostError accepted UNKNOWN, and the simulator did charge it."""
    sim.config.drop_rate = 1.0
    async with client_for(sim) as client:
        with pytest.raises(ConnectionLostError) as on_generate:
            await client.generate_async(SUBMIT)
        with pytest.raises(ConnectionLostError) as on_draw:
            await client.submit_nano_banana(SUBMIT)
    for caught in (on_generate, on_draw):
        assert caught.value.accepted is Accepted.UNKNOWN
        assert caught.value.retryable
        assert caught.value.code == "connection_lost"
    stats = sim.stats()
    assert stats["submissions_dropped"] == 2
    assert stats["submissions_charged"] == 2
    assert stats["charged_total"] == pytest.approx(2 * DEFAULT_PRICES["nano-banana"])
    rows = await sim_json(sim, "/_sim/tasks")
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], "the answer was lost"


async def test_hung_poll_is_a_timeout_of_unknown_acceptance(sim: SimServer) -> None:
    """A poll that never answers is RequestTimeoutError accepted UNKNOWN after Timeouts.poll."""
    async with client_for(sim, timeouts=Timeouts(poll=0.3)) as client:
        submission = await client.generate_async(SUBMIT)
        sim.config.poll_hang_rate = 1.0
        with pytest.raises(RequestTimeoutError) as caught:
            await client.get_result(submission.task_id)
        sim.config.poll_hang_rate = 0.0
        assert (await client.get_result(submission.task_id)).succeeded, "the client recovers"
    error = caught.value
    assert error.accepted is Accepted.UNKNOWN
    assert error.retryable
    assert error.code == "timeout"
    assert error.route == "POST /draw/result"
    assert sim.stats()["polls_hung"] == 1


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_unreachable_service_is_a_connect_error(refused_port: int) -> None:
    """No server on the port: ConnectError accepted NO (the request never left), retryable."""
    base = f"http://127.0.0.1:{refused_port}/v1"
    async with CobabaClient(auth=BearerAuth("sk-sim"), base_url=base) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate_async(SUBMIT)
        with pytest.raises(ConnectError):
            await client.get_credits()
        with pytest.raises(ConnectError):
            async with client.chat_completions_stream(
                {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            ):
                pass  # pragma: no cover - never connects
    error = caught.value
    assert error.accepted is Accepted.NO
    assert error.retryable
    assert error.code == "connect_error"


# --- 400 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"model": "nano-banana", "prompt": "p", "aspectRatio": "7:5"},
        {"model": "nano-banana", "prompt": "p", "aspectRatio": "1:8"},  # nano-banana-2 only
        {"model": "nano-banana", "prompt": "p", "imageSize": "8K"},
        {"model": "nano-banana", "prompt": "  "},
        {"model": "nano-banana", "prompt": "p", "images": ["ftp://x/y.png"]},
    ],
    ids=["ratio", "family-ratio", "size", "blank-prompt", "reference-scheme"],
)
async def test_invalid_request_is_a_bad_request(sim: SimServer, body: dict[str, object]) -> None:
    """A body the service refuses (bad aspect ratio, size, prompt, reference) is BadRequestError."""
    async with client_for(sim) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.generate_async(body)
    assert_refusal(caught.value, status=400, code="invalid_request", retryable=False)
    assert sim.stats()["submissions_charged"] == 0


async def test_bad_draw_completions_variants_is_a_bad_request(sim: SimServer) -> None:
    """draw/completions refuses more than 10 variants with BadRequestError."""
    async with client_for(sim) as client:
        with pytest.raises(BadRequestError):
            await client.submit_draw_completions(
                {"model": "gpt-image-2", "prompt": "p", "variants": 11}
            )


# --- stream routes ------------------------------------------------------------------------------


async def stream_to_end(client: CobabaClient, body: Mapping[str, object]) -> None:
    """Open generate_stream for ``body`` and read every frame."""
    async with client.generate_stream(body) as frames:
        async for _ in frames:
            pass


async def test_stream_route_refusals(sim: SimServer) -> None:
    """Refusals on generate_stream are the same typed errors as on the other routes."""
    async with client_for(sim) as client:
        sim.config.down = ["nano-banana"]
        with pytest.raises(ModelUnavailableError):
            await stream_to_end(client, SUBMIT)
        sim.config.down = []
        sim.config.rpm, sim.config.burst = 6, 1
        await client.generate_async(SUBMIT)
        with pytest.raises(RateLimitError) as caught:
            await stream_to_end(client, SUBMIT)
    assert caught.value.retry_after == 10.0
    assert sim.stats()["submissions_charged"] == 1


async def test_stream_dropped_after_charging(sim: SimServer) -> None:
    """A stream submission dropped after charging is ConnectionLostError accepted UNKNOWN."""
    sim.config.drop_rate = 1.0
    async with client_for(sim) as client:
        with pytest.raises(ConnectionLostError) as caught:
            await stream_to_end(client, SUBMIT)
        sim.config.drop_rate = 0.0
        after = await client.generate_async(SUBMIT)
    assert caught.value.accepted is Accepted.UNKNOWN
    assert after.task_id, "the same client works once the fault is gone"
    assert sim.stats()["submissions_charged"] == 2


async def test_stream_cut_mid_task_is_connection_lost(sim: SimServer) -> None:
    """A progress stream cut before the terminal frame is ConnectionLostError accepted UNKNOWN."""
    seen: list[TaskStatus] = []

    async def read_then_stop() -> None:
        async with client_for(sim) as client:
            body = {"model": "nano-banana", "prompt": "p [sim:latency=30]"}
            async with client.generate_stream(body) as frames:
                async for frame in frames:
                    seen.append(frame.status)
                    sim.stop()

    with pytest.raises(ConnectionLostError) as caught:
        await read_then_stop()
    assert seen == [TaskStatus.RUNNING]
    assert caught.value.accepted is Accepted.UNKNOWN
    assert caught.value.route == "POST /api/generate"


async def test_stream_business_error_is_a_business_error(sim_factory: SimFactory) -> None:
    """Insufficient credits on generate_stream is BusinessError (accepted NO), as on json/async."""
    async with (
        sim_factory(SimConfig(latency=0.05, seed=0, credits=0)) as sim,
        client_for(sim) as client,
    ):
        with pytest.raises(BatchgenError) as caught:
            await stream_to_end(client, SUBMIT)
    assert isinstance(caught.value, BusinessError), repr(caught.value)
    assert caught.value.accepted is Accepted.NO
    assert caught.value.code == "code_-1"


async def test_chat_stream_error_keeps_the_request_id(sim: SimServer) -> None:
    """An error frame mid-stream reports the X-Oneapi-Request-Id of the stream's response."""
    body = {
        "model": "gemini-3.1-pro-preview",
        "messages": [{"role": "user", "content": "[sim:error]"}],
    }

    async def drain() -> None:
        async with client_for(sim) as client, client.chat_completions_stream(body) as chunks:
            async for _ in chunks:
                pass

    with pytest.raises(UpstreamError) as caught:
        await drain()
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("sim")


# --- images/generations failures -----------------------------------------------------------------


async def test_images_generations_failures_are_refunded_errors(sim: SimServer) -> None:
    """images/generations: moderation is BadRequestError, failure UpstreamError; both refunded."""
    async with client_for(sim) as client:
        with pytest.raises(BadRequestError) as moderated:
            await client.images_generations(
                {"model": "gpt-image-2", "prompt": f"p {NOW} [sim:fail=output_moderation]"}
            )
        with pytest.raises(UpstreamError) as failed:
            await client.images_generations(
                {"model": "gpt-image-2", "prompt": f"p {NOW} [sim:fail=error]"}
            )
        credits = await client.get_credits()
    assert_refusal(moderated.value, status=400, code="content_policy_violation", retryable=False)
    assert_refusal(failed.value, status=500, code="upstream_error", retryable=True)
    assert credits.credits == pytest.approx(5000.0)
    assert sim.stats()["refunded_total"] == pytest.approx(2 * DEFAULT_PRICES["gpt-image-2"])
