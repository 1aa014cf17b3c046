"""The gateway wire over real loopback HTTP: every error row of protocol.md in English and
Chinese, its request id and version headers, and the new rows in the simulator's own wire."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim import SimConfig, SimServer, gateway_profile, running_simulator

pytestmark = pytest.mark.anyio

SUBMIT = {"model": "cheap", "prompt": "p [sim:latency=0]", "replyType": "async"}
PRICES = {**DEFAULT_PRICES, "cheap": 0.02, "dear": 0.05}
GATEWAY_ID = re.compile(r"^\d{14}\d{9}[A-Za-z0-9]{16}$")
ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}

Call = Callable[[SimServer, dict[str, str]], Awaitable[httpx.Response]]


def api(sim: SimServer, key: str = "sk-sim", **headers: str) -> httpx.AsyncClient:
    """A plain httpx client on the simulator's base URL with a Bearer key."""
    return httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": f"Bearer {key}", **headers}, timeout=10
    )


async def post(
    sim: SimServer, headers: dict[str, str], key: str = "sk-sim", **body: Any
) -> httpx.Response:
    """POST a submission (SUBMIT with ``body``'s changes) with ``key`` and ``headers``."""
    async with api(sim, key, **headers) as client:
        return await client.post("/api/generate", json={**SUBMIT, **body})


async def unknown_key(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A key the service never issued."""
    return await post(sim, headers, key="sk-never-issued")


async def no_key(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """No Authorization header at all."""
    async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as client:
        return await client.post("/api/generate", json=SUBMIT)


async def revoked_key(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A key that worked, then was removed."""
    assert (await post(sim, {})).status_code == 200
    sim.config.update({"keys": ["sk-other"]})
    return await post(sim, headers)


async def used_up_key(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A key whose token quota (0.02) one submission spent."""
    sim.config.token_quota = 0.02
    assert (await post(sim, {})).status_code == 200
    return await post(sim, headers)


async def blocked_ip(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A key in ip_blocked."""
    sim.config.update({"keys": ["sk-sim", "sk-elsewhere"], "ip_blocked": ["sk-elsewhere"]})
    return await post(sim, headers, key="sk-elsewhere")


async def forbidden_model(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A model in forbid."""
    sim.config.forbid = ["dear"]
    return await post(sim, headers, model="dear")


async def down_model(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A model in down, for a user of group vip."""
    sim.config.update({"down": ["dear"], "group": "vip"})
    return await post(sim, headers, model="dear")


async def unknown_model(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A model nobody serves."""
    return await post(sim, headers, model="dall-e-9")


async def poor_user(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A balance of 0.01 against a price of 0.02."""
    sim.state.account_for_key("sk-sim").balance = 0.01
    return await post(sim, headers)


async def poor_token(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A token quota of 0.03, 0.02 of it spent, against a price of 0.05."""
    sim.config.token_quota = 0.03
    assert (await post(sim, {})).status_code == 200
    return await post(sim, headers, model="dear")


async def unpriced_model(sim: SimServer, headers: dict[str, str]) -> httpx.Response:
    """A model in unpriced."""
    sim.config.unpriced = ["dear"]
    return await post(sim, headers, model="dear")


@dataclass(frozen=True)
class Row:
    """One error row: how to provoke it and what the gateway answers."""

    call: Call
    status: int
    code: str
    param: bool
    english: str
    chinese: str


ROWS = {
    "unknown key": Row(unknown_key, 401, "", False, "Invalid token", "无效的令牌"),
    "no key": Row(no_key, 401, "", False, "Invalid token", "无效的令牌"),
    "revoked key": Row(revoked_key, 401, "", False, "Invalid token", "无效的令牌"),
    "used-up key": Row(used_up_key, 401, "", False, "Invalid token", "无效的令牌"),
    "ip whitelist": Row(
        blocked_ip,
        403,
        "access_denied",
        False,
        "Your IP is not in the list of IPs allowed for this token",
        "您的 IP 不在令牌允许访问的列表中",
    ),
    "forbidden model": Row(
        forbidden_model,
        403,
        "",
        False,
        "This token has no access to model dear",
        "该令牌无权访问模型 dear",
    ),
    "no channel": Row(
        down_model,
        503,
        "model_not_found",
        False,
        "No available channel for model dear under group vip (distributor)",
        "分组 vip 下模型 dear 无可用渠道（distributor）",
    ),
    "unknown model": Row(
        unknown_model,
        503,
        "model_not_found",
        False,
        "No available channel for model dall-e-9 under group default (distributor)",
        "分组 default 下模型 dall-e-9 无可用渠道（distributor）",
    ),
    "user quota": Row(
        poor_user,
        403,
        "insufficient_user_quota",
        True,
        "user quota is not enough, remaining quota: ¥0.0100",
        "用户额度不足, 剩余额度: ¥0.0100",
    ),
    "token quota": Row(
        poor_token,
        403,
        "pre_consume_token_quota_failed",
        True,
        "token quota is not enough, token remain quota: ¥0.0100, need quota: ¥0.0500",
        "令牌额度不足, 剩余额度: ¥0.0100, 需要额度: ¥0.0500",
    ),
    "no price": Row(
        unpriced_model,
        400,
        "model_price_error",
        True,
        "model dear has no price: ask the administrator to set its ratio or price",
        "模型 dear 倍率或价格未配置，请联系管理员设置",
    ),
}


def request_id_of(answer: httpx.Response) -> str:
    """The answer's X-Oneapi-Request-Id, checked against the gateway's format."""
    rid = answer.headers["x-oneapi-request-id"]
    assert GATEWAY_ID.match(rid), rid
    return rid


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("name", list(ROWS))
async def test_gateway_error_rows(name: str, language: str) -> None:
    """Each row has its status and code, param only on relay errors, and the message in
    the request's language ending in the request id of the header."""
    row = ROWS[name]
    config = gateway_profile(prices=dict(PRICES), latency=0.05)
    async with running_simulator(config) as sim:
        answer = await row.call(sim, ZH if language == "zh" else {})
        charged = sim.stats()["submissions_charged"]
    assert answer.status_code == row.status, answer.text
    envelope = answer.json()["error"]
    text = row.chinese if language == "zh" else row.english
    assert envelope["message"] == f"{text} (request id: {request_id_of(answer)})"
    assert envelope["type"] == "new_api_error"
    assert envelope["code"] == row.code
    assert ("param" in envelope) is row.param
    if row.param:
        assert envelope["param"] == ""
    assert answer.headers["x-new-api-version"] == "v0.10.4"
    assert charged in (0, 1)  # only the setup's own submission was charged


async def test_request_id_and_version_on_every_answer() -> None:
    """Successes, streams, downloads and control routes carry the gateway's id and version;
    the id's time part is the simulator's UTC wall clock."""
    config = gateway_profile(latency=0.05, api_version="v9.8.7")
    async with running_simulator(config) as sim, api(sim) as client:
        done = await client.post("/api/generate", json={"model": "nano-banana", "prompt": "p"})
        image = await client.get(done.json()["results"][0]["url"])
        stream = await client.post(
            "/api/generate", json={"model": "nano-banana", "prompt": "p", "replyType": "stream"}
        )
        stats = await client.get(sim.origin + "/_sim/stats")
        wall = sim.state.wall()
    answers = [done, image, stream, stats]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["x-new-api-version"] == "v9.8.7"
    ids = [request_id_of(a) for a in answers]
    assert len(set(ids)) == 4
    stamp = datetime.strptime(ids[-1][:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - wall) < 5


async def test_other_errors_get_the_request_id_too() -> None:
    """Errors outside the table keep their code and text, plus the request id."""
    config = gateway_profile(latency=0.05)
    async with running_simulator(config) as sim, api(sim) as client:
        bad = await client.post("/api/generate", json={"model": "nano-banana"})
        lost = await client.post("/draw/result", json={"id": "task_x"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        f"prompt is required (request id: {request_id_of(bad)})"
    )
    assert bad.json()["error"]["code"] == "invalid_request"
    assert lost.status_code == 404
    assert lost.json()["error"]["code"] == "task_not_found"
    assert lost.json()["error"]["message"].endswith(f" (request id: {request_id_of(lost)})")


async def test_chat_refusals_in_the_gateway_wire() -> None:
    """Chat answers the same rows as the drawing routes (it needs a channel and a price)."""
    config = gateway_profile(forbid=["m-forbidden"], unpriced=["m-unpriced"])
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    async with running_simulator(config) as sim, api(sim, **ZH) as client:
        forbidden = await client.post("/chat/completions", json={**chat, "model": "m-forbidden"})
        unpriced = await client.post("/chat/completions", json={**chat, "model": "m-unpriced"})
        fine = await client.post("/chat/completions", json={**chat, "model": "gpt-4o"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["message"].startswith("该令牌无权访问模型 m-forbidden (")
    assert unpriced.status_code == 400
    assert unpriced.json()["error"]["code"] == "model_price_error"
    assert fine.status_code == 200


async def test_new_rows_in_the_sim_wire() -> None:
    """The sim wire answers the new rows with the same codes and bilingual messages, and
    keeps its own request ids and its HTTP 200 for an unpaid submission."""
    config = SimConfig(
        latency=0.05,
        prices=dict(PRICES),
        keys=["sk-sim", "sk-elsewhere"],
        ip_blocked=["sk-elsewhere"],
        unpriced=["dear"],
        token_quota=0.03,
    )
    async with running_simulator(config) as sim:
        blocked = await post(sim, {}, key="sk-elsewhere")
        unpriced = await post(sim, {}, model="dear")
        assert (await post(sim, {})).status_code == 200
        sim.config.unpriced = []
        over = await post(sim, {}, model="dear")
        sim.config.token_quota = 0.02
        used_up = await post(sim, {})
        sim.config.token_quota = None
        sim.state.account_for_key("sk-sim").balance = 0.0
        unpaid = await post(sim, {})
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (403, "access_denied")
    assert (unpriced.status_code, unpriced.json()["error"]["code"]) == (400, "model_price_error")
    assert unpriced.json()["error"]["message"] == (
        "模型 dear 倍率或价格未配置，请联系管理员设置 "
        "(model dear has no price: ask the administrator to set its ratio or price)"
    )
    assert over.status_code == 403
    assert over.json()["error"] == {
        "message": "令牌额度不足, 剩余额度: ¥0.0100, 需要额度: ¥0.0500 "
        "(token quota is not enough, token remain quota: ¥0.0100, need quota: ¥0.0500)",
        "type": "new_api_error",
        "param": "",
        "code": "pre_consume_token_quota_failed",
    }
    assert (used_up.status_code, used_up.json()["error"]["code"]) == (401, "token_invalid")
    assert unpaid.status_code == 200
    assert unpaid.json() == {"code": -1, "msg": "积分不足 (insufficient credits)", "data": None}
    assert used_up.headers["x-oneapi-request-id"].startswith("sim")
    assert "x-new-api-version" not in used_up.headers


async def test_refunds_give_token_quota_back() -> None:
    """A failed task's refund is spendable again under the token quota."""
    config = SimConfig(latency=0.05, prices=dict(PRICES), token_quota=0.02)
    async with running_simulator(config) as sim:
        failed = await post(sim, {}, replyType="json", prompt="p [sim:fail=error]")
        assert failed.json()["status"] == "failed"
        assert (await post(sim, {})).status_code == 200
        assert (await post(sim, {})).status_code == 401
