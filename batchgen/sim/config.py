"""The simulator's settings: one mutable dataclass, its command line, and live updates.

:class:`SimConfig` is read by the simulator at every request, so changing a field of a
running simulator's config (from Python, or with ``POST /_sim/config``) changes its
behaviour at once. :func:`configure_parser` and :func:`config_from_args` map the
``batchgen sim`` options onto the fields one to one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchgen.api.catalog import DEFAULT_PRICES

__all__ = ["SimConfig", "config_from_args", "configure_parser"]

StatusStyle = Literal["lower", "upper", "success"]
NotFoundStyle = Literal["404", "code-22"]
RetryAfterFormat = Literal["seconds", "date"]


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
    #: Models every key is refused (403 ``token_model_forbidden``).
    forbid: list[str] = field(default_factory=list)
    #: Models with no channel right now (503 ``model_not_found``).
    down: list[str] = field(default_factory=list)
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
        if self.retry_after_value is not None and not self.retry_after_value >= 0:
            raise ValueError("retry_after_value must be >= 0")
        if not (math.isfinite(self.image_scale) and 0 < self.image_scale <= 4):
            raise ValueError(f"image_scale must be in (0, 4], not {self.image_scale!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port!r}")
        for model, price in self.prices.items():
            if not (math.isfinite(price) and price >= 0):
                raise ValueError(f"price of {model!r} must be >= 0, not {price!r}")
        for name, allowed in (
            ("status_style", typing.get_args(StatusStyle)),
            ("not_found_style", typing.get_args(NotFoundStyle)),
            ("retry_after_format", typing.get_args(RetryAfterFormat)),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.result_url_template is not None:
            try:
                self.result_url_template.format(origin="http://h", file="f.png")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"result_url_template is not usable: {exc}") from exc

    def update(self, changes: Mapping[str, object]) -> None:
        """Apply ``changes`` (field name -> JSON value) all at once, or none of them.

        Raises ValueError for an unknown field, a value of the wrong type, or a result
        that fails :meth:`validate`; the config is then unchanged.
        """
        hints = typing.get_type_hints(SimConfig)
        unknown = sorted(set(changes) - set(hints))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        candidate = dataclasses.replace(self)
        for name, value in changes.items():
            setattr(candidate, name, _coerce(name, hints[name], value))
        candidate.validate()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(candidate, f.name))

    def to_json(self) -> dict[str, object]:
        """The config as a JSON object, with API keys masked (``sk-***`` + last 4)."""
        data: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            data[f.name] = value
        data["keys"] = [mask_key(k) for k in self.keys]
        # Session cookies are credentials too.
        data["sessions"] = {"***" + s[-4:]: user for s, user in self.sessions.items()}
        return data

    def summary(self) -> str:
        """One line naming the active limits, faults and protocol variants."""
        default = SimConfig()
        parts = [f"latency={self.latency:g}s", f"seed={self.seed}"]
        for f in dataclasses.fields(self):
            if f.name in ("host", "port", "keys", "latency", "seed", "sessions", "prices"):
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                parts.append(f"{f.name}={value}")
        if self.prices != default.prices:
            parts.append(f"prices={len(self.prices)} models")
        parts.append(f"keys={len(self.keys)}")
        return "sim: " + " ".join(parts)


def mask_key(key: str) -> str:
    """``sk-***`` plus the last 4 characters, or just ``sk-***`` for a short key."""
    return "sk-***" + key[-4:] if len(key) >= 12 else "sk-***"


def _coerce(name: str, hint: object, value: object) -> object:
    """Check that the JSON ``value`` fits the field type ``hint``; return it converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, inner, value)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be an object")
        return {str(k): _coerce(f"{name}.{k}", args[1], v) for k, v in value.items()}
    raise ValueError(f"{name} cannot be changed")  # pragma: no cover - every field is handled


# --- command line ------------------------------------------------------------------------


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _price(text: str) -> tuple[str, float]:
    model, value = _pair(text)
    try:
        amount = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad price {value!r} for {model}") from None
    if not (math.isfinite(amount) and amount >= 0):
        raise argparse.ArgumentTypeError(f"price of {model} must be >= 0")
    return model, amount


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add every ``batchgen sim`` option to ``parser``; each dest is a SimConfig field."""
    d = SimConfig()
    prob, secs = _probability, _non_negative
    g = parser.add_argument_group("server").add_argument
    g("--host", default=d.host, help="interface to bind (%(default)s)")
    g("--port", type=int, default=d.port, help="port; 0 picks a free one (%(default)s)")
    g("--seed", type=int, default=d.seed, help="seed of all randomness (%(default)s)")
    g = parser.add_argument_group("accounts and models").add_argument
    g("--key", dest="keys", action="append", metavar="KEY", help="API key (repeatable; sk-sim)")
    g("--forbid", action="append", default=[], metavar="MODEL", help="403 for MODEL")
    g("--down", action="append", default=[], metavar="MODEL", help="503 for MODEL")
    g(
        "--price",
        dest="prices",
        action="append",
        type=_price,
        default=[],
        metavar="MODEL=AMOUNT",
        help="set or add a price per image (repeatable)",
    )
    g("--credits", type=secs, default=d.credits, help="balance per key (%(default)s)")
    g(
        "--session",
        dest="sessions",
        action="append",
        type=_pair,
        metavar="COOKIE=USERID",
        help="playground session (repeatable; sim-session=1)",
    )
    g = parser.add_argument_group("timing and limits").add_argument
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
        "--url-ttl",
        type=secs,
        default=d.url_ttl,
        metavar="SECONDS",
        help="result URLs answer 404 this long after the task ends (%(default)s)",
    )
    g = parser.add_argument_group("faults (probabilities)").add_argument
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
    g = parser.add_argument_group("images and protocol variants").add_argument
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


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """Build the :class:`SimConfig` the parsed options describe.

    Raises ValueError when the options combine into an unusable config.
    """
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(SimConfig)}
    values["keys"] = list(ns.keys) if ns.keys else ["sk-sim"]
    values["prices"] = {**DEFAULT_PRICES, **dict(ns.prices)}
    values["sessions"] = dict(ns.sessions) if ns.sessions else {"sim-session": "1"}
    config = SimConfig(**values)
    config.validate()
    return config
