"""The gateway limiter over real loopback HTTP: its 429s, what it records, when, and for whom.

A fake clock drives the limiter (and task timing), so windows pass only when a test says.
"""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import pytest

from batchgen.sim import SimConfig, SimServer, gateway_profile, running_simulator

pytestmark = pytest.mark.anyio

SUBMIT = {"model": "nano-banana", "prompt": "p [sim:latency=0]", "replyType": "async"}
LIMIT_TEXT = "您已达到请求数限制：{m}分钟内最多请求{n}次 (request id: {rid})"
TOTAL_TEXT = (
    "您已达到总请求数限制：{m}分钟内最多请求{n}次，"
    "包括失败次数，请检查您的请求是否正确 (request id: {rid})"
)


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def api(sim: SimServer, key: str = "sk-sim", **headers: str) -> httpx.AsyncClient:
    """A plain httpx client on the simulator's base URL with a Bearer key."""
    return httpx.AsyncClient(
        base_url=sim.base_url,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def submit(client: httpx.AsyncClient, **changes: Any) -> Any:
    """POST an instant async submission (the coroutine of its answer)."""
    return client.post("/api/generate", json={**SUBMIT, **changes})


@pytest.mark.parametrize("wire", ["gateway", "sim"])
async def test_success_limit_answers_the_envelope_without_retry_after(wire: str) -> None:
    """Past N successes the gateway's 429 states the limit, has no param, an empty code,
    the answer's request id, and no Retry-After even with retry_after on; in either wire."""
    clock = FakeClock()
    config = gateway_profile(gateway_limit=2, gateway_window=3.0, retry_after=True, wire=wire)
    async with running_simulator(config, clock=clock) as sim, api(sim) as client:
        assert (await submit(client)).status_code == 200
        assert (await submit(client)).status_code == 200
        limited = await submit(client)
        clock.advance(2.5)
        assert (await submit(client)).status_code == 429
        clock.advance(0.5)
        assert (await submit(client)).status_code == 200
        stats = sim.stats()
    assert limited.status_code == 429
    assert "retry-after" not in limited.headers
    rid = limited.headers["x-oneapi-request-id"]
    message = LIMIT_TEXT.format(m="0.05", n=2, rid=rid)
    assert limited.json() == {"error": {"message": message, "type": "new_api_error", "code": ""}}
    assert stats["rate_limited"] == 2
    assert stats["submissions_charged"] == 3


async def test_limit_message_is_chinese_in_every_language() -> None:
    """The limiter's text is new-api's Chinese one even for an English client; 1 minute is 1."""
    config = gateway_profile(gateway_limit=1)
    async with (
        running_simulator(config, clock=FakeClock()) as sim,
        api(sim, **{"Accept-Language": "en-US"}) as client,
    ):
        await submit(client)
        limited = await submit(client)
    rid = limited.headers["x-oneapi-request-id"]
    assert limited.json()["error"]["message"] == LIMIT_TEXT.format(m="1", n=1, rid=rid)


async def test_empty_body_429_of_a_memory_mode_gateway() -> None:
    """With empty_429 the limiter's 429 has an empty body and no Retry-After."""
    config = gateway_profile(gateway_limit=1, empty_429=True, retry_after=True)
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        await submit(client)
        limited = await submit(client)
    assert limited.status_code == 429
    assert limited.content == b""
    assert "retry-after" not in limited.headers


async def test_total_limit_counts_failures_and_refills() -> None:
    """The total limit takes a token for a failed request too, answers its own 429, and
    gives one back every window/N seconds."""
    clock = FakeClock()
    config = gateway_profile(gateway_limit=0, gateway_total=2)
    async with running_simulator(config, clock=clock) as sim, api(sim) as client:
        bad = await submit(client, prompt="")
        good = await submit(client)
        limited = await submit(client)
        clock.advance(30.0)
        again = await submit(client)
    assert (bad.status_code, good.status_code, again.status_code) == (400, 200, 200)
    assert limited.status_code == 429
    rid = limited.headers["x-oneapi-request-id"]
    message = TOTAL_TEXT.format(m="1", n=2, rid=rid)
    assert limited.json() == {"error": {"message": message, "type": "new_api_error", "code": ""}}


async def test_failed_answers_are_not_recorded() -> None:
    """A 400, a 403 and a 503 leave the success log alone; a 200 fills it."""
    config = gateway_profile(gateway_limit=1, forbid=["gpt-image-2"], down=["nano-banana-pro"])
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        assert (await submit(client, prompt="")).status_code == 400
        assert (await submit(client, model="gpt-image-2")).status_code == 403
        assert (await submit(client, model="nano-banana-pro")).status_code == 503
        assert (await submit(client)).status_code == 200
        assert (await submit(client)).status_code == 429


async def test_polls_are_free_by_default() -> None:
    """Without gateway_polls, polls are neither checked nor recorded; submissions are."""
    config = gateway_profile(gateway_limit=1)
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        task_id = (await submit(client)).json()["id"]
        for _ in range(5):
            assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200
        assert (await submit(client)).status_code == 429
        stats = sim.stats()
    assert stats["rate_limited_by_route"] == {"POST /v1/api/generate": 1}
    assert stats["requests_by_route"] == {"POST /v1/api/generate": 2, "POST /v1/draw/result": 5}


async def test_polls_count_with_gateway_polls() -> None:
    """With gateway_polls, polls share the submissions' window; the stats tell them apart."""
    clock = FakeClock()
    config = gateway_profile(gateway_limit=2, gateway_polls=True)
    async with running_simulator(config, clock=clock) as sim, api(sim) as client:
        task_id = (await submit(client)).json()["id"]
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 429
        assert (await submit(client)).status_code == 429
        clock.advance(60.0)
        assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200
        stats = sim.stats()
    assert stats["rate_limited_by_route"] == {
        "POST /v1/draw/result": 1,
        "POST /v1/api/generate": 1,
    }
    assert stats["rate_limited"] == 2


async def test_limits_are_per_account() -> None:
    """Each key and the playground user have limits of their own."""
    config = gateway_profile(gateway_limit=1, keys=["sk-sim", "sk-second"])
    session = {"Cookie": "session=sim-session", "New-Api-User": "1"}
    async with (
        running_simulator(config, clock=FakeClock()) as sim,
        api(sim) as first,
        api(sim, "sk-second") as second,
        httpx.AsyncClient(base_url=sim.origin, headers=session, timeout=10) as playground,
    ):
        assert (await submit(first)).status_code == 200
        assert (await submit(first)).status_code == 429
        assert (await submit(second)).status_code == 200
        route = "/api/user/playground/api/generate"
        assert (await playground.post(route, json=SUBMIT)).status_code == 200
        assert (await playground.post(route, json=SUBMIT)).status_code == 429
        stats = sim.stats()
    assert stats["rate_limited_by_route"] == {"POST /v1/api/generate": 1, f"POST {route}": 1}


async def test_control_and_admin_routes_never_count() -> None:
    """/_sim/* and getModelStatus are outside the limiter, even at N=1."""
    config = gateway_profile(gateway_limit=1)
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        assert (await submit(client)).status_code == 200
        for _ in range(3):
            assert (await client.get(sim.origin + "/_sim/stats")).status_code == 200
            status = await client.get(
                sim.origin + "/client/common/getModelStatus", params={"model": "nano-banana"}
            )
            assert status.status_code == 200


async def test_stream_is_recorded_when_it_ends() -> None:
    """A stream counts when it ends: at N=1 a request arriving while it is open is allowed,
    and the stream's entry, made at its end, refuses the next one a window later."""
    clock = FakeClock()
    config = gateway_profile(gateway_limit=1)
    stream_body = {"model": "nano-banana", "prompt": "p [sim:latency=0.2]", "replyType": "stream"}
    async with running_simulator(config, clock=clock) as sim, api(sim) as client:
        async with client.stream("POST", "/api/generate", json=stream_body) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the handler is running
            during = await submit(client)  # allowed: the open stream is not recorded yet
            refused = await submit(client)  # refused by the one just recorded
            clock.advance(60.0)  # the stream's task ends; ``during`` is a window old
            rest = [line async for line in lines]
        after = await submit(client)
    assert (during.status_code, refused.status_code) == (200, 429)
    assert "data: [DONE]" in rest
    assert after.status_code == 429  # the stream, recorded at its end (t + 60), refuses it


async def test_dropped_connection_after_a_200_start_counts() -> None:
    """A submission whose connection drops after its 200 start is recorded as a success."""
    config = gateway_profile(gateway_limit=1, drop_rate=1.0)
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        with pytest.raises(httpx.TransportError):
            await submit(client)
        sim.config.drop_rate = 0.0
        assert (await submit(client)).status_code == 429
        assert sim.stats()["submissions_dropped"] == 1


async def test_bucket_settings_do_not_apply_to_the_gateway_limiter() -> None:
    """With limiter=gateway the rpm and poll_rpm buckets are off."""
    config = gateway_profile(gateway_limit=10, rpm=1, poll_rpm=1)
    async with running_simulator(config, clock=FakeClock()) as sim, api(sim) as client:
        task_id = (await submit(client)).json()["id"]
        assert (await submit(client)).status_code == 200
        for _ in range(3):
            assert (await client.post("/draw/result", json={"id": task_id})).status_code == 200


async def test_default_config_keeps_the_bucket_limiter(sim: SimServer) -> None:
    """The default simulator is not limited by the gateway limiter at all."""
    assert sim.config == SimConfig(latency=0.05, seed=0)
    async with api(sim) as client:
        for _ in range(70):
            assert (await submit(client)).status_code == 200
    assert sim.stats()["rate_limited_by_route"] == {}
