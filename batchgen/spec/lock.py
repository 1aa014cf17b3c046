"""Generated axes and their lockfile: values a chat model wrote, frozen beside the spec.

An axis written as ``{generate: {model, count, instruction}}`` gets its values from a
chat model, once: ``batchgen lock`` (or the first ``run``) asks for them and writes them,
with their provenance, to ``<spec stem>.lock.yaml`` beside the spec, meant to be
committed. From then on the loader reads the values from the lock and nothing asks the
chat model again, so plans, keys and runs are reproducible from git.

This module owns the shape of a generated axis in the spec (:class:`GenerateModel`), the
lockfile format (reading, checking and writing it; no network), and what the loader
makes of an axis and its lock: :func:`resolve_generated` gives the axis values and a
:class:`GeneratedAxis` whose ``state`` says ``locked``, ``missing`` (no values yet) or
``stale`` (the spec now asks with another model, instruction or count than the lock
was made with; nothing regenerates silently). Generating the values is the runner's
(:mod:`batchgen.runner.generate`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from batchgen.errors import SpecError, SpecIssue
from batchgen.output.tree import write_atomic
from batchgen.spec.sources import Where
from batchgen.spec.yamlsrc import YamlDocument, load_yaml_file

__all__ = [
    "LOCK_VERSION",
    "GenerateModel",
    "GeneratedAxis",
    "GeneratedAxisModel",
    "LockedAxis",
    "Lockfile",
    "asked_digest",
    "dump_lock",
    "lock_path",
    "read_lock",
    "resolve_generated",
    "unlocked_issues",
    "write_lock",
]

LOCK_VERSION: Final = 1
#: The most values one generated axis may ask for.
MAX_COUNT: Final = 10_000
#: States of a generated axis (see the module docstring).
LOCKED, MISSING, STALE = "locked", "missing", "stale"

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class GenerateModel(BaseModel):
    """Values a chat model writes once; ``batchgen lock`` freezes them in the lockfile."""

    model_config = _STRICT

    model: StrictStr = Field(
        min_length=1,
        description="The chat model that writes the values (e.g. gemini-3.1-pro-preview).",
    )
    count: StrictInt = Field(ge=1, le=MAX_COUNT, description="How many distinct values to get.")
    instruction: StrictStr = Field(
        min_length=1,
        description="What to write, e.g. 'Distinct everyday objects a product photographer "
        "would shoot, one per line'.",
    )


class GeneratedAxisModel(BaseModel):
    """An axis whose values a chat model writes, frozen in ``<spec>.lock.yaml``."""

    model_config = _STRICT

    generate: GenerateModel = Field(description="The chat model, how many values, and what to ask.")


def asked_digest(model: str, instruction: str, count: int) -> str:
    """The digest of what an axis's values were asked with: a lock made with another
    model, instruction or count is stale."""
    text = json.dumps([model, instruction, count], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def lock_path(spec_path: Path, *, simulated: bool = False) -> Path:
    """``<stem>.lock.yaml`` beside the spec; ``<stem>.sim.lock.yaml`` for the simulator,
    whose made-up values must never stand in for a real model's."""
    stem = spec_path.name.rsplit(".", 1)[0] if "." in spec_path.name else spec_path.name
    return spec_path.with_name(f"{stem}{'.sim' if simulated else ''}.lock.yaml")


@dataclass(frozen=True, slots=True)
class LockedAxis:
    """One axis of a lockfile: the values and how they were made."""

    name: str
    model: str
    instruction: str
    count: int
    asked: str  # asked_digest(model, instruction, count) when the values were made
    values: tuple[str, ...]
    generated_at: str = ""
    requests: int = 0
    request_ids: tuple[str, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    currency: str = ""
    cost_source: str = ""  # usage (tokens the answers stated), estimate, or none
    wheres: tuple[Where, ...] = field(default=(), compare=False)  # of each value

    def as_yaml(self) -> dict[str, Any]:
        """The axis as the lockfile writes it."""
        tokens = {"prompt": self.prompt_tokens, "completion": self.completion_tokens}
        return {
            "model": _Quoted(self.model),
            "instruction": _Quoted(self.instruction),
            "count": self.count,
            "asked": self.asked,
            "generated_at": self.generated_at,
            "requests": self.requests,
            "request_ids": [_Quoted(r) for r in self.request_ids],
            "tokens": tokens,
            "cost": None if self.cost is None else round(self.cost, 6),
            "currency": self.currency,
            "cost_source": self.cost_source,
            "values": [_Quoted(v) for v in self.values],
        }


@dataclass(frozen=True, slots=True)
class Lockfile:
    """A lockfile as read: its axes by name, and a digest of their values."""

    path: Path
    display: str
    axes: Mapping[str, LockedAxis]

    def values_digest(self, name: str) -> str:
        """A digest of one axis's values (part of the spec's digest)."""
        values = list(self.axes[name].values)
        return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class GeneratedAxis:
    """What the spec knows of a generated axis: what it asks, and its lock's state."""

    name: str
    model: str
    instruction: str
    count: int
    asked: str
    state: str  # locked, missing or stale
    where: Where  # the axis in the spec
    changed: tuple[str, ...] = ()  # for a stale lock: model, instruction and/or count
    locked: LockedAxis | None = None

    def describe(self) -> str:
        """One phrase for validate and plan: how many values, by which model, and the lock."""
        head = f"{self.count} values by {self.model}"
        if self.state == LOCKED and self.locked is not None:
            when = f", {self.locked.generated_at[:10]}" if self.locked.generated_at else ""
            return f"{len(self.locked.values)} values by {self.locked.model}, locked{when}"
        if self.state == STALE:
            return f"{head}: the lock is stale ({', '.join(self.changed)} changed)"
        return f"{head}, not locked yet"


# --- reading ------------------------------------------------------------------------------


def read_lock(path: Path, display: str) -> Lockfile | None:
    """The lockfile at ``path`` (``display`` names it in messages), or None if absent.

    Raises SpecError with every problem of the file, at its lines.
    """
    if not path.exists():
        return None
    doc = load_yaml_file(path, display_name=display)
    issues: list[SpecIssue] = []
    data = doc.data
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise SpecError(
            [doc.issue((), f"not a batchgen lockfile (version {LOCK_VERSION}): lock it again")]
        )
    raw_axes = data.get("axes")
    if not isinstance(raw_axes, dict):
        raise SpecError([doc.issue(("axes",), "axes should be a mapping of axis names")])
    axes: dict[str, LockedAxis] = {}
    for name, raw in raw_axes.items():
        axis = _read_axis(doc, name, raw, issues)
        if axis is not None:
            axes[name] = axis
    if issues:
        raise SpecError(issues)
    return Lockfile(path=path, display=display, axes=axes)


def _read_axis(
    doc: YamlDocument, name: str, raw: object, issues: list[SpecIssue]
) -> LockedAxis | None:
    at = ("axes", name)
    if not isinstance(raw, dict):
        issues.append(doc.issue(at, f"axis {name!r} should be a mapping"))
        return None

    def text(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str):
            issues.append(doc.issue((*at, key), f"{name}.{key} should be text"))
            return ""
        return value

    def number(key: str) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            issues.append(doc.issue((*at, key), f"{name}.{key} should be a whole number"))
            return None
        return value

    values = raw.get("values")
    if not isinstance(values, list) or not values:
        issues.append(doc.issue((*at, "values"), f"{name}.values should be a non-empty list"))
        return None
    seen: dict[str, int] = {}
    kept: list[str] = []
    wheres: list[Where] = []
    for i, value in enumerate(values):
        line, column = doc.value_position((*at, "values", i))
        if not isinstance(value, str) or not value.strip():
            issues.append(SpecIssue(doc.file, line, column, "a value should be non-empty text"))
            continue
        if value in seen:
            issues.append(
                SpecIssue(
                    doc.file, line, column, f"duplicate value (already at line {seen[value]})"
                )
            )
            continue
        seen[value] = line
        kept.append(value)
        wheres.append(Where(doc.file, line, column))
    tokens = raw.get("tokens") if isinstance(raw.get("tokens"), dict) else {}
    assert isinstance(tokens, dict)
    ids = raw.get("request_ids") or []
    cost = raw.get("cost")
    count = number("count")
    return LockedAxis(
        name=name,
        model=text("model"),
        instruction=text("instruction"),
        count=count if count is not None else len(kept),
        asked=text("asked"),
        values=tuple(kept),
        generated_at=text("generated_at", ""),
        requests=number("requests") or 0,
        request_ids=tuple(str(i) for i in ids) if isinstance(ids, list) else (),
        prompt_tokens=_int_or_none(tokens.get("prompt")),
        completion_tokens=_int_or_none(tokens.get("completion")),
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        currency=text("currency", ""),
        cost_source=text("cost_source", ""),
        wheres=tuple(wheres),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- writing ------------------------------------------------------------------------------


class _Quoted(str):
    """Text the lockfile always writes double-quoted: it reads back as the same string
    whatever it looks like (``yes``, ``1e3``, ``16:9``)."""

    __slots__ = ()


class _LockDumper(yaml.SafeDumper):
    pass


_LockDumper.add_representer(
    _Quoted, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, '"')
)


def dump_lock(spec_name: str, axes: Iterable[LockedAxis]) -> str:
    """The text of a lockfile holding ``axes`` (in the order given)."""
    header = (
        f"# Written by `batchgen lock`: the values of the generated axes of {spec_name}.\n"
        "# Commit it with the spec: runs use these values and ask no chat model again.\n"
        "# Edit `values` to curate them; `batchgen lock SPEC --refresh AXIS` asks again\n"
        "# (the tasks of a regenerated axis get new keys).\n"
    )
    body = {
        "version": LOCK_VERSION,
        "spec": _Quoted(spec_name),
        "axes": {axis.name: axis.as_yaml() for axis in axes},
    }
    text = yaml.dump(body, Dumper=_LockDumper, sort_keys=False, allow_unicode=True, width=1 << 20)
    return header + text


def write_lock(path: Path, spec_name: str, axes: Iterable[LockedAxis]) -> None:
    """Write the lockfile atomically (a temporary file, fsynced, then renamed)."""
    write_atomic(path, dump_lock(spec_name, axes))


# --- resolving an axis -------------------------------------------------------------------


def resolve_generated(
    name: str, definition: GeneratedAxisModel, where: Where, lock: Lockfile | None
) -> tuple[list[tuple[str, Where]], GeneratedAxis, list[SpecIssue]]:
    """The values of a generated axis (each with where it is written), what the spec
    knows of it, and its warnings.

    Locked: the lock's values. Stale: still the lock's values, so ``status``, ``export``
    and the gallery keep working (``run`` refuses them). Missing: ``count`` placeholders,
    so the spec can be counted and checked before the values exist (``expand`` refuses
    them).
    """
    gen = definition.generate
    asked = asked_digest(gen.model, gen.instruction, gen.count)
    entry = lock.axes.get(name) if lock is not None else None
    base = GeneratedAxis(name, gen.model, gen.instruction, gen.count, asked, MISSING, where)
    if entry is None or lock is None:
        placeholders = [(f"<{name} {i + 1} of {gen.count}>", where) for i in range(gen.count)]
        message = (
            f"axis {name!r} is generated ({gen.count} values by {gen.model}) and not locked"
            " yet: `batchgen lock SPEC` asks for them (`run` does it first)"
        )
        return placeholders, base, [where.issue(message, "warning")]
    values = list(zip(entry.values, entry.wheres, strict=True))
    issues: list[SpecIssue] = []
    if entry.asked == asked:
        state = LOCKED
        changed: tuple[str, ...] = ()
        if len(entry.values) != gen.count:
            issues.append(
                where.issue(
                    f"the lock holds {len(entry.values)} values of axis {name!r}, the spec asks"
                    f" for {gen.count} (edited by hand?); the lock's values are used",
                    "warning",
                )
            )
    else:
        state = STALE
        changed = tuple(
            what
            for what, now, then in (
                ("model", gen.model, entry.model),
                ("instruction", gen.instruction, entry.instruction),
                ("count", gen.count, entry.count),
            )
            if now != then
        ) or ("request",)
        issues.append(
            where.issue(
                f"the lock of axis {name!r} is stale: its {' and '.join(changed)} changed since"
                f" the values were generated; `batchgen lock SPEC --refresh {name}` asks again"
                " (its tasks get new keys), or restore the spec; `run` refuses a stale lock",
                "warning",
            )
        )
    spec_axis = GeneratedAxis(
        name, gen.model, gen.instruction, gen.count, asked, state, where, changed, entry
    )
    return values, spec_axis, issues


def unlocked_issues(
    spec_display: str, generated: Iterable[GeneratedAxis], *, stale_ok: bool = False
) -> list[SpecIssue]:
    """An error at each generated axis with no values yet (and, unless ``stale_ok``,
    with a stale lock), naming the command that fixes it."""
    issues = []
    for g in generated:
        if g.state == MISSING:
            issues.append(
                g.where.issue(
                    f"axis {g.name!r} is generated and not locked yet: run `batchgen lock"
                    f" {spec_display}` first (or `batchgen run`, which locks it first)"
                )
            )
        elif g.state == STALE and not stale_ok:
            issues.append(
                g.where.issue(
                    f"the lock of axis {g.name!r} is stale ({', '.join(g.changed)} changed):"
                    f" `batchgen lock {spec_display} --refresh {g.name}` asks again (its"
                    " tasks get new keys), or restore the spec"
                )
            )
    return issues
