"""From a loaded spec to planned tasks: lazy expansion, stable keys, request bodies.

:func:`expand` is a generator: it walks the matrix combination by combination (see
:mod:`batchgen.spec.combos`) and builds each task when asked, so planning a million tasks
needs no more memory than planning ten.

A task's ``key`` is the first 32 hex digits of the SHA-256 of its canonical request::

    json.dumps({"endpoint", "model", "prompt" (rendered), "images" (sha256 of each local
                file's bytes, or the URL), "aspect_ratio", "image_size", "params",
                "variant"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

encoded as UTF-8. Nothing else goes in: not the axis order, the value order, the
spec's formatting, the task's position, or the file names of reference images. So
reordering axes or values, adding values or reformatting the YAML keeps the key of
every task that stays, and a run resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from batchgen.spec.combos import count_combinations, iter_combinations
from batchgen.spec.load import Spec
from batchgen.spec.placeholders import parse_template
from batchgen.spec.request import TaskDefaults, build_request, task_key

__all__ = ["PlannedTask", "count_tasks", "expand", "render_layout"]


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """One image to generate, with everything needed to send, resume and record it.

    ``vars`` is the whole combination (``model``, ``aspect_ratio`` and ``image_size``
    first, then every variable; ``prompt`` and ``images`` as written when the matrix
    sets them). ``request`` is the exact body for ``endpoint``, with local reference
    images as ``file:<path>#sha256=<hex>`` placeholders (see :func:`materialize_request`).
    """

    key: str
    index: int
    endpoint: str
    model: str
    aspect_ratio: str
    image_size: str
    prompt: str
    variant: int
    vars: dict[str, str]
    request: dict[str, object]
    price: float


def count_tasks(spec: Spec) -> int:
    """The exact number of tasks ``expand(spec)`` yields, computed without expanding."""
    return count_combinations(spec.matrix).total * spec.repeat


def expand(spec: Spec, *, counting: bool = False) -> Iterator[PlannedTask]:
    """Yield the tasks of ``spec`` in order: each combination's variants together.

    A generator: memory does not depend on the number of tasks. The spec was fully
    validated by :func:`batchgen.spec.load_spec`, so expansion cannot fail, except that
    a generated axis not locked yet raises SpecError (its values are placeholders),
    unless ``counting`` (as ``plan`` does: the tasks are counted, never sent).
    """
    if not counting:
        spec.require_locked(stale_ok=True)
    defaults: TaskDefaults = spec.defaults
    base_params = dict(defaults.params or {})
    per_model = defaults.model_params or {}
    prices = spec.prices
    endpoint = spec.endpoint
    index = 0
    for combination, chosen_images in iter_combinations(spec.matrix):
        model = combination.get("model", defaults.model)
        assert model is not None  # load_spec refuses combinations without a model
        ratio = combination.get("aspect_ratio", defaults.aspect_ratio)
        size = combination.get("image_size", defaults.image_size)
        variables = {"model": model, "aspect_ratio": ratio, "image_size": size}
        variables.update(combination)
        template = parse_template(combination.get("prompt", defaults.prompt or ""))
        images = defaults.images if chosen_images is None else chosen_images
        placeholders = [ref.placeholder for ref in images]
        digests = [ref.digest for ref in images]
        params = dict(base_params)
        params.update(per_model.get(model, {}))
        uses_variant = "variant" in template.fields
        values = dict(variables)
        prompt = "" if uses_variant else template.render(values)
        for variant in range(spec.repeat):
            values["variant"] = str(variant)
            if uses_variant:
                prompt = template.render(values)
            rendered = _render_params(params, values)
            key = task_key(
                {
                    "endpoint": endpoint,
                    "model": model,
                    "prompt": prompt,
                    "images": digests,
                    "aspect_ratio": ratio,
                    "image_size": size,
                    "params": rendered,
                    "variant": variant,
                }
            )
            request = build_request(
                endpoint,
                model=model,
                prompt=prompt,
                images=list(placeholders),
                aspect_ratio=ratio,
                image_size=size,
                params=rendered,
            )
            yield PlannedTask(
                key=key,
                index=index,
                endpoint=endpoint,
                model=model,
                aspect_ratio=ratio,
                image_size=size,
                prompt=prompt,
                variant=variant,
                vars=dict(variables),
                request=request,
                price=prices.get(model, 0.0),
            )
            index += 1


def _render_params(params: Mapping[str, object], values: Mapping[str, str]) -> dict[str, object]:
    # Top-level string values are templates ("{quality}"); everything else passes through.
    return {
        name: parse_template(value).render(values) if isinstance(value, str) else value
        for name, value in params.items()
    }


def render_layout(spec_layout: str, task: PlannedTask) -> list[str]:
    """The raw path components of ``task``'s output file under the spec's layout.

    The layout is split on ``/`` first, then each part is filled in, so a value that
    contains ``/`` stays inside its component. Fields: every variable in ``task.vars``,
    ``{model}``, ``{aspect_ratio}``, ``{image_size}``, ``{variant}``, ``{index}``,
    ``{key}``, ``{key8}`` and ``{prompt}`` (the rendered prompt). Sanitising the result
    (slugs, lengths, reserved names, the ``.png`` suffix) is the output writer's job.
    Raises KeyError for a field the task lacks (load_spec checks layouts beforehand).
    """
    values = dict(task.vars)
    values.update(
        model=task.model,
        aspect_ratio=task.aspect_ratio,
        image_size=task.image_size,
        variant=str(task.variant),
        index=str(task.index),
        key=task.key,
        key8=task.key[:8],
        prompt=task.prompt,
    )
    return [parse_template(part).render(values) for part in spec_layout.split("/")]
