"""Checking the simulator's settings: JSON values, option values, options given.

:func:`coerce` checks a JSON value against a :class:`~batchgen.sim.config.SimConfig`
field's type, and :func:`checked_changes` a JSON object of changes against all of them
(for ``update`` and ``POST /_sim/config``); the ``argparse`` types
(:func:`pair`, :func:`price`, :func:`probability`, :func:`non_negative`, :func:`count`,
:func:`positive`) check ``batchgen sim`` options; :func:`public_json` is a config's JSON
form with its secrets masked; :func:`tracked` makes options remember
that they were given, so that :func:`given` can tell a ``--profile`` which of its
values the command line overrides (even with a value equal to the default).
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "checked_changes",
    "coerce",
    "count",
    "given",
    "mask_key",
    "non_negative",
    "pair",
    "positive",
    "price",
    "probability",
    "public_json",
    "tracked",
]

_GIVEN = "_sim_options_given"


def mask_key(key: str) -> str:
    """``sk-***`` plus the last 4 characters, or just ``sk-***`` for a short key."""
    return "sk-***" + key[-4:] if len(key) >= 12 else "sk-***"


def public_json(fields: dict[str, object]) -> dict[str, object]:
    """A config's fields (name -> value) as JSON: lists and dicts copied, the API keys of
    ``keys`` and ``ip_blocked`` masked, session cookies cut to their last 4 characters."""
    data: dict[str, object] = {}
    for name, value in fields.items():
        if isinstance(value, list):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        data[name] = value
    for name in ("keys", "ip_blocked"):
        data[name] = [mask_key(k) for k in typing.cast(list[str], fields[name])]
    sessions = typing.cast(dict[str, str], fields["sessions"])
    data["sessions"] = {"***" + s[-4:]: user for s, user in sessions.items()}
    return data


def checked_changes(cls: type, changes: Mapping[str, object]) -> dict[str, Any]:
    """``changes`` (field name -> JSON value) converted to the field types of the
    dataclass ``cls``; raises ValueError for an unknown field or a value of a wrong type."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(changes) - set(hints))
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    return {name: coerce(name, hints[name], value) for name, value in changes.items()}


def coerce(name: str, hint: object, value: object) -> object:
    """Check that the JSON ``value`` fits the field type ``hint``; return it converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(name, inner, value)
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
        return {str(k): coerce(f"{name}.{k}", args[1], v) for k, v in value.items()}
    raise ValueError(f"{name} cannot be changed")  # pragma: no cover - every field is handled


# --- option values -----------------------------------------------------------------------


def pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as a pair; both parts must be non-empty."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def price(text: str) -> tuple[str, float]:
    """``MODEL=AMOUNT`` with a finite amount >= 0."""
    model, value = pair(text)
    try:
        amount = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad price {value!r} for {model}") from None
    if not (math.isfinite(amount) and amount >= 0):
        raise argparse.ArgumentTypeError(f"price of {model} must be >= 0")
    return model, amount


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text}")
    return value


def positive(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0: {text}")
    return value


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


# --- options given -----------------------------------------------------------------------


class _Given(argparse.Action):
    """Mixed into an option's own action: also note its dest as given in the namespace."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        seen: set[str] | None = getattr(namespace, _GIVEN, None)
        if seen is None:
            seen = set()
            setattr(namespace, _GIVEN, seen)
        seen.add(self.dest)


_TRACKED: dict[type[argparse.Action], type[argparse.Action]] = {}


def tracked(
    add: Callable[..., argparse.Action],
) -> Callable[..., argparse.Action]:
    """Wrap an ``add_argument``: each option it adds records, when given, its dest."""

    def add_tracked(*flags: str, **kwargs: Any) -> argparse.Action:
        action = add(*flags, **kwargs)
        kind = type(action)
        sub = _TRACKED.get(kind)
        if sub is None:
            sub = _TRACKED[kind] = type(f"Given{kind.__name__}", (_Given, kind), {})
        action.__class__ = sub
        return action

    return add_tracked


def given(ns: argparse.Namespace) -> frozenset[str]:
    """The dests of the tracked options given on the command line that made ``ns``."""
    return frozenset(getattr(ns, _GIVEN, ()))
