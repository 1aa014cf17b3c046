"""The gateway's preflight routes over real loopback HTTP: shapes, billing, 404s, limits.

A fake clock drives task timing and the per-IP limit, so refunds settle and windows
pass only when a test says.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import httpx2 as httpx
import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim import SimConfig, SimServer, gateway_profile, running_simulator
from batchgen.sim.config import config_from_args, configure_parser
from batchgen.sim.preflight_routes import CHAT_MODEL, MODEL_CREATED

pytestmark = pytest.mark.anyio

NOW = "[sim:latency=0]"
ROUTES = {
    "models": "/v1/models",
    "subscription": "/v1/dashboard/billing/subscription",
    "usage": "/v1/dashboard/billing/usage",
    "status": "/api/status",
    "pricing": "/api/pricing",
}
TOKEN_ROUTES = ("models", "subscription", "usage")
DASHBOARD_ROUTES = ("subscription", "usage", "status", "pricing")


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def root(sim: SimServer, key: str = "sk-sim") -> httpx.AsyncClient:
    """A plain httpx client on the simulator's host root with a Bearer key."""
    return httpx.AsyncClient(
        base_url=sim.origin, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def from_flags(*argv: str) -> SimConfig:
    """The config ``batchgen sim ARGV`` would serve."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return config_from_args(parser.parse_args(list(argv)))


async def get(client: httpx.AsyncClient, route: str) -> Any:
    """GET a preflight route by name; its JSON body, after checking for a 200."""
    answer = await client.get(ROUTES[route])
    assert answer.status_code == 200, answer.text
    return answer.json()


async def submit(client: httpx.AsyncClient, prompt: str, model: str = "nano-banana") -> None:
    """Submit one async task (charged at once) and check it was accepted."""
    body = {"model": model, "prompt": prompt, "replyType": "async"}
    answer = await client.post("/v1/api/generate", json=body)
    assert answer.status_code == 200, answer.text


def model_row(name: str, endpoints: list[str]) -> dict[str, object]:
    """One entry of ``/v1/models`` as the gateway writes it."""
    return {
        "id": name,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": "custom",
        "supported_endpoint_types": endpoints,
    }


# --- /v1/models --------------------------------------------------------------------------


async def test_models_lists_every_model_the_key_may_use(sim: SimServer) -> None:
    """/v1/models is the gateway's list: every priced model and the chat model, sorted."""
    async with root(sim) as client:
        body = await get(client, "models")
        again = await get(client, "models")
    expected = sorted([*DEFAULT_PRICES, CHAT_MODEL])
    assert list(body) == ["success", "object", "data"]
    assert (body["success"], body["object"]) == (True, "list")
    assert [m["id"] for m in body["data"]] == expected
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["nano-banana-pro"] == model_row("nano-banana-pro", ["image-generation"])
    assert by_id[CHAT_MODEL] == model_row(CHAT_MODEL, ["openai"])
    assert again == body  # created is stable


async def test_forbid_removes_a_model_but_down_and_unpriced_stay(sim: SimServer) -> None:
    """A forbidden model leaves the list; down and unpriced ones stay (they fail later)."""
    sim.config.update(
        {"forbid": ["nano-banana", CHAT_MODEL], "down": ["gpt-image-2"], "unpriced": ["mine"]}
    )
    async with root(sim) as client:
        ids = [m["id"] for m in (await get(client, "models"))["data"]]
    assert "nano-banana" not in ids
    assert CHAT_MODEL not in ids
    assert {"gpt-image-2", "mine", "nano-banana-fast"} <= set(ids)
    assert ids == sorted(ids)


@pytest.mark.parametrize("route", TOKEN_ROUTES)
async def test_revoked_and_unknown_keys_get_401(sim: SimServer, route: str) -> None:
    """A key that worked and was revoked gets 401 token_invalid; an unknown one
    invalid_api_key; in the gateway wire both are 401 "Invalid token" with code ""."""
    async with root(sim) as client, root(sim, "sk-nobody") as stranger:
        await get(client, route)
        sim.config.keys = ["sk-other"]
        revoked = await client.get(ROUTES[route])
        unknown = await stranger.get(ROUTES[route])
        sim.config.wire = "gateway"
        gateway = await client.get(ROUTES[route])
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "token_invalid")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "invalid_api_key")
    assert gateway.status_code == 401
    rid = gateway.headers["x-oneapi-request-id"]
    message = f"Invalid token (request id: {rid})"
    assert gateway.json() == {"error": {"message": message, "type": "new_api_error", "code": ""}}


# --- billing -----------------------------------------------------------------------------


def subscription(amount: float) -> dict[str, object]:
    """The subscription body for a quota of ``amount``."""
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": amount,
        "hard_limit_usd": amount,
        "system_hard_limit_usd": amount,
        "access_until": 0,
    }


async def test_subscription_with_and_without_a_token_quota(sim: SimServer) -> None:
    """An unlimited key reports 100000000; a key with a quota reports it, spent or not."""
    async with root(sim) as client:
        unlimited = await get(client, "subscription")
        sim.config.token_quota = 2.5
        capped = await get(client, "subscription")
        await submit(client, NOW)
        after = await get(client, "subscription")
    assert unlimited == subscription(100000000)
    assert capped == subscription(2.5)
    assert after == capped  # used + remaining does not move with a charge


NB, PRO, GPT = (DEFAULT_PRICES[m] for m in ("nano-banana", "nano-banana-pro", "gpt-image-2"))


async def test_usage_moves_with_charges_and_back_down_with_refunds() -> None:
    """total_usage is 100 x what the key was charged, net of refunds once settled, per key;
    /_sim/stats usage_by_key agrees."""
    clock = FakeClock()
    config = SimConfig(keys=["sk-sim", "sk-other"])
    async with (
        running_simulator(config, clock=clock) as sim,
        root(sim) as client,
        root(sim, "sk-other") as other,
    ):
        assert await get(client, "usage") == {"object": "list", "total_usage": 0.0}
        await submit(client, NOW)
        assert (await get(client, "usage"))["total_usage"] == pytest.approx(100 * NB)
        await submit(client, "[sim:fail=error][sim:latency=2]", model="nano-banana-pro")
        assert (await get(client, "usage"))["total_usage"] == pytest.approx(100 * (NB + PRO))
        assert sim.stats()["usage_by_key"] == {"key#1": pytest.approx(NB + PRO)}
        clock.advance(2)  # the failed task ends; its refund settles at the next request
        assert (await get(client, "usage"))["total_usage"] == pytest.approx(100 * NB)
        await submit(client, "[sim:fail=error]" + NOW)  # refunded before anyone asks
        assert (await get(client, "usage"))["total_usage"] == pytest.approx(100 * NB)
        assert (await get(other, "usage"))["total_usage"] == 0.0
        await submit(other, NOW, model="gpt-image-2")
        assert (await get(other, "usage"))["total_usage"] == pytest.approx(100 * GPT)
        stats = sim.stats()
    assert stats["usage_by_key"] == {"key#1": pytest.approx(NB), "key#2": pytest.approx(GPT)}
    net = stats["charged_total"] - stats["refunded_total"]  # type: ignore[operator]
    assert net == pytest.approx(NB + GPT)


@pytest.mark.parametrize("wire", ["sim", "gateway"])
async def test_billing_error_is_http_200_with_an_error_object(wire: str) -> None:
    """billing_error makes both billing routes answer HTTP 200 {"error": {...}}; the other
    routes answer as usual and a bad key is still refused first."""
    config = SimConfig(billing_error=True, wire=wire)  # type: ignore[arg-type]
    async with running_simulator(config) as sim, root(sim) as client:
        for route in ("subscription", "usage"):
            body = await get(client, route)
            assert list(body) == ["error"]
            error = body["error"]
            assert list(error) == ["message", "type", "code"]
            assert error["type"] == "new_api_error"
            assert error["message"]
            assert error["code"]
        assert (await get(client, "models"))["success"] is True
        assert (await get(client, "status"))["success"] is True
        async with root(sim, "sk-nobody") as stranger:
            assert (await stranger.get(ROUTES["usage"])).status_code == 401


# --- /api/status and /api/pricing ---------------------------------------------------------


async def test_status_states_the_site_units() -> None:
    """/api/status needs no key and states the units; the gateway wire adds its version."""
    config = gateway_profile(display_currency="USD", usd_exchange_rate=7.1, api_version="v1.2.3")
    async with running_simulator(config) as sim, httpx.AsyncClient(base_url=sim.origin) as plain:
        answer = await plain.get("/api/status")
    assert answer.status_code == 200
    assert answer.headers["x-new-api-version"] == "v1.2.3"
    assert answer.json() == {
        "success": True,
        "message": "",
        "data": {
            "quota_per_unit": 500000,
            "quota_display_type": "USD",
            "usd_exchange_rate": 7.1,
            "display_in_currency": True,
            "version": "v1.2.3",
            "system_name": "CobabaAi (simulator)",
        },
    }


async def test_pricing_shape_in_the_default_cny_display(sim: SimServer) -> None:
    """/api/pricing lists priced models at a fixed USD price: price / 7.3, 12 decimals."""
    sim.config.unpriced = ["nano-banana-2"]
    async with httpx.AsyncClient(base_url=sim.origin) as plain:
        answer = await plain.get("/api/pricing")
    assert answer.status_code == 200
    body = answer.json()
    assert list(body) == ["success", "data", "group_ratio", "usable_group"]
    assert body["success"] is True
    assert body["group_ratio"] == {"default": 1.0}
    assert body["usable_group"] == {"default": "默认分组"}
    names = [row["model_name"] for row in body["data"]]
    assert names == sorted(set(DEFAULT_PRICES) - {"nano-banana-2"})
    pro = next(row for row in body["data"] if row["model_name"] == "nano-banana-pro")
    assert pro == {
        "model_name": "nano-banana-pro",
        "quota_type": 1,
        "model_price": round(0.198 / 7.3, 12),
        "model_ratio": 0,
        "completion_ratio": 0,
        "enable_groups": ["default"],
    }


PRICING_CASES = [
    ("CNY", 7.3, {"default": 1.0}, "default"),
    ("USD", 7.3, {"default": 1.0}, "default"),
    ("CNY", 6.9, {"default": 1.0, "vip": 1.5}, "vip"),
    ("USD", 7.3, {"default": 1.0, "svip": 0.8}, "svip"),
    ("CNY", 7.3, {"default": 1.0}, "unlisted"),  # a group without a ratio: ratio 1
]


@pytest.mark.parametrize(("currency", "rate", "ratios", "group"), PRICING_CASES)
async def test_pricing_gives_back_the_charged_price(
    currency: str, rate: float, ratios: dict[str, float], group: str
) -> None:
    """model_price x group_ratio (x usd_exchange_rate in a CNY display) is what a call is
    really charged, to within 1e-9, for every model; the group's ratio is published."""
    config = SimConfig(
        display_currency=currency,  # type: ignore[arg-type]
        usd_exchange_rate=rate,
        group_ratios=ratios,
        group=group,
    )
    async with running_simulator(config) as sim, root(sim) as client:
        body = await get(client, "pricing")
        status = (await get(client, "status"))["data"]
        before = (await get(client, "usage"))["total_usage"]
        await submit(client, NOW, model="nano-banana-pro")
        charged = ((await get(client, "usage"))["total_usage"] - before) / 100
    published = body["group_ratio"][group]
    assert published == ratios.get(group, 1.0)
    shown = status["usd_exchange_rate"] if status["quota_display_type"] == "CNY" else 1.0
    for row in body["data"]:
        price = row["model_price"]
        assert price == round(price, 12)
        assert row["enable_groups"] == [group]
        expected = DEFAULT_PRICES[row["model_name"]]
        assert price * published * shown == pytest.approx(expected, abs=1e-9)
    pro = next(row for row in body["data"] if row["model_name"] == "nano-banana-pro")
    assert pro["model_price"] * published * shown == pytest.approx(charged, abs=1e-9)


async def test_price_option_changes_what_is_charged_and_published() -> None:
    """--price MODEL=AMOUNT moves both the charge and the USD price, and lists new models."""
    config = from_flags("--price", "nano-banana=0.5", "--price", "my-model=0.25")
    async with running_simulator(config) as sim, root(sim) as client:
        rows = {row["model_name"]: row for row in (await get(client, "pricing"))["data"]}
        models = [m["id"] for m in (await get(client, "models"))["data"]]
        await submit(client, NOW)
        await submit(client, NOW, model="my-model")
        usage = (await get(client, "usage"))["total_usage"]
    assert rows["nano-banana"]["model_price"] == round(0.5 / 7.3, 12)
    assert rows["my-model"]["model_price"] == round(0.25 / 7.3, 12)
    assert "my-model" in models
    assert usage == pytest.approx(75.0)


# --- hidden routes, the per-IP limit, the model limiter ----------------------------------


@pytest.mark.parametrize("wire", ["sim", "gateway"])
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_hidden_route_answers_the_wires_404(route: str, wire: str) -> None:
    """A route in hidden_routes answers exactly what an unknown path does; the others
    still answer."""
    config = SimConfig(hidden_routes=[route], wire=wire)  # type: ignore[arg-type]
    async with running_simulator(config) as sim, root(sim) as client:
        hidden = await client.get(ROUTES[route])
        unknown = await client.get("/v1/no-such-route")
        others = [await client.get(ROUTES[r]) for r in ROUTES if r != route]
    assert hidden.status_code == unknown.status_code == 404
    error = hidden.json()["error"]
    expected = unknown.json()["error"]
    assert error["code"] == expected["code"]
    assert error["message"].startswith(f"Invalid URL (GET {ROUTES[route]})")
    assert set(error) == set(expected)
    assert ("request id" in error["message"]) == (wire == "gateway")
    assert [a.status_code for a in others] == [200] * (len(ROUTES) - 1)


async def test_routes_can_be_hidden_while_running(sim: SimServer) -> None:
    """POST /_sim/config with hidden_routes hides a route at once, and shows it again."""
    async with root(sim) as client:
        assert (await client.post("/_sim/config", json={"hidden_routes": ["usage"]})).is_success
        assert (await client.get(ROUTES["usage"])).status_code == 404
        assert (await client.post("/_sim/config", json={"hidden_routes": []})).is_success
        assert (await client.get(ROUTES["usage"])).status_code == 200
        refused = await client.post("/_sim/config", json={"hidden_routes": ["credits"]})
    assert refused.status_code == 400


async def test_dashboard_limit_answers_a_bare_429_past_n_per_180_s() -> None:
    """Past N requests per IP in 180 s, /api/* and the billing routes (a 401 counts too)
    answer a bare 429 without Retry-After until the oldest is 180 s old; /v1/models and
    the task routes are not in that limit."""
    clock = FakeClock()
    config = SimConfig(dashboard_limit=3)
    async with (
        running_simulator(config, clock=clock) as sim,
        root(sim) as client,
        root(sim, "sk-nobody") as stranger,
    ):
        assert (await client.get(ROUTES["status"])).status_code == 200
        clock.advance(60)
        assert (await client.get(ROUTES["pricing"])).status_code == 200
        assert (await stranger.get(ROUTES["usage"])).status_code == 401
        limited = [await client.get(ROUTES[r]) for r in DASHBOARD_ROUTES]
        assert [(await client.get(ROUTES["models"])).status_code for _ in range(5)] == [200] * 5
        await submit(client, NOW)
        clock.advance(119.9)  # the first is 179.9 s old
        assert (await client.get(ROUTES["status"])).status_code == 429
        clock.advance(0.1)
        assert (await client.get(ROUTES["subscription"])).status_code == 200
        assert (await client.get(ROUTES["status"])).status_code == 429
        stats = sim.stats()
    for answer in limited:
        assert answer.status_code == 429
        assert answer.content == b""
        assert "retry-after" not in answer.headers
    assert stats["rate_limited"] == 6
    by_route = stats["rate_limited_by_route"]
    assert by_route == {
        "GET /v1/dashboard/billing/subscription": 1,
        "GET /v1/dashboard/billing/usage": 1,
        "GET /api/status": 3,
        "GET /api/pricing": 1,
    }


async def test_dashboard_limit_is_per_client_ip_and_off_by_default() -> None:
    """Each client IP has a count of its own (a caller from 127.0.0.2 is not limited by
    one from 127.0.0.1), and with dashboard_limit 0 (the default) nothing is limited."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("this system has no 127.0.0.2 to call from")
    clock = FakeClock()
    async with (
        running_simulator(SimConfig(dashboard_limit=2), clock=clock) as sim,
        httpx.AsyncClient(base_url=sim.origin) as first,
        httpx.AsyncClient(
            base_url=sim.origin, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        ) as second,
    ):
        one = [(await first.get(ROUTES["status"])).status_code for _ in range(3)]
        two = [(await second.get(ROUTES["status"])).status_code for _ in range(3)]
        sim.config.dashboard_limit = 0
        off = [(await first.get(ROUTES["status"])).status_code for _ in range(20)]
    assert one == two == [200, 200, 429]
    assert off == [200] * 20


async def test_preflight_routes_never_use_the_gateway_limiter() -> None:
    """Under the gateway limiter (1 success a minute) every preflight route answers again
    and again, before and after a submission, and none of them takes its place."""
    clock = FakeClock()
    config = gateway_profile(gateway_limit=1, gateway_total=1)
    async with running_simulator(config, clock=clock) as sim, root(sim) as client:
        before = [(await client.get(ROUTES[r])).status_code for r in ROUTES for _ in range(3)]
        await submit(client, NOW)  # the one success of the window
        after = [(await client.get(ROUTES[r])).status_code for r in ROUTES for _ in range(3)]
        limited = await client.post(
            "/v1/api/generate", json={"model": "nano-banana", "prompt": NOW, "replyType": "async"}
        )
        stats = sim.stats()
    assert before == after == [200] * 15
    assert limited.status_code == 429
    by_route = stats["requests_by_route"]
    assert isinstance(by_route, dict)
    for path in ROUTES.values():
        assert by_route[f"GET {path}"] == 6
    assert by_route["POST /v1/api/generate"] == 2
