"""The settings behind the gateway's preflight routes: display unit, USD prices, groups.

new-api publishes per-call prices in USD (``/api/pricing``'s ``model_price``) and charges
``model_price x group_ratio`` USD, shown in CNY as ``x usd_exchange_rate``
(``protocol.md``, "Preflight routes"). The simulator's own prices are in the site's
display unit (``display_currency``), so :func:`usd_price` derives the USD price that the
charge formula turns back into the simulator's price. :class:`PreflightSettings` names
the :class:`~batchgen.sim.config.SimConfig` fields this module reads (it cannot import
the config: the config imports it); :func:`check_preflight` validates them, and
:func:`add_preflight_options` / :func:`preflight_values` are their ``batchgen sim``
options.
"""

from __future__ import annotations

import argparse
import math
import typing
from typing import Literal, Protocol

from batchgen.sim.values import count, pair, positive, tracked

__all__ = [
    "DASHBOARD_WINDOW",
    "DEFAULT_GROUP_RATIOS",
    "HIDEABLE_ROUTES",
    "MAX_PRICE_FACTOR",
    "DisplayCurrency",
    "PreflightSettings",
    "add_preflight_options",
    "check_preflight",
    "default_group_ratios",
    "group_ratio",
    "preflight_values",
    "price_factor",
    "ratio",
    "usd_price",
]

DisplayCurrency = Literal["CNY", "USD"]

#: The routes ``hidden_routes`` may name (each then answers 404).
HIDEABLE_ROUTES: tuple[str, ...] = ("models", "subscription", "usage", "status", "pricing")
#: The window of the per-IP limit of ``/api/*`` and ``/v1/dashboard/billing/*``, seconds.
DASHBOARD_WINDOW = 180.0
#: The group ratios of a new site: one group, ``default``, at ratio 1.
DEFAULT_GROUP_RATIOS: dict[str, float] = {"default": 1.0}
#: The largest ``group_ratio x usd_exchange_rate`` (CNY display; the ratio alone in USD).
MAX_PRICE_FACTOR = 100.0
#: The published USD price keeps 12 decimals, so the charge formula gives back the
#: simulator's own price (to 1e-10): a client pricing by it estimates what is charged.
_PRICE_DECIMALS = 12


class PreflightSettings(Protocol):
    """The config fields the preflight routes read (all of them live on SimConfig)."""

    group: str
    display_currency: DisplayCurrency
    usd_exchange_rate: float
    quota_per_unit: int
    group_ratios: dict[str, float]
    hidden_routes: list[str]
    dashboard_limit: int
    billing_error: bool


def default_group_ratios() -> dict[str, float]:
    """A fresh copy of :data:`DEFAULT_GROUP_RATIOS`."""
    return dict(DEFAULT_GROUP_RATIOS)


def group_ratio(s: PreflightSettings) -> float:
    """The ratio of the key's ``group``: its entry in ``group_ratios``, else 1."""
    return s.group_ratios.get(s.group, 1.0)


def price_factor(s: PreflightSettings) -> float:
    """What a USD ``model_price`` is multiplied by to give the charge in the display unit:
    the group ratio, times ``usd_exchange_rate`` when the site displays CNY."""
    rate = s.usd_exchange_rate if s.display_currency == "CNY" else 1.0
    return group_ratio(s) * rate


def usd_price(price: float, s: PreflightSettings) -> float:
    """The ``model_price`` (USD, 12 decimals) that charges ``price`` (display unit)."""
    return round(price / price_factor(s), _PRICE_DECIMALS)


def check_preflight(s: PreflightSettings) -> None:
    """Raise ValueError naming the first preflight field whose value cannot work."""
    currencies = typing.get_args(DisplayCurrency)
    if s.display_currency not in currencies:
        raise ValueError(f"display_currency must be one of {', '.join(currencies)}")
    rate = s.usd_exchange_rate
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"usd_exchange_rate must be a finite number > 0, not {rate!r}")
    if s.quota_per_unit <= 0:
        raise ValueError(f"quota_per_unit must be > 0, not {s.quota_per_unit!r}")
    for group, value in s.group_ratios.items():
        if not (group and group.isascii() and group.isprintable()):
            raise ValueError(f"group_ratios: group must be printable ASCII, not {group!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"group_ratios: ratio of {group!r} must be > 0, not {value!r}")
    for route in s.hidden_routes:
        if route not in HIDEABLE_ROUTES:
            raise ValueError(f"hidden_routes: {route!r} is not one of {', '.join(HIDEABLE_ROUTES)}")
    if s.dashboard_limit < 0:
        raise ValueError(f"dashboard_limit must be >= 0, not {s.dashboard_limit!r}")
    if price_factor(s) > MAX_PRICE_FACTOR:
        raise ValueError(
            f"group ratio x usd_exchange_rate must be at most {MAX_PRICE_FACTOR:g} "
            "(USD prices of 6 decimals could not give back the charged prices)"
        )


# --- command line ------------------------------------------------------------------------


def ratio(text: str) -> tuple[str, float]:
    """``GROUP=RATIO`` with a finite ratio > 0."""
    group, value = pair(text)
    try:
        amount = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad ratio {value!r} for {group}") from None
    if not (math.isfinite(amount) and amount > 0):
        raise argparse.ArgumentTypeError(f"ratio of {group} must be > 0")
    return group, amount


def add_preflight_options(parser: argparse.ArgumentParser, d: PreflightSettings) -> None:
    """Add the options of the preflight routes to ``parser``, with ``d``'s defaults."""
    g = tracked(parser.add_argument_group("preflight routes").add_argument)
    g(
        "--display-currency",
        choices=typing.get_args(DisplayCurrency),
        default=d.display_currency,
        help="the site's display unit, that of prices, credits and quotas (%(default)s)",
    )
    g(
        "--usd-rate",
        dest="usd_exchange_rate",
        type=positive,
        default=d.usd_exchange_rate,
        metavar="RATE",
        help="CNY per USD, in /api/status and the USD prices of /api/pricing (%(default)s)",
    )
    g(
        "--quota-per-unit",
        type=count,
        default=d.quota_per_unit,
        metavar="N",
        help="quota units per USD that /api/status states (%(default)s)",
    )
    g(
        "--group-ratio",
        dest="group_ratios",
        action="append",
        type=ratio,
        default=[],
        metavar="GROUP=RATIO",
        help="price factor of a group (repeatable; default=1); --group is the key's",
    )
    g(
        "--hide",
        dest="hidden_routes",
        action="append",
        choices=HIDEABLE_ROUTES,
        default=[],
        metavar="ROUTE",
        help="answer 404 on a preflight route: " + ", ".join(HIDEABLE_ROUTES) + " (repeatable)",
    )
    g(
        "--dashboard-limit",
        type=count,
        default=d.dashboard_limit,
        metavar="N",
        help="requests per client IP per 180 s to /api/* and /v1/dashboard/billing/*, "
        "then a bare 429; 0 = off (%(default)s)",
    )
    g(
        "--billing-error",
        action="store_true",
        help='the billing routes answer HTTP 200 {"error": ...}',
    )


def preflight_values(ns: argparse.Namespace) -> dict[str, object]:
    """The preflight fields whose parsed form is not the field's: ``group_ratios``
    (the ``--group-ratio`` pairs over :data:`DEFAULT_GROUP_RATIOS`)."""
    return {"group_ratios": {**DEFAULT_GROUP_RATIOS, **dict(ns.group_ratios)}}
