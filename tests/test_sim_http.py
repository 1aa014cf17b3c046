"""The simulator over real loopback HTTP: every route and protocol variant of protocol.md."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from PIL import Image

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim import SimConfig, SimServer
from tests.conftest import SimFactory

pytestmark = pytest.mark.anyio

NOW = "[sim:latency=0]"  # a task that has ended by the time anyone polls it


def api(sim: SimServer, key: str = "sk-sim") -> httpx.AsyncClient:
    """A plain httpx client on the simulator's base URL with a Bearer key."""
    return httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


async def poll_until_done(
    client: httpx.AsyncClient, task_id: str, path: str = "/draw/result"
) -> Any:
    """Poll until the task leaves ``running``; its ``data``. Waits only the simulated latency."""
    while True:
        answer = await client.post(path, json={"id": task_id})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        if data["status"].lower() != "running":
            return data
        await anyio.sleep(0.02)


def sse_frames(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


async def test_async_generate_then_poll_then_download(sim: SimServer) -> None:
    """replyType async answers a flat running task; polling ends succeeded with a PNG URL."""
    async with api(sim) as client:
        answer = await client.post(
            "/api/generate",
            json={"model": "nano-banana-fast", "prompt": "A cat", "replyType": "async"},
        )
        assert answer.status_code == 200
        assert answer.headers["x-oneapi-request-id"]
        body = answer.json()
        assert body["status"] == "running"
        assert body["progress"] == 0
        assert body["id"].startswith("task_")
        data = await poll_until_done(client, body["id"])
    assert data["status"] == "succeeded"
    assert data["progress"] == 100
    assert data["failure_reason"] == ""
    assert data["error"] == ""
    (result,) = data["results"]
    assert result["url"].startswith(sim.origin + "/files/")
    assert result["content"]
    async with httpx.AsyncClient() as plain:
        image = await plain.get(result["url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert sim.stats()["downloads"] == 1


async def test_poll_progress_rises_while_running(sim_factory: SimFactory) -> None:
    """Polls of a running task report rising progress below 100."""
    async with sim_factory(SimConfig(latency=0.3)) as sim, api(sim) as client:
        answer = await client.post(
            "/api/generate", json={"model": "nano-banana", "prompt": "p", "replyType": "async"}
        )
        task_id = answer.json()["id"]
        seen = []
        while True:
            data = (await client.post("/draw/result", json={"id": task_id})).json()["data"]
            if data["status"] != "running":
                break
            assert data["results"] == []
            seen.append(data["progress"])
            await anyio.sleep(0.05)
    assert seen == sorted(seen)
    assert max(seen) < 100
    assert len(set(seen)) > 1


async def test_json_reply_waits_and_is_not_pollable(sim: SimServer) -> None:
    """replyType json (the default) answers the flat result; its id cannot be polled."""
    async with api(sim) as client:
        answer = await client.post("/api/generate", json={"model": "nano-banana", "prompt": "p"})
        data = answer.json()
        assert data["status"] == "succeeded"
        assert data["results"][0]["url"]
        again = await client.post("/draw/result", json={"id": data["id"]})
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "task_not_found"


async def test_stream_reply_frames_rise_and_end_with_done(sim: SimServer) -> None:
    """replyType stream sends running frames with rising progress, a terminal frame, [DONE]."""
    async with api(sim) as client:
        answer = await client.post(
            "/api/generate",
            json={"model": "nano-banana", "prompt": "p [sim:latency=0.2]", "replyType": "stream"},
        )
    assert answer.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(answer.text)
    assert frames[-1] == "[DONE]"
    events = [json.loads(f) for f in frames[:-1]]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert progress[0] == 0
    assert len(events) >= 3
    assert all(e["status"] == "running" for e in events[:-1])
    assert events[-1]["status"] == "succeeded"
    assert events[-1]["results"]


async def test_stream_without_done(sim: SimServer) -> None:
    """With sse_done off the stream ends at the terminal frame."""
    sim.config.sse_done = False
    async with api(sim) as client:
        answer = await client.post(
            "/api/generate", json={"model": "nano-banana", "prompt": NOW, "replyType": "stream"}
        )
    frames = sse_frames(answer.text)
    assert "[DONE]" not in frames
    assert json.loads(frames[-1])["status"] == "succeeded"


async def test_moderation_on_unified_route_is_violation(sim: SimServer) -> None:
    """A moderation failure ends as ``violation`` on /api/generate and ``failed`` elsewhere."""
    prompt = f"p [sim:fail=output_moderation] {NOW}"
    async with api(sim) as client:
        unified = (
            await client.post("/api/generate", json={"model": "nano-banana", "prompt": prompt})
        ).json()
        answer = await client.post(
            "/draw/nano-banana", json={"model": "nano-banana", "prompt": prompt, "webHook": "-1"}
        )
        legacy = await poll_until_done(client, answer.json()["data"]["id"])
    assert unified["status"] == "violation"
    assert unified["failure_reason"] == "output_moderation"
    assert unified["results"] == []
    assert legacy["status"] == "failed"
    assert legacy["failure_reason"] == "output_moderation"
    assert legacy["error"]


async def test_error_failure_is_failed_and_refunded(sim: SimServer) -> None:
    """A task failing with ``error`` is failed on every route and refunded in the stats."""
    async with api(sim) as client:
        data = (
            await client.post(
                "/api/generate", json={"model": "nano-banana", "prompt": f"[sim:fail=error] {NOW}"}
            )
        ).json()
    assert data["status"] == "failed"
    assert data["failure_reason"] == "error"
    stats = sim.stats()
    assert stats["charged_total"] == stats["refunded_total"] == DEFAULT_PRICES["nano-banana"]


async def test_draw_routes_with_webhook_and_references(sim: SimServer) -> None:
    """/draw/nano-banana and /draw/completions take images or urls and return {code,msg,data}."""
    async with api(sim) as client:
        legacy = await client.post(
            "/draw/nano-banana",
            json={
                "model": "nano-banana-fast",
                "prompt": "A cat",
                "aspectRatio": "1:1",
                "images": ["https://example.com/a.png"],
                "webHook": "-1",
            },
        )
        gpt = await client.post(
            "/draw/completions",
            json={
                "model": "gpt-image-2",
                "prompt": f"A cat {NOW}",
                "aspectRatio": "1536x1024",
                "quality": "high",
                "variants": 2,
                "urls": ["data:image/png;base64,AAAA"],
                "webHook": "-1",
            },
        )
        assert legacy.json()["code"] == 0
        assert legacy.json()["msg"] == "success"
        assert gpt.json()["data"]["id"].startswith("task_")
        data = await poll_until_done(client, gpt.json()["data"]["id"])
    assert len(data["results"]) == 2
    assert sim.stats()["charged_total"] == pytest.approx(
        DEFAULT_PRICES["nano-banana-fast"] + 2 * DEFAULT_PRICES["gpt-image-2"]
    )
    async with httpx.AsyncClient() as plain:
        image = await plain.get(data["results"][1]["url"])
    with Image.open(io.BytesIO(image.content)) as decoded:
        assert decoded.size == (1536, 1024)


async def test_draw_without_webhook_streams(sim: SimServer) -> None:
    """Without webHook the draw routes stream progress; shutProgress sends only the end."""
    async with api(sim) as client:
        streamed = await client.post(
            "/draw/nano-banana", json={"model": "nano-banana", "prompt": "p [sim:latency=0.1]"}
        )
        quiet = await client.post(
            "/draw/nano-banana",
            json={"model": "nano-banana", "prompt": "p [sim:latency=0.1]", "shutProgress": True},
        )
    assert len(sse_frames(streamed.text)) >= 3
    frames = sse_frames(quiet.text)
    assert len(frames) == 2
    assert json.loads(frames[0])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("model", "aspect", "size", "expected"),
    [
        ("nano-banana-pro", "16:9", "2K", (2048, 1152)),
        ("nano-banana-pro", "1:1", "1K", (1024, 1024)),
        ("nano-banana-2", "1:4", "1K", (256, 1024)),
        ("nano-banana", "16:9", "4K", (1024, 576)),  # the family ignores imageSize
        ("gpt-image-2", "1024x1536", "1K", (1024, 1536)),
    ],
)
async def test_image_dimensions_over_http(
    sim: SimServer, model: str, aspect: str, size: str, expected: tuple[int, int]
) -> None:
    """Downloaded images decode at the catalog's size for the request's ratio and size."""
    async with api(sim) as client:
        data = (
            await client.post(
                "/api/generate",
                json={"model": model, "prompt": NOW, "aspectRatio": aspect, "imageSize": size},
            )
        ).json()
        image = await client.get(data["results"][0]["url"], headers={"Authorization": ""})
    with Image.open(io.BytesIO(image.content)) as decoded:
        assert decoded.size == expected


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "p"},
        {"model": "nano-banana"},
        {"model": "nano-banana", "prompt": "p", "aspectRatio": "7:3"},
        {"model": "nano-banana", "prompt": "p", "aspectRatio": "1:4"},
        {"model": "nano-banana", "prompt": "p", "imageSize": "8K"},
        {"model": "nano-banana", "prompt": "p", "replyType": "xml"},
        {"model": "nano-banana", "prompt": "p", "images": "https://x/a.png"},
        {"model": "nano-banana", "prompt": "p", "images": ["ftp://x/a.png"]},
    ],
)
async def test_invalid_requests_are_400(sim: SimServer, body: dict[str, object]) -> None:
    """Missing model/prompt and values the family does not accept answer 400 invalid_request."""
    async with api(sim) as client:
        answer = await client.post("/api/generate", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": answer.json()["error"]["message"],
        "type": "new_api_error",
        "param": "",
        "code": "invalid_request",
    }
    assert sim.stats()["submissions_charged"] == 0


async def test_auth_errors(sim: SimServer) -> None:
    """No key or a wrong key answer 401 invalid_api_key; a revoked key 401 token_invalid."""
    async with httpx.AsyncClient(base_url=sim.base_url) as anonymous:
        assert (await anonymous.post("/draw/result", json={"id": "x"})).status_code == 401
    async with api(sim, "sk-wrong") as client:
        answer = await client.post("/api/generate", json={"model": "nano-banana", "prompt": "p"})
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
        assert answer.headers["x-oneapi-request-id"]
    async with api(sim) as client:
        assert (await client.post("/draw/result", json={"id": "x"})).status_code == 404
        async with httpx.AsyncClient(base_url=sim.origin) as control:
            await control.post("/_sim/config", json={"keys": ["sk-other"]})
        answer = await client.post("/draw/result", json={"id": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "token_invalid"  # a key that worked: revoked


async def test_tasks_belong_to_their_key(sim_factory: SimFactory) -> None:
    """Another key polling a task gets task_not_found."""
    config = SimConfig(latency=0.05, keys=["sk-a", "sk-b"])
    async with sim_factory(config) as sim, api(sim, "sk-a") as a, api(sim, "sk-b") as b:
        task_id = (
            await a.post(
                "/api/generate",
                json={"model": "nano-banana", "prompt": "p", "replyType": "async"},
            )
        ).json()["id"]
        assert (await b.post("/draw/result", json={"id": task_id})).status_code == 404
        assert (await a.post("/draw/result", json={"id": task_id})).status_code == 200


async def test_not_found_styles(sim: SimServer) -> None:
    """Unknown ids answer HTTP 404 task_not_found, or HTTP 200 code -22 in that style."""
    async with api(sim) as client:
        answer = await client.post("/draw/result", json={"id": "task_unknown"})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "task_not_found"
        sim.config.not_found_style = "code-22"
        answer = await client.post("/draw/result", json={"id": "task_unknown"})
    assert answer.status_code == 200
    assert answer.json() == {"code": -22, "msg": "任务不存在", "data": None}


@pytest.mark.parametrize(
    ("style", "running", "done"),
    [
        ("lower", "running", "succeeded"),
        ("upper", "RUNNING", "SUCCEEDED"),
        ("success", "running", "success"),
    ],
)
async def test_status_styles(sim: SimServer, style: str, running: str, done: str) -> None:
    """status_style spells running and succeeded as configured."""
    sim.config.update({"status_style": style})
    async with api(sim) as client:
        answer = await client.post(
            "/api/generate",
            json={"model": "nano-banana", "prompt": "p [sim:latency=0.2]", "replyType": "async"},
        )
        assert answer.json()["status"] == running
        data = await poll_until_done(client, answer.json()["id"])
    assert data["status"] == done


async def test_wrap_async_and_single_url(sim: SimServer) -> None:
    """wrap_async puts the async answer in {code,msg,data}; single_url gives data.url."""
    sim.config.update({"wrap_async": True, "single_url": True})
    async with api(sim) as client:
        answer = (
            await client.post(
                "/api/generate", json={"model": "nano-banana", "prompt": NOW, "replyType": "async"}
            )
        ).json()
        assert answer["code"] == 0
        assert answer["msg"] == "success"
        assert answer["data"]["status"] == "running"
        data = await poll_until_done(client, answer["data"]["id"])
    assert "results" not in data
    assert data["url"].startswith(sim.origin + "/files/")


async def test_result_url_template_and_redirect(sim: SimServer) -> None:
    """result_url_template shapes result URLs; /_sim/redirect answers 302 to its target."""
    sim.config.result_url_template = "{origin}/_sim/redirect?to=http://10.0.0.1/{file}"
    async with api(sim) as client:
        data = (
            await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})
        ).json()
        url = data["results"][0]["url"]
        assert url.startswith(sim.origin + "/_sim/redirect?to=http://10.0.0.1/task_")
        redirect = await client.get(url)
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith("http://10.0.0.1/task_")
    sim.config.result_url_template = "file:///etc/{file}"
    async with api(sim) as client:
        data = (
            await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})
        ).json()
    assert data["results"][0]["url"].startswith("file:///etc/task_")


async def test_images_generations_url_and_b64(sim: SimServer) -> None:
    """/images/generations is synchronous, charges per image, returns urls or base64 PNGs."""
    async with api(sim) as client:
        urls = await client.post(
            "/images/generations",
            json={"model": "gpt-image-2", "prompt": "A cat", "n": 2, "size": "1024x1536"},
        )
        b64 = await client.post(
            "/images/generations",
            json={"model": "gpt-image-2", "prompt": "A cat", "response_format": "b64_json"},
        )
    body = urls.json()
    assert isinstance(body["created"], int)
    assert len(body["data"]) == 2
    assert body["data"][0]["url"]
    assert body["data"][0]["b64_json"] == ""
    assert body["data"][0]["revised_prompt"] == "A cat"
    png = base64.b64decode(b64.json()["data"][0]["b64_json"])
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.size == (1024, 1024)
    assert sim.stats()["charged_total"] == pytest.approx(3 * DEFAULT_PRICES["gpt-image-2"])
    async with httpx.AsyncClient() as plain:
        rows = (await plain.get(sim.origin + "/_sim/tasks")).json()
    assert rows[1]["served_sha256"] == [hashlib.sha256(png).hexdigest()]


async def test_chat_completion_and_stream(sim: SimServer) -> None:
    """Chat answers the OpenAI shape; streams have chunks, a PING comment and [DONE]."""
    messages = [{"role": "user", "content": "你好,用一句话介绍 CobabaAi"}]
    async with api(sim) as client:
        plain = await client.post(
            "/chat/completions", json={"model": "gemini-3.1-pro-preview", "messages": messages}
        )
        again = await client.post(
            "/chat/completions", json={"model": "gemini-3.1-pro-preview", "messages": messages}
        )
        streamed = await client.post(
            "/chat/completions",
            json={"model": "gemini-3.1-pro-preview", "messages": messages, "stream": True},
        )
    reply = plain.json()
    assert reply["object"] == "chat.completion"
    text = reply["choices"][0]["message"]["content"]
    assert text == again.json()["choices"][0]["message"]["content"]
    assert ": PING" in streamed.text.split("\n")
    frames = sse_frames(streamed.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text


async def test_chat_error_marker(sim: SimServer) -> None:
    """[sim:error] makes a chat answer 500, and a chat stream end with an error frame."""
    messages = [{"role": "user", "content": "boom [sim:error]"}]
    async with api(sim) as client:
        plain = await client.post("/chat/completions", json={"model": "m", "messages": messages})
        streamed = await client.post(
            "/chat/completions", json={"model": "m", "messages": messages, "stream": True}
        )
    assert plain.status_code == 500
    assert plain.json()["error"]["code"] == "upstream_error"
    last = json.loads(sse_frames(streamed.text)[-1])
    assert last["error"]["code"] == "upstream_error"


async def test_credits_and_model_status(sim: SimServer) -> None:
    """getCredits reports the balance after charges; getModelStatus reports channels."""
    sim.config.down = ["nano-banana-pro"]
    async with api(sim) as client:
        await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})
        credits = await client.get(
            sim.origin + "/client/common/getCredits", params={"apikey": "sk-sim"}
        )
        unknown = await client.get(
            sim.origin + "/client/common/getCredits", params={"apikey": "sk-x"}
        )
        up = await client.get(
            sim.origin + "/client/common/getModelStatus", params={"model": "nano-banana"}
        )
        down = await client.get(
            sim.origin + "/client/common/getModelStatus", params={"model": "nano-banana-pro"}
        )
    assert credits.json() == {"code": 0, "data": {"credits": 5000 - DEFAULT_PRICES["nano-banana"]}}
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "invalid_api_key"
    assert up.json() == {"code": 0, "data": {"status": True, "error": ""}}
    assert down.json() == {"code": 0, "data": {"status": False, "error": "model_not_found"}}


async def test_playground_session_auth(sim: SimServer) -> None:
    """Playground routes need the session cookie and its New-Api-User; billing is per user."""
    good = {"Cookie": "session=sim-session", "New-Api-User": "1"}
    async with httpx.AsyncClient(base_url=sim.origin + "/api/user/playground") as client:
        missing = await client.post("/api/generate", json={"model": "nano-banana", "prompt": "p"})
        wrong = await client.post(
            "/api/generate",
            json={"model": "nano-banana", "prompt": "p"},
            headers={"Cookie": "session=sim-session", "New-Api-User": "2"},
        )
        answer = await client.post(
            "/draw/nano-banana",
            json={"model": "nano-banana", "prompt": NOW, "webHook": "-1"},
            headers=good,
        )
        task_id = answer.json()["data"]["id"]
        polled = await client.post("/draw/result", json={"id": task_id}, headers=good)
        unified = await client.post(
            "/api/generate",
            json={"model": "nano-banana", "prompt": NOW, "replyType": "async"},
            headers=good,
        )
    assert missing.status_code == 401
    assert missing.json()["success"] is False
    assert wrong.status_code == 401
    assert wrong.json()["message"]
    assert polled.json()["data"]["status"] == "succeeded"
    assert unified.json()["status"] == "running"
    assert sim.stats()["charges_by_key"] == {"user:1": 2}
    async with api(sim) as keyed:  # the user's task is not the key's
        assert (await keyed.post("/draw/result", json={"id": task_id})).status_code == 404


async def test_sim_config_routes(sim: SimServer) -> None:
    """GET/POST /_sim/config read and change the live config; unknown fields are 400."""
    async with httpx.AsyncClient(base_url=sim.origin) as client:
        config = (await client.get("/_sim/config")).json()
        assert config["latency"] == 0.05
        assert config["keys"] == ["sk-***"]
        changed = await client.post("/_sim/config", json={"error_rate": 1, "latency": 0.01})
        assert changed.status_code == 200
        assert changed.json()["error_rate"] == 1.0
        assert sim.config.error_rate == 1.0
        bad = await client.post("/_sim/config", json={"bogus": 1})
        assert bad.status_code == 400
        assert "bogus" in bad.json()["error"]["message"]
        assert (await client.post("/_sim/config", json={"fail_rate": 3})).status_code == 400


async def test_stats_and_tasks_routes(sim: SimServer) -> None:
    """/_sim/stats counts routes, charges and statuses; /_sim/tasks lists every task."""
    async with api(sim) as client:
        await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})
        await client.post("/draw/result", json={"id": "task_x"})
        stats = (await client.get(sim.origin + "/_sim/stats")).json()
        tasks = (await client.get(sim.origin + "/_sim/tasks")).json()
    assert stats["requests_by_route"]["POST /v1/api/generate"] == 1
    assert stats["requests_by_route"]["POST /v1/draw/result"] == 1
    assert stats["submissions_charged"] == 1
    assert stats["charges_by_key"] == {"key#1": 1}
    assert stats["tasks_by_status"]["succeeded"] == 1
    for name in (
        "charged_total", "refunded_total", "rate_limited", "submissions_dropped",
        "errors_injected", "downloads", "downloads_truncated", "downloads_expired",
        "downloads_with_credentials",
    ):  # fmt: skip
        assert name in stats
    (row,) = tasks
    assert row["model"] == "nano-banana"
    assert row["status"] == "succeeded"
    assert row["charged"] == DEFAULT_PRICES["nano-banana"]
    assert row["refunded"] == 0
    assert isinstance(row["created"], float)
    assert row["served_sha256"] == []


async def test_unknown_route_and_method(sim: SimServer) -> None:
    """Unknown paths answer 404 and wrong methods 405, both in the envelope."""
    async with api(sim) as client:
        assert (await client.post("/nope", json={})).status_code == 404
        assert (await client.get("/draw/result")).status_code == 405
        assert (await client.post("/draw/result", content=b"{not json")).status_code == 400


async def test_same_seed_same_ids_and_bytes(sim_factory: SimFactory) -> None:
    """Two simulators with one seed give the same ids and image bytes for the same requests."""
    runs: list[list[tuple[str, str]]] = []
    for _ in range(2):
        config = SimConfig(latency=0.01, seed=5, image_scale=0.25)
        async with sim_factory(config) as sim, api(sim) as client:
            run = []
            for prompt in ("a cat", "a dog"):
                data = (
                    await client.post(
                        "/api/generate", json={"model": "nano-banana", "prompt": prompt}
                    )
                ).json()
                image = await client.get(data["results"][0]["url"])
                run.append((data["id"], hashlib.sha256(image.content).hexdigest()))
            runs.append(run)
    assert runs[0] == runs[1]


async def test_seed_page_curl_examples(sim: SimServer) -> None:
    """The curl bodies of the service's doc page work against the simulator unchanged."""
    async with api(sim) as client:
        chat = await client.post(
            "/chat/completions",
            json={
                "model": "gemini-3.1-pro-preview",
                "messages": [{"role": "user", "content": "你好,用一句话介绍 CobabaAi"}],
                "stream": False,
            },
        )
        images = await client.post(
            "/images/generations",
            json={
                "model": "gpt-image-2",
                "prompt": "A cute cat drinking coffee on the moon",
                "size": "1024x1024",
            },
        )
        generate = await client.post(
            "/api/generate",
            json={
                "model": "nano-banana-fast",
                "prompt": "A cat on the moon",
                "images": [],
                "aspectRatio": "1:1",
                "imageSize": "1K",
                "replyType": "async",
            },
        )
        draw = await client.post(
            "/draw/nano-banana",
            json={
                "model": "nano-banana-fast",
                "prompt": "A cat wearing an astronaut suit on the moon",
                "aspectRatio": "1:1",
                "images": [],
                "webHook": "-1",
            },
        )
        task_id = draw.json()["data"]["id"]
        result = await client.post("/draw/result", json={"id": task_id})
    assert chat.status_code == images.status_code == generate.status_code == 200
    assert draw.json()["code"] == 0
    assert task_id.startswith("task_")
    assert result.json()["code"] == 0
    assert result.json()["data"]["id"] == task_id


@pytest.fixture
async def slow_sim(sim_factory: SimFactory) -> AsyncIterator[SimServer]:
    """A simulator whose tasks take long enough to still be running at shutdown."""
    async with sim_factory(SimConfig(latency=30)) as server:
        yield server


async def test_shutdown_ends_long_waits(slow_sim: SimServer) -> None:
    """Stopping the simulator cuts a running task stream at once instead of waiting 30 s."""
    body = {"model": "nano-banana", "prompt": "p", "replyType": "stream"}
    async with api(slow_sim) as client, client.stream("POST", "/api/generate", json=body) as answer:
        lines = answer.aiter_lines()
        first = await anext(lines)  # the task is accepted and streaming
        assert json.loads(first.removeprefix("data: "))["status"] == "running"
        slow_sim.stop()
        with anyio.fail_after(3), pytest.raises(httpx.TransportError):
            async for _ in lines:
                pass
