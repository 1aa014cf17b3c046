"""The gateway's (new-api's) error forms: what their texts say, and the errors they become.

The first half reads messages with :mod:`batchgen.api.messages` (the stated limit of a
429, the model of a refusal, the model and group of a "no channel" answer); the second
sends each row of the gateway's error table (``shared/protocol.md``, "Errors as the
gateway writes them") through a real :class:`~batchgen.api.client.CobabaClient` over
``httpx.MockTransport`` and checks the error of :mod:`batchgen.errors` it becomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from batchgen.api.messages import channel_named, model_named, parse_stated_limit
from batchgen.api.wire import error_for_status
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ModelUnavailableError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    StatedLimit,
)
from tests.test_client_unit import Recorder, answer_raw, client_for, envelope_error

#: A request id as the gateway makes them: UTC yyyyMMddHHmmss, nanoseconds, 16 characters.
REQUEST_ID = "20261201093015123456789Ab3dE5gH1jK2mN4p"
VERSION = "v0.9.1-alpha.3"


# --- parse_stated_limit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            f"您已达到请求数限制：1分钟内最多请求60次 (request id: {REQUEST_ID})",
            StatedLimit(60, 60.0, "success"),
            id="zh-success",
        ),
        pytest.param(
            "您已达到总请求数限制：2分钟内最多请求100次，包括失败次数，请检查您的请求是否正确",
            StatedLimit(100, 120.0, "total"),
            id="zh-total",
        ),
        pytest.param(
            "您已达到请求数限制：5分钟内最多请求1000次",
            StatedLimit(1000, 300.0, "success"),
            id="zh-five-minutes",
        ),
        pytest.param(
            "You have reached the request rate limit: 15 requests per minute",
            StatedLimit(15, 60.0, "success"),
            id="en-per-minute",
        ),
        pytest.param("60 requests per 2 minutes", StatedLimit(60, 120.0, "success"), id="en-per-2"),
        pytest.param(
            "within 1 minute, at most 30 requests",
            StatedLimit(30, 60.0, "success"),
            id="en-window-first",
        ),
        pytest.param(
            "at most 60 requests within 1 minute(s)",
            StatedLimit(60, 60.0, "success"),
            id="en-at-most",
        ),
        pytest.param(
            "You have reached the total request limit: 100 requests per 2 minutes,"
            " including failures",
            StatedLimit(100, 120.0, "total"),
            id="en-total",
        ),
        pytest.param("10 requests per 30 seconds", StatedLimit(10, 30.0, "success"), id="en-secs"),
        pytest.param("1000 requests per hour", StatedLimit(1000, 3600.0, "success"), id="en-hour"),
    ],
)
def test_parse_stated_limit_reads_the_count_the_window_and_the_scope(
    message: str, expected: StatedLimit
) -> None:
    """Each of the gateway's texts (and the English forms) gives its count, seconds and scope."""
    assert parse_stated_limit(message) == expected


def test_parse_stated_limit_reads_decimal_minutes() -> None:
    """A window in decimal minutes (``0.05分钟``) is read as seconds: 5 requests per 3 s."""
    limit = parse_stated_limit("您已达到请求数限制：0.05分钟内最多请求5次")
    assert limit is not None
    assert limit.count == 5
    assert limit.window == pytest.approx(3.0)
    assert limit.scope == "success"


@pytest.mark.parametrize(
    "message",
    [
        "上游繁忙",
        f"上游繁忙 (request id: {REQUEST_ID})",
        "rate limit exceeded",
        "请求过于频繁,请稍后再试 (rate limit exceeded)",
        "Too Many Requests",
        "",
        "您已达到请求数限制：1分钟内最多请求0次",
    ],
)
def test_parse_stated_limit_is_none_when_no_limit_is_stated(message: str) -> None:
    """Texts that state no (usable) limit, the request id's digits included, give None."""
    assert parse_stated_limit(message) is None


def test_stated_limit_describes_itself() -> None:
    """A stated limit prints as requests (sliding log) or attempts (total bucket) per window."""
    assert str(StatedLimit(60, 60.0)) == "60 requests per 60s"
    assert str(StatedLimit(100, 120.0, "total")) == "100 attempts per 120s"


# --- model_named and channel_named --------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "model"),
    [
        pytest.param(
            "This token has no access to model nano-banana-pro", "nano-banana-pro", id="en"
        ),
        pytest.param(
            f"This token has no access to model nano-banana-pro (request id: {REQUEST_ID})",
            "nano-banana-pro",
            id="en-request-id",
        ),
        pytest.param("该令牌无权访问模型 nano-banana-2", "nano-banana-2", id="zh"),
        pytest.param(
            "该令牌无权访问模型nano-banana-2，请联系管理员", "nano-banana-2", id="zh-tight"
        ),
        pytest.param(
            "该令牌无权使用模型 gpt-image-2 (model forbidden)", "gpt-image-2", id="zh-simulator"
        ),
        pytest.param(
            "模型 gpt-image-2 无可用渠道 (no channel for model)", "gpt-image-2", id="zh-503"
        ),
        pytest.param(
            "模型 nano-banana-x 倍率或价格未配置，请联系管理员设置", "nano-banana-x", id="zh-price"
        ),
        pytest.param("model nano-banana-x has no price", "nano-banana-x", id="en-price"),
    ],
)
def test_model_named_reads_the_refused_model(message: str, model: str) -> None:
    """Each refusal form of the gateway and of the simulator names its model."""
    assert model_named(message) == model


@pytest.mark.parametrize(
    "message",
    ["Invalid token", "无效的令牌", "您的 IP 不在令牌允许访问的列表中", "", "用户额度不足"],
)
def test_model_named_is_none_when_no_model_is_named(message: str) -> None:
    """Refusals that are not about a model give None."""
    assert model_named(message) is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            "分组 default 下模型 nano-banana 无可用渠道（distributor）",
            ("nano-banana", "default"),
            id="zh-gateway",
        ),
        pytest.param(
            f"分组 vip 下模型 nano-banana-pro 无可用渠道（distributor） (request id: {REQUEST_ID})",
            ("nano-banana-pro", "vip"),
            id="zh-gateway-request-id",
        ),
        pytest.param(
            "No available channel for model gpt-image-2 under group default",
            ("gpt-image-2", "default"),
            id="en",
        ),
        pytest.param(
            "模型 gpt-image-2 无可用渠道 (no channel for model)",
            ("gpt-image-2", None),
            id="zh-simulator",
        ),
        pytest.param("no channel", (None, None), id="nothing"),
    ],
)
def test_channel_named_reads_the_model_and_the_group(
    message: str, expected: tuple[str | None, str | None]
) -> None:
    """A "no channel" answer gives (model, group) as far as its text names them."""
    assert channel_named(message) == expected


# --- error_for_status through the client ----------------------------------------------------


def gateway_error(code: str, message: str, *, param: bool = False) -> bytes:
    """A gateway refusal as new-api writes it: the request id in the message; ``param`` only
    on relay errors (middleware refusals have none)."""
    error: dict[str, Any] = {
        "message": f"{message} (request id: {REQUEST_ID})",
        "type": "new_api_error",
        "code": code,
    }
    if param:
        error = envelope_error(code, error["message"])["error"]
    return json.dumps({"error": error}).encode()


@dataclass(frozen=True)
class GatewayCase:
    """One row of the gateway's error table and the error it must become."""

    status: int
    code: str
    message: str
    error: type[APIError]
    error_code: str
    param: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


GATEWAY_CASES: dict[str, GatewayCase] = {
    "401-invalid-token": GatewayCase(
        401, "", "Invalid token", AuthenticationError, "invalid_api_key"
    ),
    "401-zh": GatewayCase(401, "", "无效的令牌", AuthenticationError, "invalid_api_key"),
    "403-access_denied": GatewayCase(
        403,
        "access_denied",
        "您的 IP 不在令牌允许访问的列表中",
        AccessDeniedError,
        "access_denied",
        extra={"model": None},
    ),
    "403-no-access-to-model": GatewayCase(
        403,
        "",
        "This token has no access to model nano-banana-pro",
        PermissionDeniedError,
        "token_model_forbidden",
        extra={"model": "nano-banana-pro"},
    ),
    "403-zh-no-access-to-model": GatewayCase(
        403,
        "",
        "该令牌无权访问模型 nano-banana-2",
        PermissionDeniedError,
        "token_model_forbidden",
        extra={"model": "nano-banana-2"},
    ),
    "403-insufficient_user_quota": GatewayCase(
        403,
        "insufficient_user_quota",
        "用户额度不足, 剩余额度: ¥0.12",
        QuotaExceededError,
        "insufficient_user_quota",
    ),
    "403-pre_consume_token_quota_failed": GatewayCase(
        403,
        "pre_consume_token_quota_failed",
        "token quota is not enough, token remain quota: ¥0.01, need quota: ¥0.198",
        QuotaExceededError,
        "pre_consume_token_quota_failed",
    ),
    "503-model_not_found": GatewayCase(
        503,
        "model_not_found",
        "分组 vip 下模型 nano-banana-pro 无可用渠道（distributor）",
        ModelUnavailableError,
        "model_not_found",
        extra={"model": "nano-banana-pro", "group": "vip"},
    ),
    "400-model_price_error": GatewayCase(
        400,
        "model_price_error",
        "模型 nano-banana-x 倍率或价格未配置，请联系管理员设置或开始自用模式",
        BadRequestError,
        "model_price_error",
        param=True,
    ),
}


def gateway_headers(**extra: str) -> dict[str, str]:
    """The headers every answer of the gateway carries."""
    return {"X-Oneapi-Request-Id": REQUEST_ID, "X-New-Api-Version": VERSION, **extra}


async def raised_by(content: bytes, status: int, headers: dict[str, str]) -> APIError:
    """The APIError a submission answered with ``content`` and ``status`` raises."""
    rec = Recorder(answer_raw(content, status=status, headers=headers))
    async with client_for(rec) as client:
        with pytest.raises(APIError) as info:
            await client.generate_async({"model": "nano-banana-pro", "prompt": "cat"})
    return info.value


@pytest.mark.anyio
@pytest.mark.parametrize("case", GATEWAY_CASES.values(), ids=GATEWAY_CASES.keys())
async def test_gateway_refusals_become_their_errors(case: GatewayCase) -> None:
    """Each row of the gateway's error table becomes its error class, code and attributes."""
    body = gateway_error(case.code, case.message, param=case.param)
    exc = await raised_by(body, case.status, gateway_headers())
    assert type(exc) is case.error
    assert exc.status == case.status
    assert exc.code == case.error_code
    assert exc.accepted is Accepted.NO
    assert exc.request_id == REQUEST_ID
    assert case.message in str(exc)
    for name, value in case.extra.items():
        assert getattr(exc, name) == value


@pytest.mark.anyio
async def test_403_access_denied_ends_the_command_and_is_not_about_a_model() -> None:
    """403 access_denied is an AccessDeniedError (exit code 3), a PermissionDeniedError kind."""
    exc = await raised_by(
        gateway_error("access_denied", "您的 IP 不在令牌允许访问的列表中"), 403, gateway_headers()
    )
    assert isinstance(exc, AccessDeniedError)
    assert isinstance(exc, PermissionDeniedError)
    assert exc.exit_code == 3
    assert exc.retryable is False


@pytest.mark.anyio
async def test_403_without_code_is_a_model_refusal_not_access_denied() -> None:
    """A 403 with an empty code naming a model refuses that model only (not exit code 3)."""
    exc = await raised_by(
        gateway_error("", "This token has no access to model nano-banana-pro"),
        403,
        gateway_headers(),
    )
    assert isinstance(exc, PermissionDeniedError)
    assert not isinstance(exc, AccessDeniedError)
    assert exc.model == "nano-banana-pro"
    assert exc.exit_code == 1


@pytest.mark.anyio
async def test_401_with_an_empty_code_ends_the_command() -> None:
    """The gateway's 401 (empty code, "Invalid token") is an AuthenticationError, exit code 3."""
    exc = await raised_by(gateway_error("", "Invalid token"), 401, gateway_headers())
    assert isinstance(exc, AuthenticationError)
    assert exc.exit_code == 3
    assert exc.retryable is False


@pytest.mark.anyio
@pytest.mark.parametrize("code", ["insufficient_user_quota", "pre_consume_token_quota_failed"])
async def test_quota_refusals_are_not_retryable(code: str) -> None:
    """Both quota refusals are QuotaExceededError, not retryable, and keep the gateway's code."""
    exc = await raised_by(gateway_error(code, "额度不足"), 403, gateway_headers())
    assert isinstance(exc, QuotaExceededError)
    assert exc.code == code
    assert exc.retryable is False


@pytest.mark.anyio
async def test_429_stating_its_limit() -> None:
    """A 429 envelope (no ``param``) stating its limit gives .limit, no Retry-After, .server."""
    body = gateway_error("", "您已达到请求数限制：1分钟内最多请求60次")
    assert b'"param"' not in body
    exc = await raised_by(body, 429, gateway_headers())
    assert isinstance(exc, RateLimitError)
    assert exc.limit == StatedLimit(60, 60.0, "success")
    assert exc.retry_after is None
    assert exc.empty is False
    assert exc.server == VERSION
    assert exc.code == "rate_limit_exceeded"
    assert exc.retryable is True
    assert exc.accepted is Accepted.NO


@pytest.mark.anyio
async def test_429_stating_the_total_limit() -> None:
    """The total limit's 429 gives a limit with scope ``total``."""
    body = gateway_error(
        "", "您已达到总请求数限制：2分钟内最多请求100次，包括失败次数，请检查您的请求是否正确"
    )
    exc = await raised_by(body, 429, gateway_headers())
    assert isinstance(exc, RateLimitError)
    assert exc.limit == StatedLimit(100, 120.0, "total")
    assert exc.empty is False


@pytest.mark.anyio
async def test_429_with_an_empty_body() -> None:
    """The memory-mode 429 (no body) is empty, states no limit, and still names the server."""
    exc = await raised_by(b"", 429, gateway_headers())
    assert isinstance(exc, RateLimitError)
    assert exc.empty is True
    assert exc.limit is None
    assert exc.retry_after is None
    assert exc.server == VERSION
    assert exc.request_id == REQUEST_ID
    assert str(exc).count(REQUEST_ID) == 1


@pytest.mark.anyio
async def test_429_from_elsewhere_has_no_server() -> None:
    """An empty 429 without ``X-New-Api-Version`` has ``server`` None (not the gateway's)."""
    exc = await raised_by(b"", 429, {})
    assert isinstance(exc, RateLimitError)
    assert exc.empty is True
    assert exc.server is None
    assert exc.request_id is None


@pytest.mark.anyio
async def test_429_upstream_busy_is_neither_empty_nor_a_limit() -> None:
    """An upstream's 429 passed through with its own text states no limit and is not empty."""
    exc = await raised_by(gateway_error("", "上游繁忙", param=True), 429, gateway_headers())
    assert isinstance(exc, RateLimitError)
    assert exc.limit is None
    assert exc.empty is False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, "", "Invalid token"),
        (403, "", "This token has no access to model nano-banana-pro"),
        (403, "access_denied", "您的 IP 不在令牌允许访问的列表中"),
        (429, "", "您已达到请求数限制：1分钟内最多请求60次"),
        (503, "model_not_found", "分组 default 下模型 nano-banana 无可用渠道（distributor）"),
    ],
)
async def test_request_id_written_in_the_message_appears_once(
    status: int, code: str, message: str
) -> None:
    """The gateway writes ``(request id: X)`` in its message: str(exc) holds X exactly once."""
    exc = await raised_by(gateway_error(code, message), status, gateway_headers())
    assert exc.request_id == REQUEST_ID
    assert str(exc).count(REQUEST_ID) == 1


@pytest.mark.anyio
async def test_request_id_only_in_the_header_is_added_once() -> None:
    """An answer whose text lacks the id gets it from the header, once."""
    body = json.dumps(envelope_error("model_price_error", "model price not set")).encode()
    exc = await raised_by(body, 400, gateway_headers())
    assert str(exc).count(REQUEST_ID) == 1


def test_error_frame_naming_no_channel() -> None:
    """An error frame in a stream (no HTTP response) reads the model and group the same way."""
    frame = envelope_error(
        "model_not_found", "分组 default 下模型 nano-banana 无可用渠道（distributor）"
    )
    exc = error_for_status(None, frame, "POST /chat/completions", REQUEST_ID)
    assert isinstance(exc, ModelUnavailableError)
    assert (exc.model, exc.group) == ("nano-banana", "default")
    assert exc.status is None
