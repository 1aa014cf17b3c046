"""The simulator's faults over real HTTP: limits, injected errors, drops, bad downloads."""

from __future__ import annotations

import logging
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx2 as httpx
import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim import SimConfig, SimServer, running_simulator
from tests.conftest import SimFactory

pytestmark = pytest.mark.anyio

NOW = "[sim:latency=0]"
SUBMIT = {"model": "nano-banana", "prompt": f"p {NOW}", "replyType": "async"}


def api(sim: SimServer, **kw: Any) -> httpx.AsyncClient:
    """A plain httpx client on the simulator's base URL with the default key."""
    return httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": "Bearer sk-sim"}, timeout=10, **kw
    )


async def finished_url(client: httpx.AsyncClient) -> str:
    """Submit an instant task and return its first result URL."""
    data = (await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})).json()
    url: str = data["results"][0]["url"]
    return url


async def test_rate_limit_with_retry_after_seconds(sim_factory: SimFactory) -> None:
    """Past the bucket a submission gets 429 rate_limit_exceeded with integer Retry-After."""
    async with sim_factory(SimConfig(latency=0.05, rpm=60)) as sim, api(sim) as client:
        assert (await client.post("/api/generate", json=SUBMIT)).status_code == 200
        limited = await client.post("/api/generate", json=SUBMIT)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.headers["retry-after"] == "1"
        assert limited.headers["x-oneapi-request-id"]
        stats = sim.stats()
    assert stats["rate_limited"] == 1
    assert stats["submissions_charged"] == 1


async def test_retry_after_variants(sim_factory: SimFactory) -> None:
    """Retry-After can be an HTTP date, a forced value, or absent; the body can be empty."""
    config = SimConfig(latency=0.05, rpm=1, retry_after_format="date")
    async with sim_factory(config) as sim, api(sim) as client:
        await client.post("/api/generate", json=SUBMIT)
        dated = await client.post("/api/generate", json=SUBMIT)
        when = parsedate_to_datetime(dated.headers["retry-after"])
        assert 50 <= when.timestamp() - sim.state.wall() <= 62
        sim.config.update({"retry_after_format": "seconds", "retry_after_value": 86400})
        forced = await client.post("/api/generate", json=SUBMIT)
        assert forced.headers["retry-after"] == "86400"
        sim.config.update({"retry_after": False, "empty_429": True})
        bare = await client.post("/api/generate", json=SUBMIT)
    assert bare.status_code == 429
    assert "retry-after" not in bare.headers
    assert bare.content == b""


async def test_poll_rate_limit(sim_factory: SimFactory) -> None:
    """poll_rpm limits /draw/result separately from submissions."""
    async with sim_factory(SimConfig(latency=0.05, poll_rpm=60)) as sim, api(sim) as client:
        task_id = (await client.post("/api/generate", json=SUBMIT)).json()["id"]
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 429
        assert (await client.post("/api/generate", json=SUBMIT)).status_code == 200


async def test_busy_rate_gives_429_without_a_bucket(sim: SimServer) -> None:
    """busy_rate 1 answers every submission 429 even with no rate limit, uncharged."""
    sim.config.busy_rate = 1.0
    async with api(sim) as client:
        answer = await client.post("/api/generate", json=SUBMIT)
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    stats = sim.stats()
    assert stats["busy_injected"] == 1
    assert stats["rate_limited"] == 1
    assert stats["submissions_charged"] == 0


async def test_error_rate_gives_5xx_uncharged(sim: SimServer) -> None:
    """error_rate 1 answers 500 or 502 upstream_error and charges nothing."""
    async with httpx.AsyncClient(base_url=sim.origin) as control:
        await control.post("/_sim/config", json={"error_rate": 1})
    async with api(sim) as client:
        answers = [await client.post("/api/generate", json=SUBMIT) for _ in range(6)]
    assert {a.status_code for a in answers} <= {500, 502}
    assert all(a.json()["error"]["code"] == "upstream_error" for a in answers)
    stats = sim.stats()
    assert stats["errors_injected"] == 6
    assert stats["submissions_charged"] == 0


async def test_drop_is_a_lost_connection_after_charging(
    sim: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_rate 1 charges and creates the task, then the client sees a transport error."""
    sim.config.drop_rate = 1.0
    caplog.set_level(logging.DEBUG)
    async with api(sim) as client:
        with pytest.raises(httpx.TransportError):
            await client.post("/api/generate", json=SUBMIT)
        with pytest.raises(httpx.TransportError):
            await client.post(
                "/draw/nano-banana",
                json={"model": "nano-banana", "prompt": "p", "webHook": "-1"},
            )
    stats = sim.stats()
    assert stats["submissions_dropped"] == 2
    assert stats["submissions_charged"] == 2
    assert len(sim.state.tasks) == 2
    assert not [r for r in caplog.records if r.exc_info], "no traceback for deliberate drops"


async def test_poll_hang_until_client_gives_up(sim: SimServer) -> None:
    """poll_hang_rate 1 never answers a poll; the client's timeout fires."""
    async with api(sim) as client:
        task_id = (await client.post("/api/generate", json=SUBMIT)).json()["id"]
        sim.config.poll_hang_rate = 1.0
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/draw/result", json={"id": task_id}, timeout=0.2)
        sim.config.poll_hang_rate = 0.0
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200
    assert sim.stats()["polls_hung"] == 1


async def test_truncated_download(sim: SimServer) -> None:
    """truncate_rate 1 declares the full length, sends about half, then drops."""
    async with api(sim) as client:
        url = await finished_url(client)
    sim.config.truncate_rate = 1.0
    sizes = {"declared": 0, "received": 0}

    async def read_all() -> None:
        async with httpx.AsyncClient() as plain, plain.stream("GET", url) as response:
            sizes["declared"] = int(response.headers["content-length"])
            async for chunk in response.aiter_raw():
                sizes["received"] += len(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_all()
    assert 0 < sizes["received"] < sizes["declared"]
    stats = sim.stats()
    assert stats["downloads_truncated"] == 1
    assert stats["downloads"] == 0
    assert (await plain_rows(sim))[0]["served_sha256"] == []


async def plain_rows(sim: SimServer) -> list[dict[str, Any]]:
    """The /_sim/tasks listing."""
    async with httpx.AsyncClient() as plain:
        rows: list[dict[str, Any]] = (await plain.get(sim.origin + "/_sim/tasks")).json()
    return rows


async def test_oversize_download(sim: SimServer) -> None:
    """oversize_rate 1 streams more than 64 MiB with no Content-Length."""
    async with api(sim) as client:
        url = await finished_url(client)
    sim.config.oversize_rate = 1.0
    total = 0
    async with httpx.AsyncClient() as plain, plain.stream("GET", url) as response:
        assert "content-length" not in response.headers
        async for chunk in response.aiter_raw(1024 * 1024):
            total += len(chunk)
    assert total > 64 * 1024 * 1024
    assert sim.stats()["downloads_oversize"] == 1


async def test_oversize_client_can_abort(sim: SimServer) -> None:
    """A client that stops reading an oversize body early leaves the simulator healthy."""
    async with api(sim) as client:
        url = await finished_url(client)
        sim.config.oversize_rate = 1.0
        async with httpx.AsyncClient() as plain, plain.stream("GET", url) as response:
            async for _ in response.aiter_raw(65536):
                break
        sim.config.oversize_rate = 0.0
        assert (await client.get(url)).status_code == 200


async def test_url_expiry_with_a_fake_clock() -> None:
    """Result URLs answer 404 url_expired once url_ttl has passed since the task ended."""
    now = [100.0]
    config = SimConfig(latency=0.05, url_ttl=60)
    async with running_simulator(config, clock=lambda: now[0]) as sim, api(sim) as client:
        url = await finished_url(client)
        assert (await client.get(url)).status_code == 200
        now[0] += 61
        expired = await client.get(url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "url_expired"
    assert sim.stats()["downloads_expired"] == 1


async def test_url_expiry_with_a_tiny_ttl(sim: SimServer) -> None:
    """With a tiny url_ttl the URL is gone after that much real time."""
    sim.config.url_ttl = 0.05
    async with api(sim) as client:
        url = await finished_url(client)
        await anyio.sleep(0.1)  # the simulated TTL itself
        assert (await client.get(url)).status_code == 404


async def test_downloads_with_credentials_are_counted(sim: SimServer) -> None:
    """A download carrying Authorization or a cookie is counted (clients must never)."""
    async with api(sim) as client:
        url = await finished_url(client)
        await client.get(url)
        async with httpx.AsyncClient() as plain:
            await plain.get(url)
            await plain.get(url, headers={"Cookie": "session=x"})
    stats = sim.stats()
    assert stats["downloads_with_credentials"] == 2
    assert stats["downloads"] == 3


async def test_forbidden_down_and_unknown_models(sim: SimServer) -> None:
    """forbid answers 403 token_model_forbidden; down and unpriced models 503 model_not_found."""
    sim.config.update({"forbid": ["gpt-image-2"], "down": ["nano-banana-pro"]})
    async with api(sim) as client:
        forbidden = await client.post("/api/generate", json={**SUBMIT, "model": "gpt-image-2"})
        down = await client.post("/api/generate", json={**SUBMIT, "model": "nano-banana-pro"})
        unknown = await client.post("/api/generate", json={**SUBMIT, "model": "dall-e-9"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "token_model_forbidden"
    assert down.status_code == unknown.status_code == 503
    assert down.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"
    assert sim.stats()["submissions_charged"] == 0


async def test_price_override_adds_a_model(sim_factory: SimFactory) -> None:
    """A price for a new model makes it servable and billed at that price."""
    config = SimConfig(latency=0.05, prices={**DEFAULT_PRICES, "my-model": 1.25})
    async with sim_factory(config) as sim, api(sim) as client:
        answer = await client.post("/api/generate", json={**SUBMIT, "model": "my-model"})
        assert answer.status_code == 200
        assert sim.stats()["charged_total"] == 1.25


async def test_credits_exhausted_is_a_business_error(sim_factory: SimFactory) -> None:
    """A submission the balance cannot pay gets HTTP 200 code -1, uncharged."""
    credits = 1.5 * DEFAULT_PRICES["nano-banana-fast"]  # one image, not two
    async with sim_factory(SimConfig(latency=0.05, credits=credits)) as sim, api(sim) as client:
        first = await client.post("/api/generate", json={**SUBMIT, "model": "nano-banana-fast"})
        second = await client.post("/api/generate", json={**SUBMIT, "model": "nano-banana-fast"})
        assert first.status_code == 200
        assert "id" in first.json()
        assert second.status_code == 200
        assert second.json() == {"code": -1, "msg": "积分不足 (insufficient credits)", "data": None}
        assert sim.stats()["submissions_charged"] == 1


async def test_refund_restores_credits(sim_factory: SimFactory) -> None:
    """A failed task's refund makes its price spendable again."""
    credits = 1.5 * DEFAULT_PRICES["nano-banana-fast"]  # one image, not two
    async with sim_factory(SimConfig(latency=0.05, credits=credits)) as sim, api(sim) as client:
        failing = {**SUBMIT, "model": "nano-banana-fast", "prompt": f"[sim:fail=error] {NOW}"}
        assert "id" in (await client.post("/api/generate", json=failing)).json()
        again = await client.post("/api/generate", json={**SUBMIT, "model": "nano-banana-fast"})
        assert "id" in again.json()
        stats = sim.stats()
    assert stats["refunded_total"] == DEFAULT_PRICES["nano-banana-fast"]


async def test_fail_rate_over_http(sim: SimServer) -> None:
    """fail_rate 1 with moderation_share 0 makes every task fail with ``error``."""
    sim.config.update({"fail_rate": 1, "moderation_share": 0})
    async with api(sim) as client:
        data = (
            await client.post("/api/generate", json={"model": "nano-banana", "prompt": NOW})
        ).json()
    assert data["status"] == "failed"
    assert data["failure_reason"] == "error"


async def test_images_generations_failure_is_refunded(sim: SimServer) -> None:
    """A failed sync generation answers an error and is refunded."""
    async with api(sim) as client:
        answer = await client.post(
            "/images/generations",
            json={"model": "gpt-image-2", "prompt": "[sim:fail=error] [sim:latency=0]"},
        )
        moderated = await client.post(
            "/images/generations",
            json={"model": "gpt-image-2", "prompt": "[sim:fail=input_moderation] [sim:latency=0]"},
        )
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "upstream_error"
    assert moderated.status_code == 400
    stats = sim.stats()
    assert stats["refunded_total"] == stats["charged_total"] == 2 * DEFAULT_PRICES["gpt-image-2"]
