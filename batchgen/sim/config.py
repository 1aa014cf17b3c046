"""The simulator's settings: one mutable dataclass, its command line, and live updates.

:class:`SimConfig` is read by the simulator at every request, so changing a field of a
running simulator's config (from Python, or with ``POST /_sim/config``) changes its
behaviour at once. :func:`configure_parser` and :func:`config_from_args` map the
``batchgen sim`` options onto the fields one to one; ``--profile gateway`` (and
:func:`gateway_profile`) starts from a preset "like the real service" that explicit
options then override. The checks of single values live in :mod:`.values`; the fields
of the preflight routes are checked, and get their options, in :mod:`.preflight`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim.preflight import (
    DisplayCurrency,
    add_preflight_options,
    check_preflight,
    default_group_ratios,
    preflight_values,
)
from batchgen.sim.values import (
    checked_changes,
    count,
    given,
    non_negative,
    pair,
    positive,
    price,
    probability,
    public_json,
    tracked,
)

__all__ = ["PROFILES", "SimConfig", "config_from_args", "configure_parser", "gateway_profile"]

StatusStyle = Literal["lower", "upper", "success"]
NotFoundStyle = Literal["404", "code-22"]
RetryAfterFormat = Literal["seconds", "date"]
Limiter = Literal["bucket", "gateway"]
Wire = Literal["sim", "gateway"]

_GATEWAY_FIELDS = ("gateway_limit", "gateway_window", "gateway_total", "gateway_polls")


def _default_prices() -> dict[str, float]:
    return dict(DEFAULT_PRICES)


@dataclass(slots=True)
class SimConfig:
    """Everything the simulator can be told; every field may change while it runs.

    Probabilities are in ``[0, 1]``; durations are seconds; money is in the account's
    currency. :meth:`validate` states the invariants; :meth:`update` applies a JSON
    object of changes atomically.
    """

    #: Interface ``batchgen sim`` binds (``running_simulator`` takes its own ``host``).
    host: str = "127.0.0.1"
    #: Port ``batchgen sim`` binds; 0 picks a free port.
    port: int = 8787
    #: API keys accepted in ``Authorization: Bearer``; removing one revokes it at once.
    keys: list[str] = field(default_factory=lambda: ["sk-sim"])
    #: Models every key is refused (403 ``token_model_forbidden``; gateway wire: code "").
    forbid: list[str] = field(default_factory=list)
    #: Models with no channel right now (503 ``model_not_found``).
    down: list[str] = field(default_factory=list)
    #: Models with a channel but no price (400 ``model_price_error``).
    unpriced: list[str] = field(default_factory=list)
    #: Keys refused as if called from outside their IP whitelist (403 ``access_denied``).
    ip_blocked: list[str] = field(default_factory=list)
    #: The user group the gateway wire's "no channel" message names.
    group: str = "default"
    #: Mean task duration; each task takes ``latency`` x uniform(0.75, 1.25), x1.25 at 2K
    #: and x1.5 at 4K.
    latency: float = 2.0
    #: Probability that an accepted task ends ``failed`` (and is refunded).
    fail_rate: float = 0.0
    #: Fraction of failures that are moderation (split evenly output/input); the rest
    #: are ``error``.
    moderation_share: float = 0.3
    #: Submissions per minute per key (token bucket refilled rpm/60 per second); 0 = no limit.
    rpm: float = 0.0
    #: Submission bucket capacity; ``None`` means max(1, rpm/60).
    burst: float | None = None
    #: Polls (``/draw/result``) per minute per key, a separate bucket; 0 = no limit.
    poll_rpm: float = 0.0
    #: Whether 429 answers carry ``Retry-After``.
    retry_after: bool = True
    #: ``seconds`` (integer, rounded up) or ``date`` (an HTTP date).
    retry_after_format: RetryAfterFormat = "seconds"
    #: Send this many seconds in ``Retry-After`` instead of the bucket's real wait.
    retry_after_value: float | None = None
    #: Answer 429s with an empty body instead of the error envelope.
    empty_429: bool = False
    #: ``bucket``: the ``rpm``/``burst``/``poll_rpm`` token buckets above. ``gateway``:
    #: new-api's limiter (the ``gateway_*`` fields, per account; no Retry-After ever),
    #: and the buckets do not apply.
    limiter: Limiter = "bucket"
    #: Gateway limiter: at most this many successful (status < 400) requests per
    #: account in any ``gateway_window``, a sliding log recorded when each answer ends;
    #: 0 = no success limit.
    gateway_limit: int = 60
    #: Gateway limiter: the window in seconds (the real gateway's are whole minutes).
    gateway_window: float = 60.0
    #: Gateway limiter: every attempt (failures too) takes a token of a bucket of this
    #: many that gives one back every ``gateway_window`` / N seconds; 0 = off.
    gateway_total: int = 0
    #: Gateway limiter: whether polls (``/draw/result``) are checked and recorded too.
    gateway_polls: bool = False
    #: Probability that a submission gets 429 ``rate_limit_exceeded`` ("upstream busy").
    busy_rate: float = 0.0
    #: Probability that a submission gets 500 or 502 ``upstream_error`` (not charged).
    error_rate: float = 0.0
    #: Probability that an accepted, charged submission loses its connection unanswered.
    drop_rate: float = 0.0
    #: Probability that a poll never answers (until the client gives up).
    poll_hang_rate: float = 0.0
    #: Probability that an image download declares its length, sends half, and drops.
    truncate_rate: float = 0.0
    #: Probability that an image download streams 64 MiB+ with no Content-Length.
    oversize_rate: float = 0.0
    #: Seconds after a task ends that its result URLs keep answering (then 404).
    url_ttl: float = 7200.0
    #: Factor applied to rendered image sides (at least 8 px a side).
    image_scale: float = 1.0
    #: Seed of the one random generator behind ids, jitter and every fault draw
    #: (``POST /_sim/config`` with a new seed reseeds it).
    seed: int = 0
    #: Price per image by model; a model without a price is unknown (503).
    prices: dict[str, float] = field(default_factory=_default_prices)
    #: Starting balance of each key (and playground user).
    credits: float = 5000.0
    #: Each key's own spending cap (charges minus refunds); None = unlimited.
    token_quota: float | None = None
    #: Answer ``replyType: async`` inside ``{"code", "msg", "data"}`` instead of flat.
    wrap_async: bool = False
    #: Put one ``url`` on the result instead of a ``results`` list.
    single_url: bool = False
    #: Status spelling: ``lower`` (succeeded), ``upper`` (SUCCEEDED), ``success``.
    status_style: StatusStyle = "lower"
    #: Unknown task ids: ``404`` (HTTP 404 ``task_not_found``) or ``code-22`` (HTTP 200).
    not_found_style: NotFoundStyle = "404"
    #: Append ``data: [DONE]`` to task progress streams.
    sse_done: bool = True
    #: Format of result URLs with ``{origin}`` and ``{file}``; ``None`` = ``{origin}/files/{file}``.
    result_url_template: str | None = None
    #: Playground sessions: cookie ``session=<key>`` value -> the user id it logs in.
    sessions: dict[str, str] = field(default_factory=lambda: {"sim-session": "1"})
    #: Error bodies and ids: ``sim`` (the seed's codes, bilingual messages) or
    #: ``gateway`` (new-api's codes, English or Accept-Language Chinese messages ending
    #: in the request id, its request-id format and ``X-New-Api-Version``).
    wire: Wire = "sim"
    #: ``X-New-Api-Version`` of the gateway wire (and ``version`` in ``/api/status``).
    api_version: str = "v0.10.4"
    #: The site's display unit (``quota_display_type``): ``prices``, ``credits`` and
    #: ``token_quota`` are in it.
    display_currency: DisplayCurrency = "CNY"
    #: CNY per USD (``/api/status``); ``/api/pricing``'s USD prices are derived with it.
    usd_exchange_rate: float = 7.3
    #: Quota units per USD, as ``/api/status`` states it.
    quota_per_unit: int = 500000
    #: Price factor per user group; the key's ``group``, if not in it, has ratio 1.
    group_ratios: dict[str, float] = field(default_factory=default_group_ratios)
    #: Preflight routes answering 404: models, subscription, usage, status, pricing.
    hidden_routes: list[str] = field(default_factory=list)
    #: Requests per client IP per 180 s to ``/api/*`` and ``/v1/dashboard/billing/*``
    #: (a sliding count; past it a bare 429); 0 = off.
    dashboard_limit: int = 0
    #: The billing routes answer HTTP 200 ``{"error": {...}}`` (their handler failed).
    billing_error: bool = False

    def effective_burst(self) -> float:
        """The submission bucket's capacity: ``burst`` or max(1, rpm/60)."""
        return self.burst if self.burst is not None else max(1.0, self.rpm / 60.0)

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work."""
        for name in (
            "fail_rate",
            "moderation_share",
            "busy_rate",
            "error_rate",
            "drop_rate",
            "poll_hang_rate",
            "truncate_rate",
            "oversize_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        for name in ("latency", "rpm", "poll_rpm", "url_ttl", "credits"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.burst is not None and not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be >= 1, not {self.burst!r}")
        for name in ("gateway_limit", "gateway_total"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if not (math.isfinite(self.gateway_window) and self.gateway_window > 0):
            raise ValueError(f"gateway_window must be > 0, not {self.gateway_window!r}")
        quota = self.token_quota
        if quota is not None and not (math.isfinite(quota) and quota >= 0):
            raise ValueError(f"token_quota must be a finite number >= 0, not {quota!r}")
        for name in ("group", "api_version"):
            text = getattr(self, name)
            if not (text and text.isascii() and text.isprintable()):
                raise ValueError(f"{name} must be printable ASCII, not {text!r}")
        if self.retry_after_value is not None and not self.retry_after_value >= 0:
            raise ValueError("retry_after_value must be >= 0")
        if not (math.isfinite(self.image_scale) and 0 < self.image_scale <= 4):
            raise ValueError(f"image_scale must be in (0, 4], not {self.image_scale!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port!r}")
        for model, amount in self.prices.items():
            if not (math.isfinite(amount) and amount >= 0):
                raise ValueError(f"price of {model!r} must be >= 0, not {amount!r}")
        for name, allowed in (
            ("status_style", typing.get_args(StatusStyle)),
            ("not_found_style", typing.get_args(NotFoundStyle)),
            ("retry_after_format", typing.get_args(RetryAfterFormat)),
            ("limiter", typing.get_args(Limiter)),
            ("wire", typing.get_args(Wire)),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.result_url_template is not None:
            try:
                self.result_url_template.format(origin="http://h", file="f.png")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"result_url_template is not usable: {exc}") from exc
        check_preflight(self)

    def update(self, changes: Mapping[str, object]) -> None:
        """Apply ``changes`` (field name -> JSON value) all at once, or none of them.

        Raises ValueError for an unknown field, a value of the wrong type, or a result
        that fails :meth:`validate`; the config is then unchanged.
        """
        candidate = dataclasses.replace(self, **checked_changes(SimConfig, changes))
        candidate.validate()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(candidate, f.name))

    def to_json(self) -> dict[str, object]:
        """The config as a JSON object, with API keys masked (``sk-***`` + last 4), in
        ``keys`` and ``ip_blocked``, and session cookies cut to their last 4 characters."""
        return public_json({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def summary(self) -> str:
        """One line naming the active limiter, limits, faults and protocol variants."""
        default = SimConfig()
        parts = [f"latency={self.latency:g}s", f"seed={self.seed}", self.limiter_summary()]
        skip = {"host", "port", "keys", "latency", "seed", "sessions", "prices", "limiter"}
        skip.add("ip_blocked")  # keys: counted below, never shown
        skip.update(_GATEWAY_FIELDS)
        if self.limiter == "gateway":
            skip.update(("rpm", "burst", "poll_rpm"))
        for f in dataclasses.fields(self):
            if f.name in skip:
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                parts.append(f"{f.name}={value}")
        if self.prices != default.prices:
            parts.append(f"prices={len(self.prices)} models")
        if self.ip_blocked:
            parts.append(f"ip_blocked={len(self.ip_blocked)} keys")
        parts.append(f"keys={len(self.keys)}")
        return "sim: " + " ".join(parts)

    def limiter_summary(self) -> str:
        """``limiter=bucket``, or e.g. ``limiter=gateway(60/60s,total=100,polls=free)``."""
        if self.limiter == "bucket":
            return "limiter=bucket"
        parts = [f"{self.gateway_limit or 'unlimited'}/{self.gateway_window:g}s"]
        if self.gateway_total:
            parts.append(f"total={self.gateway_total}")
        parts.append("polls=counted" if self.gateway_polls else "polls=free")
        return f"limiter=gateway({','.join(parts)})"


#: The presets of ``batchgen sim --profile``: field values that options given override.
PROFILES: dict[str, dict[str, object]] = {
    "gateway": {
        "limiter": "gateway",
        "gateway_limit": 60,
        "gateway_window": 60.0,
        "wire": "gateway",
        "retry_after": False,
        "dashboard_limit": 180,
    },
}


def gateway_profile(**overrides: Any) -> SimConfig:
    """A config "like the real service": new-api's limiter (60 successes a minute per
    account, polls free) and error bodies, no Retry-After, 180 preflight requests per
    180 s per IP; ``overrides`` win.

    Raises ValueError (or TypeError for an unknown field) like :class:`SimConfig`.
    """
    config = dataclasses.replace(SimConfig(), **{**PROFILES["gateway"], **overrides})
    config.validate()
    return config


# --- command line ------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add every ``batchgen sim`` option to ``parser``; each dest is a SimConfig field,
    but ``--profile``'s (a preset of :data:`PROFILES` the other options override)."""
    d = SimConfig()
    prob, secs = probability, non_negative
    g = tracked(parser.add_argument_group("server").add_argument)
    g(
        "--profile",
        choices=sorted(PROFILES),
        help="start from a preset: gateway = like the real service (new-api's limiter, "
        "60 a minute, its error bodies, no Retry-After); other options override it",
    )
    g("--host", default=d.host, help="interface to bind (%(default)s)")
    g("--port", type=int, default=d.port, help="port; 0 picks a free one (%(default)s)")
    g("--seed", type=int, default=d.seed, help="seed of all randomness (%(default)s)")
    g = tracked(parser.add_argument_group("accounts and models").add_argument)
    g("--key", dest="keys", action="append", metavar="KEY", help="API key (repeatable; sk-sim)")
    g("--forbid", action="append", default=[], metavar="MODEL", help="403 for MODEL")
    g("--down", action="append", default=[], metavar="MODEL", help="503 for MODEL")
    g("--unpriced", action="append", default=[], metavar="MODEL", help="400 for MODEL")
    g("--ip-blocked", action="append", default=[], metavar="KEY", help="403 for KEY (IP list)")
    g("--group", default=d.group, metavar="NAME", help="group in no-channel messages (default)")
    g(
        "--price",
        dest="prices",
        action="append",
        type=price,
        default=[],
        metavar="MODEL=AMOUNT",
        help="set or add a price per image (repeatable)",
    )
    g("--credits", type=secs, default=d.credits, help="balance per key (%(default)s)")
    g("--token-quota", type=secs, metavar="AMOUNT", help="spending cap per key (unlimited)")
    g(
        "--session",
        dest="sessions",
        action="append",
        type=pair,
        metavar="COOKIE=USERID",
        help="playground session (repeatable; sim-session=1)",
    )
    g = tracked(parser.add_argument_group("timing and limits").add_argument)
    g(
        "--latency",
        type=secs,
        default=d.latency,
        metavar="SECONDS",
        help="mean task duration (%(default)s; x1.25 at 2K, x1.5 at 4K)",
    )
    g("--rpm", type=secs, default=d.rpm, help="submissions/minute per key; 0 = no limit")
    g("--burst", type=float, default=None, help="submission burst (max(1, rpm/60))")
    g("--poll-rpm", type=secs, default=d.poll_rpm, help="polls/minute per key; 0 = no limit")
    g(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=d.retry_after,
        help="send Retry-After on 429s (on)",
    )
    g(
        "--retry-after-format",
        choices=typing.get_args(RetryAfterFormat),
        default="seconds",
        help="integer seconds or an HTTP date",
    )
    g("--retry-after-value", type=secs, metavar="SECONDS", help="force this Retry-After")
    g("--empty-429", action="store_true", help="429 answers have an empty body")
    g(
        "--limiter",
        choices=typing.get_args(Limiter),
        default=d.limiter,
        help="bucket: --rpm/--burst/--poll-rpm; gateway: new-api's (%(default)s)",
    )
    g(
        "--gateway-limit",
        type=count,
        default=d.gateway_limit,
        metavar="N",
        help="gateway: successes per window per account; 0 = none (%(default)s)",
    )
    g(
        "--gateway-window",
        type=positive,
        default=d.gateway_window,
        metavar="SECONDS",
        help="gateway: the window (%(default)s)",
    )
    g(
        "--gateway-total",
        type=count,
        default=d.gateway_total,
        metavar="N",
        help="gateway: attempts per window, failures too; 0 = off (%(default)s)",
    )
    g(
        "--gateway-polls",
        action=argparse.BooleanOptionalAction,
        default=d.gateway_polls,
        help="gateway: polls count in the same limits (off)",
    )
    g(
        "--url-ttl",
        type=secs,
        default=d.url_ttl,
        metavar="SECONDS",
        help="result URLs answer 404 this long after the task ends (%(default)s)",
    )
    g = tracked(parser.add_argument_group("faults (probabilities)").add_argument)
    g("--fail-rate", type=prob, default=0.0, metavar="P", help="tasks that end failed")
    g(
        "--moderation-share",
        type=prob,
        default=d.moderation_share,
        metavar="F",
        help="share of failures that are moderation (%(default)s)",
    )
    g("--busy-rate", type=prob, default=0.0, metavar="P", help="random 429 on submissions")
    g("--error-rate", type=prob, default=0.0, metavar="P", help="500/502 on submissions")
    g("--drop-rate", type=prob, default=0.0, metavar="P", help="charged, then connection lost")
    g("--poll-hang-rate", type=prob, default=0.0, metavar="P", help="polls never answered")
    g("--truncate-rate", type=prob, default=0.0, metavar="P", help="downloads cut at half")
    g("--oversize-rate", type=prob, default=0.0, metavar="P", help="64 MiB+ downloads")
    g = tracked(parser.add_argument_group("images and protocol variants").add_argument)
    g("--image-scale", type=float, default=d.image_scale, metavar="F", help="image size factor")
    g("--wrap-async", action="store_true", help="wrap async answers in {code,msg,data}")
    g("--single-url", action="store_true", help="one data.url instead of results[]")
    g(
        "--status-style",
        choices=typing.get_args(StatusStyle),
        default=d.status_style,
        help="succeeded, SUCCEEDED or success (%(default)s)",
    )
    g(
        "--not-found-style",
        choices=typing.get_args(NotFoundStyle),
        default=d.not_found_style,
        help="unknown ids: HTTP 404 or HTTP 200 code -22 (%(default)s)",
    )
    g(
        "--sse-done",
        action=argparse.BooleanOptionalAction,
        default=d.sse_done,
        help="end task streams with data: [DONE] (on)",
    )
    g("--result-url-template", metavar="T", help="result URLs from {origin} and {file}")
    g(
        "--wire",
        choices=typing.get_args(Wire),
        default=d.wire,
        help="error bodies: the seed's codes (sim) or new-api's (gateway) (%(default)s)",
    )
    g("--api-version", default=d.api_version, metavar="V", help="X-New-Api-Version (v0.10.4)")
    add_preflight_options(parser, d)


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """Build the :class:`SimConfig` the parsed options describe.

    With ``--profile``, the preset's values apply to every field whose option was not
    given. Raises ValueError when the options combine into an unusable config.
    """
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(SimConfig)}
    profile = getattr(ns, "profile", None)
    if profile is not None:
        explicit = given(ns)
        values.update({k: v for k, v in PROFILES[profile].items() if k not in explicit})
    values["keys"] = list(ns.keys) if ns.keys else ["sk-sim"]
    values["prices"] = {**DEFAULT_PRICES, **dict(ns.prices)}
    values["sessions"] = dict(ns.sessions) if ns.sessions else {"sim-session": "1"}
    values.update(preflight_values(ns))
    config = SimConfig(**values)
    config.validate()
    return config
