"""What a job will do, before it does it: counts, cost, duration, JSON lines, the schema.

The CLI's ``validate``, ``plan`` and ``schema`` commands call these functions and
print what they return; nothing here prints. :func:`plan_summary` walks every task
once (to know which are already done), holding only counters and the distinct values
of each variable (which the spec holds already), so it plans a million-task job in
memory that does not grow with the number of tasks.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Container, Iterator
from dataclasses import dataclass

from batchgen.api.catalog import PRICES_DATED
from batchgen.errors import SpecIssue
from batchgen.i18n import _, current_language, ngettext
from batchgen.spec.load import Spec
from batchgen.spec.matrix import expand
from batchgen.spec.model import SpecModel

__all__ = [
    "TYPICAL_LATENCY",
    "AxisCount",
    "PlanSummary",
    "format_plan",
    "plan_json_lines",
    "plan_summary",
    "spec_json_schema",
    "validate_summary",
]

#: Seconds an image typically takes from submission to result (protocol.md: 15 s to minutes).
TYPICAL_LATENCY = 30.0
#: Distinct values counted per variable; the rest are summed as "more".
_MAX_VALUES = 50
#: Values listed per variable in the human table.
_SHOWN_VALUES = 12
_TIMES = " \u00d7 "  # multiplication sign
_MINUS = " \u2212 "  # minus sign


@dataclass(frozen=True, slots=True)
class AxisCount:
    """Tasks per value of one variable, in first-seen order.

    Only the first 50 distinct values are counted one by one; ``more_values`` and
    ``more_tasks`` sum up the rest: the distinct values past those 50, and the tasks
    that have one of them.
    """

    name: str
    values: tuple[tuple[str, int], ...]
    more_values: int = 0
    more_tasks: int = 0


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """Everything ``batchgen plan`` shows about a job."""

    spec: str
    name: str
    endpoint: str
    total: int
    done: int
    axes: tuple[AxisCount, ...]
    cost_total: float
    cost_to_run: float
    currency: str
    budget: float | None
    seconds: float
    rate_note: str
    warnings: tuple[SpecIssue, ...]
    #: (model, price, where it came from: spec, live, table or none) per model
    prices: tuple[tuple[str, float, str], ...] = ()
    #: (axis, what its lock says) per generated axis
    generated: tuple[tuple[str, str], ...] = ()

    @property
    def to_run(self) -> int:
        """Tasks not done yet."""
        return self.total - self.done


def plan_summary(spec: Spec, *, done_keys: Container[str] = frozenset()) -> PlanSummary:
    """Count the tasks of ``spec`` per variable value, and what is left to run and pay.

    ``done_keys`` holds the keys the ledger already has results for. The cost to run
    sums the prices of the tasks not done; the duration estimates those tasks at the
    spec's rate limit (or, with no limit set, at ``concurrency`` tasks of about 30 s).
    """
    counters: dict[str, dict[str, int]] = {}
    # Past a variable's first 50 values: the distinct values seen (to count them, not
    # the tasks that have them) and the number of tasks that have one.
    overflow: dict[str, set[str]] = {}
    overflow_tasks: dict[str, int] = {}
    total = done = 0
    cost_total = cost_to_run = 0.0
    # An axis not generated yet has placeholder values: one line says how many tasks.
    pending = {g.name: f"({g.count} values to generate)" for g in spec.unlocked}
    for task in expand(spec, counting=True):
        total += 1
        cost_total += task.price
        if task.key in done_keys:
            done += 1
        else:
            cost_to_run += task.price
        for name, value in task.vars.items():
            value = pending.get(name, value)
            counter = counters.setdefault(name, {})
            if value in counter:
                counter[value] += 1
            elif len(counter) < _MAX_VALUES:
                counter[value] = 1
            else:
                overflow.setdefault(name, set()).add(value)
                overflow_tasks[name] = overflow_tasks.get(name, 0) + 1
    axes = tuple(
        AxisCount(
            name,
            tuple(counter.items()),
            more_values=len(overflow.get(name, ())),
            more_tasks=overflow_tasks.get(name, 0),
        )
        for name, counter in counters.items()
    )
    seconds, rate_note = _duration(spec, total - done)
    return PlanSummary(
        spec=spec.display_path,
        name=spec.name,
        endpoint=spec.endpoint,
        total=total,
        done=done,
        axes=axes,
        cost_total=cost_total,
        cost_to_run=cost_to_run,
        currency=spec.currency,
        budget=spec.limits.budget,
        seconds=seconds,
        rate_note=rate_note,
        warnings=spec.warnings,
        prices=tuple(
            (m, spec.prices.get(m, 0.0), spec.price_sources.get(m, "table"))
            for m in sorted(spec.tasks_by_model)
        ),
        generated=tuple((g.name, g.describe()) for g in spec.generated),
    )


def _duration(spec: Spec, tasks: int) -> tuple[float, str]:
    """Seconds to finish ``tasks``: the submissions, then one typical latency.

    Submissions are bounded by the rate limit and by the tasks in flight
    (``concurrency`` tasks of about TYPICAL_LATENCY seconds each); the slower bound wins.
    """
    if tasks == 0:
        return 0.0, "(nothing to run)"
    limits = spec.limits
    waves = math.ceil(tasks / limits.concurrency) * TYPICAL_LATENCY
    if limits.requests_per_minute is None:
        note = (
            "(unknown rate: the runner will discover it; estimated at "
            f"{limits.concurrency} at a time, ~{TYPICAL_LATENCY:g} s per image)"
        )
        return waves, note
    by_rate = (tasks - 1) * 60.0 / limits.requests_per_minute + TYPICAL_LATENCY
    if by_rate >= waves:
        return by_rate, f"(at {limits.requests_per_minute:g} requests/min)"
    return waves, (
        f"(at {limits.requests_per_minute:g} requests/min, bounded by "
        f"{limits.concurrency} at a time and ~{TYPICAL_LATENCY:g} s per image)"
    )


_SOURCES = {
    "spec": "the spec's prices",
    "live": "the service's live price",
    "table": f"built-in table of {PRICES_DATED}; `plan --live` asks the service",
    "none": "no price known: counted as free",
}


def _money(value: float) -> str:
    if 0 < value < 0.005:
        return "<0.01"
    return f"{value:,.2f}"


def _clock(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _columns(text: str) -> int:
    """Terminal columns ``text`` takes: CJK and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _columns(text))


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    if _columns(text) <= width:
        return text
    while _columns(text) > width - 1:
        text = text[:-1]
    return text + "…"


def format_plan(summary: PlanSummary) -> str:
    """A compact table: tasks per variable value, then totals, cost and duration."""
    lines = [f"{summary.spec}: {summary.name} (route: {summary.endpoint})"]
    width = max([_columns(axis.name) for axis in summary.axes] + [8])
    value_width = 48
    for axis in summary.axes:
        for i, (value, count) in enumerate(axis.values[:_SHOWN_VALUES]):
            label = axis.name if i == 0 else ""
            lines.append(
                f"  {_pad(label, width)}  {_pad(_cut(value, value_width), value_width)} {count:>9,}"
            )
        hidden = axis.values[_SHOWN_VALUES:]
        more_values = len(hidden) + axis.more_values
        more_tasks = sum(count for _, count in hidden) + axis.more_tasks
        if more_values:
            more = f"… {more_values:,} more values"
            lines.append(f"  {'':<{width}}  {more:<{value_width}} {more_tasks:>9,}")
    lines.append(
        f"tasks     {summary.total:,} in all, {summary.done:,} done, {summary.to_run:,} to run"
    )
    cost = f"cost      ~{_money(summary.cost_to_run)} {summary.currency} to run"
    if summary.done:
        cost += f" (~{_money(summary.cost_total)} for the whole job)"
    if summary.budget is not None:
        cost += f"; budget {summary.budget:g} {summary.currency}"
        if summary.cost_to_run > summary.budget:
            cost += " (the run will stop at the budget)"
    lines.append(cost)
    for i, (model, price, source) in enumerate(summary.prices):
        label = "prices" if i == 0 else ""
        where = _SOURCES.get(source, source)
        lines.append(f"{label:<10}{model} {price:.4g} {summary.currency} ({where})")
    lines.append(f"duration  ~{_clock(summary.seconds)} {summary.rate_note}")
    for i, (name, described) in enumerate(summary.generated):
        lines.append(f"{'generated' if i == 0 else '':<10}{name}: {described}")
    if summary.warnings:
        lines.append(f"{len(summary.warnings)} warning(s): see above")
    return "\n".join(lines)


def plan_json_lines(spec: Spec) -> Iterator[str]:
    """One JSON object per task, in order: key, index, vars, prompt, request and more.

    ``request`` is the exact body that will be sent, except that local reference
    images appear as ``file:<absolute path>#sha256=<hex>`` placeholders; they are
    replaced by data URIs only when the request is sent.
    """
    for task in expand(spec):
        yield json.dumps(
            {
                "key": task.key,
                "index": task.index,
                "vars": task.vars,
                "prompt": task.prompt,
                "request": task.request,
                "endpoint": task.endpoint,
                "model": task.model,
                "aspect_ratio": task.aspect_ratio,
                "image_size": task.image_size,
                "variant": task.variant,
                "price": task.price,
                "price_source": spec.price_sources.get(task.model, "table"),
            },
            ensure_ascii=False,
        )


def _plural(name: str) -> str:
    if not name[-1:].isascii():
        return name  # 风格, スタイル: scripts without an English plural
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in ("a", "e", "i", "o", "u"):
        return name[:-1] + "ies"
    return name + "s"


def _factor(name: str, count: int) -> str:
    """``2 models``, ``3 subjects``: one factor of the breakdown, in the reader's language."""
    if name == "model":
        text = ngettext("{count} model", "{count} models", count)
    elif name == "aspect_ratio":
        text = ngettext("{count} ratio", "{count} ratios", count)
    elif name == "image_size":
        text = ngettext("{count} size", "{count} sizes", count)
    elif name == "prompt":
        text = ngettext("{count} prompt", "{count} prompts", count)
    elif name == "images":
        text = ngettext("{count} image set", "{count} image sets", count)
    else:
        # An English plural (subjects) only in English: 2 个subject, not 2 个subjects.
        text = _("{count} {name}")
        name = _plural(name) if count != 1 and current_language() == "en" else name
    return text.format(count=count, name=name)


def _breakdown(spec: Spec) -> str:
    counts = spec.counts
    if counts.default_only:
        parts = _("1 combination")
    elif not spec.matrix.axes:
        parts = _("{count} include entries").format(count=counts.added)
    else:
        factors = [
            _("{count} {name} rows").format(count=len(axis.values), name=axis.name)
            if axis.names != (axis.name,)
            else _factor(axis.name, len(axis.values))
            for axis in spec.matrix.axes
        ]
        parts = _TIMES.join(factors)
        adjusted = bool(counts.excluded or counts.added)
        if counts.excluded:
            parts += _MINUS + _("{count:,} excluded").format(count=counts.excluded)
        if counts.added:
            parts += " + " + _("{count:,} included").format(count=counts.added)
        if adjusted and spec.repeat > 1:
            parts = f"({parts})"
    if spec.repeat > 1:
        variants = _("{count} variants").format(count=spec.repeat)
        parts = f"{parts}{_TIMES}{variants}" if counts.total > 1 else variants
    return parts


def validate_summary(spec: Spec) -> str:
    """The one line ``batchgen validate`` prints for a valid spec, such as
    ``jobs/quickstart.yaml: ok, 8 tasks (2 models x 2 ratios x 2 subjects), est. 0.35 CNY``
    (with multiplication signs), followed by the number of warnings if there are any.
    """
    line = ngettext(
        "{file}: ok, {count:,} task ({breakdown}), est. {cost} {currency}",
        "{file}: ok, {count:,} tasks ({breakdown}), est. {cost} {currency}",
        spec.task_count,
    ).format(
        file=spec.display_path,
        count=spec.task_count,
        breakdown=_breakdown(spec),
        cost=_money(spec.estimated_cost),
        currency=spec.currency,
    )
    for generated in spec.generated:
        line += f"; {generated.name}: {generated.describe()}"
    if spec.warnings:
        count = len(spec.warnings)
        line += ngettext(", {count} warning", ", {count} warnings", count).format(count=count)
    return line


def _any_of(node: object) -> object:
    # Pydantic writes tagged unions as oneOf, but an integer is also a "number", so a
    # value like 5 would match two branches and fail oneOf in editors: anyOf is right.
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): _any_of(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_any_of(v) for v in node]
    return node


def spec_json_schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of job specs, for editors and yaml-language-server."""
    schema = SpecModel.model_json_schema(by_alias=True, mode="validation")
    matrix = schema.get("$defs", {}).get("MatrixModel", {})
    extra = matrix.get("additionalProperties")
    if isinstance(extra, dict):
        extra.setdefault(
            "description",
            "An axis: a list of values, a list of rows (mappings), {from: FILE}, or"
            " {generate: {model, count, instruction}} (values a chat model writes, locked).",
        )
    out: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "batchgen job spec (version 1)",
    }
    converted = _any_of(schema)
    assert isinstance(converted, dict)
    out.update({k: v for k, v in converted.items() if k != "title"})
    return out
