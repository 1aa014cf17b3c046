"""Checks that depend on which values meet in a combination, done without expanding.

The kept combinations are walked in *classes* (see :func:`batchgen.spec.combos.walk_classes`):
combinations that agree on the axes a check looks at and match the same include
entries. Placeholders are checked per (prompt, model, include set), model families per
(model, aspect ratio, image size); the cost is summed per model. The work grows with
the number of distinct values, not with the product.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from batchgen.api.catalog import family_of
from batchgen.i18n import _
from batchgen.spec.combos import Counts, MatrixDef, MatrixEntry
from batchgen.spec.combos import walk_classes as _walk
from batchgen.spec.placeholders import Template, TemplateError, parse_template
from batchgen.spec.request import TaskDefaults, pixel_size
from batchgen.spec.resolve import REQUEST_VARS, Context, TemplateUse, did_you_mean
from batchgen.spec.sources import Where
from batchgen.spec.yamlsrc import NodePath

__all__ = ["LAYOUT_FIELDS", "Estimate", "check_combinations", "check_params"]

#: Layout fields every task has, besides its variables.
LAYOUT_FIELDS = frozenset(
    {"model", "aspect_ratio", "image_size", "variant", "key", "key8", "prompt", "index"}
)
_BUILTINS = frozenset({"model", "aspect_ratio", "image_size", "variant"})
_PIXEL_ROUTES = ("draw-completions", "images")


@dataclass(frozen=True, slots=True)
class Estimate:
    """Tasks and cost per model (cost uses ``prices``; unpriced models count 0)."""

    tasks_by_model: Mapping[str, int]
    cost: float
    unpriced: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Class:
    """What one class of combinations has: chosen values (with places) and variable names."""

    count: int
    values: dict[str, tuple[str, Where]]
    names: frozenset[str]


def _classes(
    ctx: Context, matrix: MatrixDef, counts: Counts, defaults: TaskDefaults, watch: frozenset[str]
) -> Iterator[_Class]:
    """Yield the classes of all combinations, with final values for the ``watch`` names.

    A watched name's value comes from its axis, else the last include entry that adds
    it, else the top-level default (absent if there is none).
    """
    default_values: dict[str, tuple[str, Where]] = {}
    for name, default in (
        ("model", defaults.model),
        ("aspect_ratio", defaults.aspect_ratio),
        ("image_size", defaults.image_size),
        ("prompt", defaults.prompt),
    ):
        if default is not None:
            default_values[name] = (default, ctx.where((name,)))
    original = matrix.original_names
    branch = frozenset(i for i, axis in enumerate(matrix.axes) if watch & set(axis.names))
    for count, chosen, include_mask in _walk(matrix, branch):
        values = {k: v for k, v in default_values.items() if k in watch}
        names = set(original)
        for bit, entry in enumerate(matrix.include):
            if include_mask >> bit & 1:
                _apply(entry, values, names, watch)
        for a, index in enumerate(chosen):
            if index is not None:
                axis = matrix.axes[a]
                value = axis.values[index]
                for name, text in zip(axis.names, value.values, strict=True):
                    if name in watch:
                        values[name] = (text, value.where)
        yield _Class(count, values, frozenset(names | _BUILTINS))
    if counts.default_only:
        yield _Class(1, {k: v for k, v in default_values.items() if k in watch}, _BUILTINS)
    for bit, entry in enumerate(matrix.include):
        if not counts.matched_includes >> bit & 1:
            values = {k: v for k, v in default_values.items() if k in watch}
            own: set[str] = set()
            _apply(entry, values, own, watch, match_too=True)
            yield _Class(1, values, frozenset(own | _BUILTINS))


def _apply(
    entry: MatrixEntry,
    values: dict[str, tuple[str, Where]],
    names: set[str],
    watch: frozenset[str],
    *,
    match_too: bool = False,
) -> None:
    for name, text in entry.match + entry.adds if match_too else entry.adds:
        names.add(name)
        if name in watch:
            values[name] = (text, entry.where)


def check_combinations(
    ctx: Context,
    matrix: MatrixDef,
    counts: Counts,
    defaults: TaskDefaults,
    *,
    endpoint: str,
    layout: Template | None,
    param_templates: list[tuple[str | None, TemplateUse]],
    repeat: int,
    prices: Mapping[str, float],
) -> Estimate:
    """Check every combination class; record issues on ``ctx``; return the cost estimate."""
    matrix_path = ("matrix",) if ctx.doc.value_marks.get(("matrix",)) else ()
    set_somewhere = (
        matrix.original_names.union(*(dict(entry.adds) for entry in matrix.include)) | _BUILTINS
    )
    reported: set[tuple[str, int, int, str]] = set()

    def report(where: Where, message: str) -> None:
        if (where.file, where.line, where.column, message) not in reported:
            reported.add((where.file, where.line, where.column, message))
            ctx.issues.append(where.issue(message))

    def missing(template: Template, names: frozenset[str], what: str, where: Where) -> None:
        for name in sorted(template.fields - names - {"prompt", "images"}):
            if name in set_somewhere:
                message = _(
                    "{what} uses {{{name}}}, which is not set for every combination (an"
                    " include entry adds it only to some)"
                ).format(what=what, name=name)
            else:
                message = _(
                    "{what} uses {{{name}}}, which no axis, row or include entry sets"
                ).format(what=what, name=name) + did_you_mean(name, sorted(set_somewhere))
            report(where, message)

    # Axes whose values only reach requests through placeholders: a prompt that uses
    # none of an axis's variables repeats one request for each of the axis's values.
    plain_axes = [
        axis for axis in matrix.axes if len(axis.values) > 1 and not REQUEST_VARS & set(axis.names)
    ]
    ignored: dict[str, list[Where]] = {}

    # 1. Placeholders, prompt and model presence.
    for combo in _classes(ctx, matrix, counts, defaults, frozenset({"model", "prompt"})):
        chosen_model = combo.values.get("model")
        if chosen_model is None:
            report(
                ctx.where(matrix_path, at_key=True),
                _(
                    "no model for some combinations: set `model:` at the top level, add a "
                    "`model` axis, or give every include entry a model"
                ),
            )
        prompt = combo.values.get("prompt")
        if prompt is None:
            report(
                ctx.where(matrix_path, at_key=True),
                _(
                    "no prompt for some combinations: set `prompt:` at the top level, add a "
                    "`prompt` axis or column, or give every include entry a prompt"
                ),
            )
        else:
            template = _parsed(prompt[0])
            if template is not None:
                if not prompt[0].strip():
                    report(prompt[1], _("the prompt is empty"))
                missing(template, combo.names, "prompt", prompt[1])
                used = set(template.fields)
                for for_model, use in param_templates:
                    if for_model is None or (chosen_model and chosen_model[0] == for_model):
                        used |= use.template.fields
                for axis in plain_axes:
                    if not used & set(axis.names):
                        places = ignored.setdefault(axis.name, [])
                        if prompt[1] not in places:
                            places.append(prompt[1])
        for for_model, use in param_templates:
            if for_model is None or (chosen_model is not None and chosen_model[0] == for_model):
                missing(use.template, combo.names, use.what, use.where)
        if layout is not None:
            missing(layout, combo.names | LAYOUT_FIELDS, "layout", ctx.where(("layout",)))

    for name, places in ignored.items():
        others = f" (nor do {len(places) - 1} other prompts)" if len(places) > 1 else ""
        ctx.issues.append(
            places[0].issue(
                f"this prompt uses no variable of axis {name!r}{others}: combinations that "
                "differ only in it repeat the same request, which runs once",
                "warning",
            )
        )

    # 2. Model families, routes and cost.
    tasks_by_model: dict[str, int] = {}
    warned: set[str] = set()
    watch = frozenset({"model", "aspect_ratio", "image_size"})
    for combo in _classes(ctx, matrix, counts, defaults, watch):
        if "model" not in combo.values:
            continue  # reported above
        model, model_where = combo.values["model"]
        ratio, ratio_where = combo.values["aspect_ratio"]
        size, size_where = combo.values["image_size"]
        tasks_by_model[model] = tasks_by_model.get(model, 0) + combo.count * repeat
        family = family_of(model)
        if family is None and model not in warned:
            warned.add(model)
            if model in prices:
                message = _(
                    "unknown model {model!r}: batchgen cannot check its aspect ratios and sizes"
                )
            else:
                message = _(
                    "unknown model {model!r}: batchgen cannot check its aspect ratios and"
                    " sizes, and it has no price (cost counted as 0)"
                )
            ctx.issues.append(model_where.issue(message.format(model=model), "warning"))
        if family is not None and not family.accepts_ratio(ratio):
            message = _("{model} does not accept aspect_ratio {value!r} (accepted: {accepted})")
            accepted = ", ".join(family.aspect_ratios)
            report(ratio_where, message.format(model=model, value=ratio, accepted=accepted))
        elif endpoint in _PIXEL_ROUTES and pixel_size(ratio) is None:
            report(
                ratio_where,
                f"the {endpoint} route needs aspect_ratio auto, 1:1, 3:2, 2:3 or a pixel "
                f"size such as 1024x1024, not {ratio!r}",
            )
        if family is not None and not family.accepts_size(size):
            message = _(
                "{model} does not accept image_size {value!r} (accepted: {accepted}); exclude"
                " the combination or drop the value"
            )
            accepted = ", ".join(family.image_sizes)
            report(size_where, message.format(model=model, value=size, accepted=accepted))
        if family is not None and model not in warned:
            gpt = family.pixel_sizes
            if (endpoint in _PIXEL_ROUTES and not gpt) or (endpoint == "nano-banana" and gpt):
                warned.add(model)
                ctx.issues.append(
                    model_where.issue(
                        f"model {model!r} is probably not served by the {endpoint} route",
                        "warning",
                    )
                )
    cost = sum(prices.get(model, 0.0) * n for model, n in tasks_by_model.items())
    unpriced = tuple(sorted(m for m in tasks_by_model if m not in prices))
    return Estimate(tasks_by_model, cost, unpriced)


def _parsed(text: str) -> Template | None:
    try:
        return parse_template(text)
    except TemplateError:
        return None  # already reported where it was written


def check_params(ctx: Context, params: Mapping[str, object], path: NodePath) -> None:
    """Refuse request fields that batchgen sets itself and non-finite numbers; parse templates."""
    managed = {
        "model": "model",
        "prompt": "prompt",
        "images": "images",
        "urls": "images",
        "aspectRatio": "aspect_ratio",
        "imageSize": "image_size",
        "size": "aspect_ratio",
        "replyType": None,
        "webHook": None,
        "shutProgress": None,
        "n": None,
        "response_format": None,
    }
    for name, value in params.items():
        if name in managed:
            own = managed[name]
            hint = f" from `{own}` (top level, axis, row or include)" if own else ""
            ctx.error(
                (*path, name), f"params may not set {name!r}: batchgen sets it{hint}", at_key=True
            )
            continue
        if not _finite(value):
            ctx.error((*path, name), f"params {name!r} contains a non-finite number")
            continue
        if isinstance(value, str):
            ctx.template(value, ctx.where((*path, name)), f"params {name!r}")


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True
