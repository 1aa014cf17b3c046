"""What the service's error messages say, read out of their text.

The gateway (new-api) puts facts in its messages that no field carries: the rate limit
a 429 enforces (``您已达到请求数限制：1分钟内最多请求60次``), the model a 403 refuses
(``This token has no access to model X``), the model and group a 503 has no channel
for. Each function here reads one of them, in the Chinese and the English forms, and
returns ``None`` when the text does not say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from batchgen.errors import StatedLimit

__all__ = ["channel_named", "error_from_mapping", "model_named", "parse_stated_limit"]

_NUMBER = r"(\d+(?:\.\d+)?)"
# 您已达到请求数限制：1分钟内最多请求60次 / 您已达到总请求数限制：…，包括失败次数
_ZH_LIMIT: Final = re.compile(
    r"(总)?请求数限制\s*[:：]?\s*" + _NUMBER + r"\s*分钟内\s*最多请求\s*(\d+)\s*次"
)
_UNITS: Final = {"second": 1.0, "sec": 1.0, "s": 1.0, "minute": 60.0, "min": 60.0, "hour": 3600.0}
_UNIT = r"(seconds?|secs?|minutes?|mins?|hours?)"
# "15 requests per minute", "60 requests per 1 minute", "60 requests within 2 minutes"
_EN_COUNT_FIRST: Final = re.compile(
    r"(\d+)\s+requests?\s+(?:per|every|in|within|each)\s+(?:" + _NUMBER + r"\s+)?" + _UNIT,
    re.IGNORECASE,
)
# "at most 60 requests within 1 minute(s)" is the form above; "within 1 minute, at most 60"
_EN_WINDOW_FIRST: Final = re.compile(
    r"(?:within|in)\s+"
    + _NUMBER
    + r"\s+"
    + _UNIT
    + r"(?:\(s\))?\W+(?:at most\s+)?(\d+)\s+requests?",
    re.IGNORECASE,
)
_EN_TOTAL: Final = re.compile(r"\btotal\b|including fail", re.IGNORECASE)

_MODEL_PATTERNS: Final = (
    re.compile(r"no access to model\s+([^\s,;()]+)", re.IGNORECASE),
    re.compile(r"无权(?:访问|使用)模型\s*([^\s,;()，（]+)"),
    re.compile(r"\bmodel\s+([^\s,;()]+)\s+(?:is\s+)?(?:forbidden|not allowed|has no price)", re.I),
    re.compile(r"模型\s*([^\s,;()，（]+)\s*(?:倍率|价格|无可用渠道)"),
)
_CHANNEL_PATTERNS: Final = (
    re.compile(r"分组\s*(\S+?)\s*下模型\s*(\S+?)\s*无可用渠道"),
    re.compile(r"no available channel for model\s+(\S+)\s+under group\s+(\S+)", re.IGNORECASE),
)


def _unit_seconds(unit: str) -> float:
    word = unit.lower().rstrip("s") or "s"
    return _UNITS.get(word, _UNITS.get(word[:3], 60.0))


def parse_stated_limit(message: str) -> StatedLimit | None:
    """The rate limit a 429's message states, as ``(count, window seconds, scope)``.

    Reads the gateway's Chinese texts (success and total limits, the window in minutes)
    and the English forms seen in front of it (``N requests per [M] minute(s)``, ``within
    M minutes ... N requests``); ``None`` when the message states no limit.
    """
    if not message:
        return None
    match = _ZH_LIMIT.search(message)
    if match is not None:
        total, minutes, count = match.groups()
        return _limit(int(count), float(minutes) * 60.0, "total" if total else "success")
    scope = "total" if _EN_TOTAL.search(message) else "success"
    match = _EN_COUNT_FIRST.search(message)
    if match is not None:
        count, amount, unit = match.groups()
        return _limit(int(count), float(amount or 1) * _unit_seconds(unit), scope)
    match = _EN_WINDOW_FIRST.search(message)
    if match is not None:
        amount, unit, count = match.groups()
        return _limit(int(count), float(amount) * _unit_seconds(unit), scope)
    return None


def _limit(count: int, window: float, scope: str) -> StatedLimit | None:
    if count <= 0 or window <= 0:
        return None
    return StatedLimit(count=count, window=window, scope=scope)


def model_named(message: str) -> str | None:
    """The model a refusal names (``no access to model X``, ``无权访问模型 X``, ...)."""
    for pattern in _MODEL_PATTERNS:
        match = pattern.search(message or "")
        if match is not None:
            return match.group(1)
    return None


def channel_named(message: str) -> tuple[str | None, str | None]:
    """``(model, group)`` of a "no channel" answer, as far as its text names them."""
    text = message or ""
    zh = _CHANNEL_PATTERNS[0].search(text)
    if zh is not None:
        return zh.group(2), zh.group(1)
    en = _CHANNEL_PATTERNS[1].search(text)
    if en is not None:
        return en.group(1), en.group(2)
    return model_named(text), None


def error_from_mapping(data: Mapping[str, object]) -> str:
    """Pick the human message out of an error body: ``msg``, ``error.message``, ``message``."""
    for key in ("msg",):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    error = data.get("error")
    if isinstance(error, Mapping):
        value = error.get("message")
        if isinstance(value, str) and value:
            return value
    elif isinstance(error, str) and error:
        return error
    value = data.get("message")
    if isinstance(value, str) and value:
        return value
    return ""
