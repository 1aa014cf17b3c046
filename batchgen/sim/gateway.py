"""The gateway's error bodies and request ids, as ``protocol.md`` quotes new-api.

With ``wire="gateway"`` the simulator answers as new-api does: the OpenAI envelope with
the gateway's ``error.code`` (often empty), a message in English, or in Chinese when the
request's ``Accept-Language`` starts with ``zh``, ending in ``(request id: <id>)``; no
``param`` key on middleware refusals, ``"param": ""`` on relay errors. Such an answer is
a :class:`Refusal`, a :class:`~batchgen.sim.wire.Reply` whose body is written once the
request is known (:func:`body_of`, called by the app as it answers); any other error
envelope gets the request id appended to its message. With ``wire="sim"`` the builders
here return today's bodies (the seed's codes and bilingual messages).

The gateway limiter's 429s (:func:`rate_limit`) are refusals in either wire: their text
is new-api's Chinese one whatever the language, with the request id.
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from batchgen.sim.config import Wire
from batchgen.sim.limits import Refused
from batchgen.sim.wire import Reply, error, forbidden, no_channel

__all__ = [
    "Refusal",
    "Row",
    "body_of",
    "invalid_token",
    "ip_blocked",
    "model_forbidden",
    "model_price",
    "no_channel_for",
    "rate_limit",
    "request_id",
    "token_quota",
    "user_quota",
    "wants_chinese",
    "window_minutes",
]

_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class Row:
    """One error of the gateway's table: status, ``error.code``, its two texts.

    The texts are ``str.format`` templates; ``relay`` errors carry ``"param": ""``.
    """

    status: int
    code: str
    english: str
    chinese: str
    relay: bool = False


INVALID_TOKEN = Row(401, "", "Invalid token", "无效的令牌")
IP_BLOCKED = Row(
    403,
    "access_denied",
    "Your IP is not in the list of IPs allowed for this token",
    "您的 IP 不在令牌允许访问的列表中",
)
MODEL_FORBIDDEN = Row(
    403, "", "This token has no access to model {model}", "该令牌无权访问模型 {model}"
)
NO_CHANNEL = Row(
    503,
    "model_not_found",
    "No available channel for model {model} under group {group} (distributor)",
    "分组 {group} 下模型 {model} 无可用渠道（distributor）",
)
USER_QUOTA = Row(
    403,
    "insufficient_user_quota",
    "user quota is not enough, remaining quota: ¥{balance:.4f}",
    "用户额度不足, 剩余额度: ¥{balance:.4f}",
    relay=True,
)
TOKEN_QUOTA = Row(
    403,
    "pre_consume_token_quota_failed",
    "token quota is not enough, token remain quota: ¥{left:.4f}, need quota: ¥{cost:.4f}",
    "令牌额度不足, 剩余额度: ¥{left:.4f}, 需要额度: ¥{cost:.4f}",
    relay=True,
)
MODEL_PRICE = Row(
    400,
    "model_price_error",
    "model {model} has no price: ask the administrator to set its ratio or price",
    "模型 {model} 倍率或价格未配置，请联系管理员设置",
    relay=True,
)
# new-api's own texts, full-width punctuation and all:
_SUCCESS_TEXT = "您已达到请求数限制：{minutes}分钟内最多请求{limit}次"
_TOTAL_TEXT = (
    "您已达到总请求数限制：{minutes}分钟内最多请求{limit}次，包括失败次数，请检查您的请求是否正确"
)
SUCCESS_LIMIT = Row(429, "", _SUCCESS_TEXT, _SUCCESS_TEXT)
TOTAL_LIMIT = Row(429, "", _TOTAL_TEXT, _TOTAL_TEXT)


class Refusal(Reply):
    """An error of the gateway's table; its body depends on the request (language, id)."""

    def __init__(self, row: Row, **values: object) -> None:
        super().__init__(row.status)
        self.row = row
        self.values = values

    def text(self, chinese: bool) -> str:
        """The message without the request id, in Chinese or English."""
        return (self.row.chinese if chinese else self.row.english).format(**self.values)

    def body_for(self, request_id: str, chinese: bool) -> dict[str, object]:
        """The envelope for a request with id ``request_id``."""
        envelope: dict[str, object] = {
            "message": f"{self.text(chinese)} (request id: {request_id})",
            "type": "new_api_error",
        }
        if self.row.relay:
            envelope["param"] = ""
        envelope["code"] = self.row.code
        return {"error": envelope}


def wants_chinese(accept_language: str) -> bool:
    """Whether an ``Accept-Language`` value asks for Chinese (it starts with ``zh``)."""
    return accept_language.lstrip().lower().startswith("zh")


def body_of(reply: Reply, request_id: str, accept_language: str, wire: Wire) -> object:
    """The body to send for ``reply``: a refusal written for the request; in the gateway
    wire, an error envelope with the request id appended to its message; else as is."""
    if isinstance(reply, Refusal):
        return reply.body_for(request_id, wants_chinese(accept_language))
    body = reply.body
    if wire == "gateway" and isinstance(body, dict):
        envelope = body.get("error")
        if isinstance(envelope, dict) and isinstance(envelope.get("message"), str):
            message = f"{envelope['message']} (request id: {request_id})"
            return {**body, "error": {**envelope, "message": message}}
    return body


def request_id(wall: float, entropy: bytes) -> str:
    """The gateway's request id: UTC ``yyyyMMddHHmmss`` of Unix time ``wall``, its
    nanoseconds in 9 digits, and 16 alphanumerics drawn from ``entropy`` (16+ bytes)."""
    seconds, nanos = divmod(int(wall * 1_000_000_000), 1_000_000_000)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds))
    tail = "".join(_ALPHANUMERIC[b % len(_ALPHANUMERIC)] for b in entropy[:16])
    return f"{stamp}{nanos:09d}{tail}"


def window_minutes(window: float) -> str:
    """A window in seconds as the minutes of a limit message: ``1``, or ``0.05``."""
    minutes = window / 60
    if minutes.is_integer():
        return str(int(minutes))
    return format(Decimal(repr(minutes)), "f")


# --- the table's rows, in either wire ------------------------------------------------------


def invalid_token(wire: Wire, why: Literal["unknown", "revoked", "used_up"]) -> Reply:
    """401 for a key that is unknown, revoked, or whose token quota is used up."""
    if wire == "gateway":
        return Refusal(INVALID_TOKEN)
    if why == "revoked":  # it worked before
        return error(401, "token_invalid", "令牌已过期或被禁用 (token revoked or expired)")
    if why == "used_up":
        return error(401, "token_invalid", "令牌额度已用尽 (token quota used up)")
    return error(401, "invalid_api_key", "无效的令牌 (invalid API key)")


def ip_blocked(wire: Wire) -> Reply:
    """403 ``access_denied``: the key's IP whitelist refuses the caller."""
    if wire == "gateway":
        return Refusal(IP_BLOCKED)
    return error(403, "access_denied", "您的 IP 不在令牌允许访问的列表中 (IP not allowed)")


def model_forbidden(wire: Wire, model: str) -> Reply:
    """403: the key may not use ``model`` (``token_model_forbidden`` in the sim wire)."""
    return Refusal(MODEL_FORBIDDEN, model=model) if wire == "gateway" else forbidden(model)


def no_channel_for(wire: Wire, model: str, group: str) -> Reply:
    """503 ``model_not_found``: no channel of ``group`` serves ``model``."""
    if wire == "gateway":
        return Refusal(NO_CHANNEL, model=model, group=group)
    return no_channel(model)


def model_price(wire: Wire, model: str) -> Reply:
    """400 ``model_price_error``: ``model`` has a channel but no price."""
    if wire == "gateway":
        return Refusal(MODEL_PRICE, model=model)
    text = f"{MODEL_PRICE.chinese} ({MODEL_PRICE.english})".format(model=model)
    return error(400, MODEL_PRICE.code, text)


def user_quota(wire: Wire, balance: float) -> Reply:
    """The balance cannot pay: 403 ``insufficient_user_quota``; sim wire HTTP 200 code -1."""
    if wire == "gateway":
        return Refusal(USER_QUOTA, balance=balance)
    return Reply(200, {"code": -1, "msg": "积分不足 (insufficient credits)", "data": None})


def token_quota(wire: Wire, left: float, cost: float) -> Reply:
    """403 ``pre_consume_token_quota_failed``: what is left of the key's quota cannot pay."""
    if wire == "gateway":
        return Refusal(TOKEN_QUOTA, left=left, cost=cost)
    text = f"{TOKEN_QUOTA.chinese} ({TOKEN_QUOTA.english})".format(left=left, cost=cost)
    return error(403, TOKEN_QUOTA.code, text)


def rate_limit(kind: Refused, limit: int, window: float) -> Refusal:
    """The gateway limiter's 429 (either wire): the limit that refused, in its own words."""
    row = SUCCESS_LIMIT if kind == "success" else TOTAL_LIMIT
    return Refusal(row, minutes=window_minutes(window), limit=limit)
