"""The gateway's preflight answers: models for this key, its quota and usage, live prices.

new-api answers these to an ordinary ``sk-`` key (protocol.md, "Preflight routes"):

- ``GET /v1/models``: exactly the models the key may use;
- ``GET /v1/dashboard/billing/subscription``: ``hard_limit_usd`` = the key's used plus
  remaining quota, in the site's display unit (despite the name), or ``100000000`` for
  a key without a quota of its own;
- ``GET /v1/dashboard/billing/usage``: ``total_usage`` = 100 x what the key has used,
  in the same unit; its change across a run is what the service charged;
- ``GET /api/status``: the display unit and the USD exchange rate;
- ``GET /api/pricing``: each model's ``model_price`` (USD per call) and the group
  ratios; one call costs ``model_price x group_ratio`` USD, shown in CNY times the rate.

The billing routes report their own errors as HTTP 200 with ``{"error": {...}}``: those
raise :class:`~batchgen.errors.BusinessError` here like any other refusal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from batchgen.api.messages import error_from_mapping
from batchgen.errors import BusinessError, ResponseFormatError

__all__ = [
    "UNLIMITED_QUOTA",
    "ModelPrice",
    "Pricing",
    "SiteStatus",
    "Subscription",
    "Usage",
    "parse_models",
    "parse_pricing",
    "parse_status",
    "parse_subscription",
    "parse_usage",
]

#: What the subscription route reports for a key without a quota of its own.
UNLIMITED_QUOTA: Final = 100_000_000.0


@dataclass(frozen=True, slots=True)
class Subscription:
    """The key's quota: used plus remaining, in the site's display unit."""

    hard_limit: float

    @property
    def unlimited(self) -> bool:
        """A key with no quota of its own (the account's balance is what limits it)."""
        return self.hard_limit >= UNLIMITED_QUOTA


@dataclass(frozen=True, slots=True)
class Usage:
    """What the key has used so far, in the site's display unit."""

    used: float


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """How the site shows money: its display unit and the USD exchange rate."""

    display: str  # CNY, USD, or TOKENS (raw quota: quota_per_unit of it make a dollar)
    usd_exchange_rate: float
    quota_per_unit: float
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model of the price list; ``per_call`` when it costs a fixed price per call."""

    model: str
    per_call: bool
    model_price: float  # USD per call
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pricing:
    """The site's price list and its group ratios."""

    models: Mapping[str, ModelPrice]
    group_ratio: Mapping[str, float] = field(default_factory=dict)


def _mapping(body: object, route: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ResponseFormatError(f"expected a JSON object, got {type(body).__name__}", route=route)
    error = body.get("error")
    if isinstance(error, Mapping):  # the billing routes' errors come with HTTP 200
        code = error.get("code")
        raise BusinessError(
            error_from_mapping(body) or "the service reported an error",
            status=200,
            code=str(code) if code else None,
            route=route,
        )
    if body.get("success") is False:
        raise BusinessError(error_from_mapping(body) or "refused", status=200, route=route)
    return body


def _number(value: object, what: str, route: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ResponseFormatError(f"{what} is not a number: {value!r}", route=route)
    return float(value)


def parse_models(body: object, *, route: str) -> frozenset[str]:
    """``/v1/models``: the ids of the models the key may use."""
    data = _mapping(body, route).get("data")
    if not isinstance(data, list):
        raise ResponseFormatError("no model list in the answer", route=route)
    ids = {str(item["id"]) for item in data if isinstance(item, Mapping) and item.get("id")}
    return frozenset(ids)


def parse_subscription(body: object, *, route: str) -> Subscription:
    """``/v1/dashboard/billing/subscription``."""
    data = _mapping(body, route)
    value = data.get("hard_limit_usd", data.get("soft_limit_usd"))
    return Subscription(hard_limit=_number(value, "hard_limit_usd", route))


def parse_usage(body: object, *, route: str) -> Usage:
    """``/v1/dashboard/billing/usage``: ``total_usage`` is 100 x the amount used."""
    data = _mapping(body, route)
    return Usage(used=_number(data.get("total_usage"), "total_usage", route) / 100.0)


def parse_status(body: object, *, route: str) -> SiteStatus:
    """``/api/status``: the display unit (``quota_display_type``) and the rate."""
    data = _mapping(body, route).get("data")
    if not isinstance(data, Mapping):
        raise ResponseFormatError("no data in the answer", route=route)
    # quota_display_type (USD, CNY, TOKENS) is the newer field; before it, amounts were
    # dollars when display_in_currency was set and raw quota units otherwise.
    display = str(data.get("quota_display_type") or "")
    if not display:
        display = "USD" if data.get("display_in_currency", True) else "TOKENS"
    rate = _number(data.get("usd_exchange_rate", 1.0), "usd_exchange_rate", route)
    per_unit = _number(data.get("quota_per_unit", 500000), "quota_per_unit", route)
    version = data.get("version")
    return SiteStatus(
        display=display.upper(),
        usd_exchange_rate=rate,
        quota_per_unit=per_unit,
        version=str(version) if version else None,
    )


def parse_pricing(body: object, *, route: str) -> Pricing:
    """``/api/pricing``: every model's price (``quota_type`` 1 = per call, in USD)."""
    outer = _mapping(body, route)
    data = outer.get("data")
    if not isinstance(data, list):
        raise ResponseFormatError("no price list in the answer", route=route)
    models: dict[str, ModelPrice] = {}
    for item in data:
        if not isinstance(item, Mapping) or not item.get("model_name"):
            continue
        name = str(item["model_name"])
        price = item.get("model_price", 0)
        groups = item.get("enable_groups") or ()
        models[name] = ModelPrice(
            model=name,
            per_call=item.get("quota_type") == 1,
            model_price=_number(price, f"model_price of {name}", route),
            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        )
    ratios: dict[str, float] = {}
    raw = outer.get("group_ratio")
    if isinstance(raw, Mapping):
        for group, ratio in raw.items():
            if isinstance(ratio, int | float) and not isinstance(ratio, bool):
                ratios[str(group)] = float(ratio)
    return Pricing(models=models, group_ratio=ratios)
