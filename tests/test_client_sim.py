"""CobabaClient against the simulator over real loopback HTTP: every route, shape and curl.

Errors live in ``test_client_sim_errors.py``, the canary-key checks in
``test_client_sim_canary.py`` and downloads in ``test_download_sim.py``. Tasks carry the
``[sim:latency=0]`` marker wherever a finished task is wanted, so one poll suffices and
no test waits on the clock.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import pytest
from PIL import Image

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts
from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.api.client import CobabaClient
from batchgen.api.responses import (
    ChatChunk,
    ChatCompletion,
    FailureReason,
    ImagesResult,
    Submission,
    TaskInfo,
    TaskStatus,
)
from batchgen.errors import AuthenticationError, ConfigError, TaskNotFoundError, UpstreamError
from batchgen.sim import SimConfig, SimServer
from tests.conftest import SimFactory

pytestmark = pytest.mark.anyio

#: A task that has ended by the time anyone polls it.
NOW = "[sim:latency=0]"
#: A task that is still running for the whole test.
LATER = "[sim:latency=30]"
#: Small images keep rendering (b64_json, downloads) to a few milliseconds.
SCALE = 0.05


def client_for(
    sim: SimServer,
    key: str = "sk-sim",
    *,
    timeouts: Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CobabaClient:
    """A CobabaClient on the simulator's base URL with a Bearer key."""
    return CobabaClient(
        auth=BearerAuth(key), base_url=sim.base_url, timeouts=timeouts, transport=transport
    )


def playground_for(
    sim: SimServer, session: str = "sim-session", user_id: str = "1"
) -> CobabaClient:
    """A CobabaClient speaking the playground routes with a session cookie."""
    return CobabaClient(
        auth=PlaygroundAuth(session=session, user_id=user_id), base_url=sim.base_url
    )


async def finished(client: CobabaClient, task_id: str) -> TaskInfo:
    """Poll ``task_id`` once; it must have ended (the task was submitted with ``NOW``)."""
    info = await client.get_result(task_id)
    assert info.status.terminal, info
    return info


async def sim_json(sim: SimServer, path: str) -> Any:
    """GET one of the simulator's ``/_sim/...`` routes and decode its JSON."""
    async with httpx.AsyncClient(trust_env=False) as plain:
        answer = await plain.get(sim.origin + path)
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture
async def small_sim(sim_factory: SimFactory) -> AsyncIterator[SimServer]:
    """A simulator like ``sim`` whose images are rendered at 5 % of their size."""
    async with sim_factory(SimConfig(latency=0.05, seed=0, image_scale=SCALE)) as server:
        yield server


# --- task routes ----------------------------------------------------------------------


async def test_generate_async_then_get_result(sim: SimServer) -> None:
    """generate_async returns a running Submission whose id polls to a succeeded TaskInfo."""
    async with client_for(sim) as client:
        submission = await client.generate_async(
            {"model": "nano-banana-fast", "prompt": f"A cat {NOW}", "aspectRatio": "1:1"}
        )
        info = await finished(client, submission.task_id)
    assert isinstance(submission, Submission)
    assert submission.task_id.startswith("task_")
    assert submission.status is TaskStatus.RUNNING
    assert submission.progress == 0
    assert submission.request_id
    assert info.id == submission.task_id
    assert info.succeeded
    assert info.progress == 100
    assert info.failure_reason == ""
    assert info.reason is None
    (url,) = info.urls
    assert url == f"{sim.origin}/files/{info.id}-0.png"
    assert info.results[0].content.startswith("Simulated image for: A cat")
    assert info.request_id
    assert info.request_id != submission.request_id


async def test_running_task_polls_as_running(sim: SimServer) -> None:
    """A task still in progress polls as RUNNING with progress below 100 and no results."""
    async with client_for(sim) as client:
        submission = await client.generate_async({"model": "nano-banana", "prompt": f"p {LATER}"})
        info = await client.get_result(submission.task_id)
    assert info.status is TaskStatus.RUNNING
    assert not info.status.terminal
    assert 0 <= info.progress < 100
    assert info.results == ()


async def test_generate_json_waits_for_the_result(sim: SimServer) -> None:
    """generate_json blocks until the task ends and returns the final TaskInfo."""
    async with client_for(sim) as client:
        info = await client.generate_json({"model": "nano-banana-pro", "prompt": "a fox"})
    assert info.succeeded
    assert info.progress == 100
    assert len(info.urls) == 1
    rows = await sim_json(sim, "/_sim/tasks")
    assert [(r["id"], r["pollable"]) for r in rows] == [(info.id, False)]


async def test_generate_json_id_is_not_pollable(sim: SimServer) -> None:
    """Polling the id of a replyType json task answers task-not-found, as upstream does."""
    async with client_for(sim) as client:
        info = await client.generate_json({"model": "nano-banana", "prompt": f"p {NOW}"})
        with pytest.raises(TaskNotFoundError):
            await client.get_result(info.id)


async def test_generate_json_moderation_is_a_violation(sim: SimServer) -> None:
    """A moderated task on the unified route ends VIOLATION with a final failure reason."""
    prompt = f"p {NOW} [sim:fail=input_moderation]"
    async with client_for(sim) as client:
        info = await client.generate_json({"model": "nano-banana", "prompt": prompt})
    assert info.status is TaskStatus.VIOLATION
    assert info.reason is FailureReason.INPUT_MODERATION
    assert info.reason.final
    assert info.urls == ()
    assert info.error


async def test_failed_draw_task_is_failed_and_refunded(sim: SimServer) -> None:
    """A draw task that fails with ``error`` polls FAILED (retryable reason) and is refunded."""
    async with client_for(sim) as client:
        submission = await client.submit_nano_banana(
            {"model": "nano-banana", "prompt": f"p {NOW} [sim:fail=error]"}
        )
        info = await finished(client, submission.task_id)
        credits = await client.get_credits()
    assert info.status is TaskStatus.FAILED
    assert info.reason is FailureReason.ERROR
    assert not info.reason.final
    assert credits.credits == pytest.approx(5000.0)
    assert sim.stats()["refunded_total"] == pytest.approx(DEFAULT_PRICES["nano-banana"])


@pytest.mark.parametrize("sse_done", [True, False], ids=["done", "no-done"])
async def test_generate_stream_rises_to_a_terminal_frame(sim: SimServer, sse_done: bool) -> None:
    """generate_stream yields rising progress frames and ends after the terminal one."""
    sim.config.sse_done = sse_done
    frames: list[TaskInfo] = []
    async with (
        client_for(sim) as client,
        client.generate_stream({"model": "nano-banana", "prompt": "p"}) as stream,
    ):
        async for frame in stream:
            frames.append(frame)
    assert len(frames) >= 2
    assert frames[0].status is TaskStatus.RUNNING
    assert all(f.status is TaskStatus.RUNNING for f in frames[:-1])
    progress = [f.progress for f in frames]
    assert progress == sorted(progress)
    assert len(set(progress[:-1])) == len(progress) - 1, "each running frame moves forward"
    last = frames[-1]
    assert last.succeeded
    assert last.progress == 100
    assert len(last.urls) == 1
    assert {f.id for f in frames} == {last.id}


async def test_generate_stream_of_an_instant_task(sim: SimServer) -> None:
    """A stream whose task has already ended yields exactly the terminal frame."""
    async with (
        client_for(sim) as client,
        client.generate_stream({"model": "nano-banana", "prompt": f"p {NOW}"}) as stream,
    ):
        frames = [frame async for frame in stream]
    assert [f.status for f in frames] == [TaskStatus.SUCCEEDED]


async def test_submit_nano_banana(sim: SimServer) -> None:
    """submit_nano_banana returns the task id at once; the task polls to succeeded."""
    async with client_for(sim) as client:
        submission = await client.submit_nano_banana(
            {"model": "nano-banana-fast", "prompt": f"p {NOW}", "aspectRatio": "16:9"}
        )
        info = await finished(client, submission.task_id)
    assert submission.status is TaskStatus.RUNNING
    assert info.succeeded
    assert len(info.urls) == 1


async def test_submit_draw_completions_variants(sim: SimServer) -> None:
    """draw/completions with gpt-image-2, a pixel size and ``variants: 2`` gives two results."""
    async with client_for(sim) as client:
        submission = await client.submit_draw_completions(
            {
                "model": "gpt-image-2",
                "prompt": f"p {NOW}",
                "aspectRatio": "1536x1024",
                "quality": "high",
                "variants": 2,
            }
        )
        info = await finished(client, submission.task_id)
    assert info.succeeded
    assert info.urls == (
        f"{sim.origin}/files/{info.id}-0.png",
        f"{sim.origin}/files/{info.id}-1.png",
    )
    assert sim.stats()["charged_total"] == pytest.approx(2 * DEFAULT_PRICES["gpt-image-2"])


async def test_submit_by_endpoint_name(sim: SimServer) -> None:
    """submit() routes each spec endpoint name to its route and parses the answer."""
    async with client_for(sim) as client:
        generate = await client.submit(
            "generate", {"model": "nano-banana", "prompt": f"p {NOW}", "replyType": "async"}
        )
        banana = await client.submit(
            "nano-banana", {"model": "nano-banana", "prompt": f"p {NOW}", "webHook": "-1"}
        )
        completions = await client.submit(
            "draw-completions", {"model": "gpt-image-2", "prompt": f"p {NOW}", "webHook": "-1"}
        )
        images = await client.submit("images", {"model": "gpt-image-2", "prompt": f"p {NOW}"})
        with pytest.raises(ConfigError):
            await client.submit("video", {"model": "x", "prompt": "p"})
    assert isinstance(generate, Submission)
    assert isinstance(banana, Submission)
    assert isinstance(completions, Submission)
    assert isinstance(images, ImagesResult)
    routes = sim.stats()["requests_by_route"]
    assert isinstance(routes, dict)
    for route in ("/v1/api/generate", "/v1/draw/nano-banana", "/v1/draw/completions"):
        assert routes[f"POST {route}"] == 1
    assert routes["POST /v1/images/generations"] == 1


# --- OpenAI-compatible routes ---------------------------------------------------------


async def test_images_generations_url(sim: SimServer) -> None:
    """images/generations answers synchronously with one URL per image and the prompt."""
    async with client_for(sim) as client:
        result = await client.images_generations(
            {"model": "gpt-image-2", "prompt": f"a cat {NOW}", "size": "1024x1024", "n": 2}
        )
    assert isinstance(result, ImagesResult)
    assert result.created > 0
    assert result.request_id
    assert len(result.images) == 2
    for image in result.images:
        assert image.url
        assert image.url.startswith(sim.origin + "/files/")
        assert image.data is None
        assert image.revised_prompt == f"a cat {NOW}"


async def test_images_generations_b64_json_is_a_png(small_sim: SimServer) -> None:
    """response_format b64_json gives inline bytes that decode as a PNG of the asked size."""
    async with client_for(small_sim) as client:
        result = await client.images_generations(
            {
                "model": "gpt-image-2",
                "prompt": f"a cat {NOW}",
                "size": "1536x1024",
                "response_format": "b64_json",
            }
        )
    (image,) = result.images
    assert image.url is None
    assert image.data is not None
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(image.data)) as png:
        assert png.format == "PNG"
        assert png.size == (round(1536 * SCALE), round(1024 * SCALE))


CHAT = {
    "model": "gemini-3.1-pro-preview",
    "messages": [{"role": "user", "content": "你好,用一句话介绍 CobabaAi"}],
}


async def test_chat_completions(sim: SimServer) -> None:
    """chat_completions returns the assistant text, model and finish reason."""
    async with client_for(sim) as client:
        chat = await client.chat_completions(CHAT)
    assert isinstance(chat, ChatCompletion)
    assert chat.id.startswith("chatcmpl-")
    assert chat.model == "gemini-3.1-pro-preview"
    assert chat.finish_reason == "stop"
    assert chat.content.endswith("You said: 你好,用一句话介绍 CobabaAi")
    assert chat.raw["object"] == "chat.completion"


async def test_chat_completions_stream_joins_to_the_reply(sim: SimServer) -> None:
    """chat_completions_stream yields deltas (PING skipped) that join to the full reply."""
    async with client_for(sim) as client:
        whole = await client.chat_completions(CHAT)
        chunks: list[ChatChunk] = []
        async with client.chat_completions_stream(CHAT) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    assert "".join(c.delta for c in chunks) == whole.content
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert all(c.raw["object"] == "chat.completion.chunk" for c in chunks)


async def test_chat_completions_stream_error_frame(sim: SimServer) -> None:
    """An ``{"error": ...}`` frame mid-stream raises UpstreamError after the earlier deltas."""
    body = {
        "model": "gemini-3.1-pro-preview",
        "messages": [{"role": "user", "content": "[sim:error]"}],
    }
    deltas: list[str] = []

    async def drain() -> None:
        async with client_for(sim) as client, client.chat_completions_stream(body) as stream:
            async for chunk in stream:
                deltas.append(chunk.delta)

    with pytest.raises(UpstreamError) as caught:
        await drain()
    error = caught.value
    assert error.code == "upstream_error"
    assert error.retryable
    assert error.status is None
    assert error.route == "POST /chat/completions"
    assert "upstream error" in str(error)
    assert "".join(deltas) == "这是", "the first word arrived before the error"
    assert sim.stats()["errors_injected"] == 1


async def test_chat_completions_error_marker_without_stream(sim: SimServer) -> None:
    """The ``[sim:error]`` marker without streaming is an HTTP 500 UpstreamError."""
    body = {
        "model": "gemini-3.1-pro-preview",
        "messages": [{"role": "user", "content": "[sim:error]"}],
    }
    async with client_for(sim) as client:
        with pytest.raises(UpstreamError) as caught:
            await client.chat_completions(body)
    assert caught.value.status == 500
    assert caught.value.request_id


# --- admin routes ---------------------------------------------------------------------


async def test_get_credits_falls_by_the_price(sim: SimServer) -> None:
    """get_credits reports the starting balance, then less by the price of each charge."""
    async with client_for(sim) as client:
        before = await client.get_credits()
        await client.generate_async({"model": "nano-banana-pro", "prompt": f"p {NOW}"})
        after_one = await client.get_credits()
        await client.submit_draw_completions(
            {"model": "gpt-image-2", "prompt": f"p {NOW}", "variants": 2}
        )
        after_three = await client.get_credits()
    assert before.credits == 5000.0
    assert after_one.credits == pytest.approx(5000.0 - DEFAULT_PRICES["nano-banana-pro"])
    assert after_three.credits == pytest.approx(
        after_one.credits - 2 * DEFAULT_PRICES["gpt-image-2"]
    )


async def test_get_model_status(sim: SimServer) -> None:
    """get_model_status is available for a served model and not for a down or unknown one."""
    sim.config.down = ["nano-banana-pro"]
    async with client_for(sim) as client:
        up = await client.get_model_status("nano-banana")
        down = await client.get_model_status("nano-banana-pro")
        unknown = await client.get_model_status("no-such-model")
    assert (up.model, up.available, up.error) == ("nano-banana", True, "")
    assert (down.model, down.available, down.error) == ("nano-banana-pro", False, "model_not_found")
    assert not unknown.available


# --- playground -------------------------------------------------------------------------


async def test_playground_generate_then_result(sim: SimServer) -> None:
    """A playground session submits and polls on the playground routes, billed to its user."""
    async with playground_for(sim) as client:
        assert client.playground
        submission = await client.generate_async({"model": "nano-banana", "prompt": f"p {NOW}"})
        info = await finished(client, submission.task_id)
        banana = await client.submit_nano_banana({"model": "nano-banana", "prompt": f"q {NOW}"})
        banana_info = await finished(client, banana.task_id)
    assert info.succeeded
    assert banana_info.succeeded
    stats = sim.stats()
    routes = stats["requests_by_route"]
    assert isinstance(routes, dict)
    assert routes["POST /api/user/playground/api/generate"] == 1
    assert routes["POST /api/user/playground/draw/nano-banana"] == 1
    assert routes["POST /api/user/playground/draw/result"] == 2
    assert not any(route.startswith("POST /v1/") for route in routes)
    assert stats["charges_by_key"] == {"user:1": 2}


async def test_playground_task_is_not_visible_to_a_key(sim: SimServer) -> None:
    """A task submitted in the playground is unknown to an API key's result route."""
    async with playground_for(sim) as playground, client_for(sim) as keyed:
        submission = await playground.generate_async({"model": "nano-banana", "prompt": f"p {NOW}"})
        with pytest.raises(TaskNotFoundError):
            await keyed.get_result(submission.task_id)


async def test_playground_wrong_user_id_is_refused(sim: SimServer) -> None:
    """A session cookie presented with another user's id is a 401 AuthenticationError."""
    async with playground_for(sim, user_id="2") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate_async({"model": "nano-banana", "prompt": "p"})
    assert caught.value.status == 401
    assert "not logged in" in str(caught.value)
    assert sim.stats()["submissions_charged"] == 0


async def test_playground_unknown_session_is_refused(sim: SimServer) -> None:
    """An unknown session cookie is refused on the result route too."""
    async with playground_for(sim, session="stale-session") as client:
        with pytest.raises(AuthenticationError):
            await client.get_result("task_0")


async def test_playground_has_no_admin_or_openai_routes(sim: SimServer) -> None:
    """A playground client refuses routes the playground lacks before sending anything."""
    async with playground_for(sim) as client:
        with pytest.raises(ConfigError):
            await client.get_credits()
        with pytest.raises(ConfigError):
            await client.get_model_status("nano-banana")
        with pytest.raises(ConfigError):
            await client.images_generations({"model": "gpt-image-2", "prompt": "p"})
        with pytest.raises(ConfigError):
            await client.submit_draw_completions({"model": "gpt-image-2", "prompt": "p"})
    assert sim.stats()["requests_by_route"] == {}


# --- shape variants -----------------------------------------------------------------------

VARIANTS: list[dict[str, object]] = [
    {},
    {"wrap_async": True},
    {"single_url": True},
    {"status_style": "upper"},
    {"status_style": "success"},
    {"wrap_async": True, "single_url": True, "status_style": "upper"},
]


async def typed_outcomes(sim: SimServer) -> dict[str, object]:
    """Submit one task per outcome and reduce the typed answers to id-free values."""
    async with client_for(sim) as client:
        ok = await client.generate_async({"model": "nano-banana", "prompt": f"ok {NOW}"})
        running = await client.generate_async({"model": "nano-banana", "prompt": f"run {LATER}"})
        failed = await client.submit_nano_banana(
            {"model": "nano-banana", "prompt": f"f {NOW} [sim:fail=error]"}
        )
        violation = await client.generate_async(
            {"model": "nano-banana", "prompt": f"v {NOW} [sim:fail=output_moderation]"}
        )
        streamed = await stream_frames(client, f"s {NOW}")
        infos = {
            "ok": await client.get_result(ok.task_id),
            "running": await client.get_result(running.task_id),
            "failed": await client.get_result(failed.task_id),
            "violation": await client.get_result(violation.task_id),
            "json": await client.generate_json({"model": "nano-banana", "prompt": f"j {NOW}"}),
        }
    submissions = {(s.status, s.progress, s.task_id.startswith("task_")) for s in (ok, running)}
    return {
        "submissions": submissions,
        "stream": [(f.status, f.progress, len(f.urls)) for f in streamed],
        **{
            name: (
                info.status,
                info.progress,
                info.reason,
                [url.rsplit("/", 1)[-1] == f"{info.id}-0.png" for url in info.urls],
            )
            for name, info in infos.items()
        },
    }


async def stream_frames(client: CobabaClient, prompt: str) -> list[TaskInfo]:
    """Every frame of a ``generate_stream`` for ``prompt``."""
    async with client.generate_stream({"model": "nano-banana", "prompt": prompt}) as stream:
        return [frame async for frame in stream]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default"
)
async def test_shape_variants_parse_to_the_same_values(
    sim_factory: SimFactory, variant: dict[str, object]
) -> None:
    """wrap_async, single_url and every status_style give the same typed values as the default."""
    async with sim_factory(SimConfig(latency=0.05, seed=0)) as baseline:
        expected = await typed_outcomes(baseline)
    config = SimConfig(latency=0.05, seed=0)
    config.update(variant)
    async with sim_factory(config) as varied:
        got = await typed_outcomes(varied)
    assert got == expected
    assert expected["ok"] == (TaskStatus.SUCCEEDED, 100, None, [True])
    assert expected["running"][0] is TaskStatus.RUNNING  # type: ignore[index]
    assert expected["failed"] == (TaskStatus.FAILED, 100, FailureReason.ERROR, [])
    assert expected["violation"] == (
        TaskStatus.VIOLATION,
        100,
        FailureReason.OUTPUT_MODERATION,
        [],
    )


async def test_wrap_async_answer_is_enveloped_on_the_wire(sim: SimServer) -> None:
    """With wrap_async the raw answer really is the envelope, and the client still reads it."""
    sim.config.wrap_async = True
    async with httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": "Bearer sk-sim"}, trust_env=False
    ) as raw:
        body = {"model": "nano-banana", "prompt": f"p {NOW}", "replyType": "async"}
        answer = (await raw.post("/api/generate", json=body)).json()
    assert answer["code"] == 0
    assert answer["data"]["status"] == "running"
    async with client_for(sim) as client:
        submission = await client.generate_async({"model": "nano-banana", "prompt": f"p {NOW}"})
    assert submission.status is TaskStatus.RUNNING


@pytest.mark.parametrize("style", ["404", "code-22"])
async def test_not_found_styles_are_one_error(sim: SimServer, style: str) -> None:
    """An unknown task id is TaskNotFoundError whether the service says 404 or code -22."""
    sim.config.not_found_style = style  # type: ignore[assignment]
    async with client_for(sim) as client:
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_result("task_00000000000000000000000000000000")
    error = caught.value
    assert error.code == "task_not_found"
    assert error.status == (404 if style == "404" else 200)
    assert not error.retryable
    assert "任务不存在" in str(error)


# --- the seed page's curl examples, replayed ------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Forwards to a real HTTP transport and records each request's path and JSON body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(trust_env=False)
        self.sent: list[tuple[str, str, object]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Record the request, then send it for real."""
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.inner.aclose()


# The bodies exactly as the service's page (seeds/000_f6e6815c029d9d92.txt) shows them.
PAGE_CHAT = {
    "model": "gemini-3.1-pro-preview",
    "messages": [{"role": "user", "content": "你好,用一句话介绍 CobabaAi"}],
    "stream": False,
}
PAGE_IMAGES = {
    "model": "gpt-image-2",
    "prompt": "A cute cat drinking coffee on the moon",
    "size": "1024x1024",
}
PAGE_GENERATE = {
    "model": "nano-banana-fast",
    "prompt": "A cat on the moon",
    "images": [],
    "aspectRatio": "1:1",
    "imageSize": "1K",
    "replyType": "async",
}
PAGE_NANO_BANANA = {
    "model": "nano-banana-fast",
    "prompt": "A cat wearing an astronaut suit on the moon",
    "aspectRatio": "1:1",
    "images": [],
    "webHook": "-1",
}
PAGE_RESULT = {"id": "task_xxx"}


@pytest.fixture
async def instant_sim(sim_factory: SimFactory) -> AsyncIterator[SimServer]:
    """A simulator whose tasks end at once (latency 0), so the page's prompts need no marker."""
    async with sim_factory(SimConfig(latency=0, seed=0)) as server:
        yield server


async def test_curl_examples_replayed_through_the_client(instant_sim: SimServer) -> None:
    """Each curl body of the service's page goes out unchanged and comes back typed."""
    transport = RecordingTransport()
    async with client_for(instant_sim, transport=transport) as client:
        chat = await client.chat_completions(PAGE_CHAT)
        images = await client.images_generations(PAGE_IMAGES)
        generated = await client.generate_async(PAGE_GENERATE)
        banana = await client.submit_nano_banana(PAGE_NANO_BANANA)
        generated_info = await client.get_result(generated.task_id)
        banana_info = await client.get_result(banana.task_id)
        with pytest.raises(TaskNotFoundError):
            await client.get_result(PAGE_RESULT["id"])  # the page's placeholder id, verbatim
    assert transport.sent == [
        ("POST", "/v1/chat/completions", PAGE_CHAT),
        ("POST", "/v1/images/generations", PAGE_IMAGES),
        ("POST", "/v1/api/generate", PAGE_GENERATE),
        ("POST", "/v1/draw/nano-banana", PAGE_NANO_BANANA),
        ("POST", "/v1/draw/result", {"id": generated.task_id}),
        ("POST", "/v1/draw/result", {"id": banana.task_id}),
        ("POST", "/v1/draw/result", PAGE_RESULT),
    ]
    assert isinstance(chat, ChatCompletion)
    assert chat.content
    assert isinstance(images, ImagesResult)
    assert len(images.images) == 1
    assert images.images[0].url
    assert generated.task_id.startswith("task_")
    assert banana.task_id.startswith("task_")
    assert generated_info.succeeded
    assert banana_info.succeeded
    assert banana_info.results[0].content.endswith("A cat wearing an astronaut suit on the moon")


async def test_curl_stream_variant_of_chat(instant_sim: SimServer) -> None:
    """The page's chat body with ``"stream": true`` streams the same reply as without."""
    async with client_for(instant_sim) as client:
        whole = await client.chat_completions(PAGE_CHAT)
        async with client.chat_completions_stream({**PAGE_CHAT, "stream": True}) as stream:
            text = "".join([chunk.delta async for chunk in stream])
    assert text == whole.content
