"""From a loaded spec to planned tasks: lazy expansion, stable keys, request bodies.

:func:`expand` is a generator: it walks the matrix combination by combination (see
:mod:`batchgen.combos`) and builds each task when asked, so planning a million tasks
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

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchgen.spec.combos import count_combinations, iter_combinations
from batchgen.spec.placeholders import parse_template
from batchgen.spec.sources import ImageRef, image_data_uri

if TYPE_CHECKING:
    from batchgen.spec.load import Spec

__all__ = [
    "PlannedTask",
    "TaskDefaults",
    "build_request",
    "count_tasks",
    "expand",
    "materialize_request",
    "pixel_size",
    "render_layout",
    "task_key",
]

# One encoder for every key: json.dumps would build a new one per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_PIXELS = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")
_RATIO_PIXELS = {"1:1": "1024x1024", "3:2": "1536x1024", "2:3": "1024x1536", "auto": "auto"}
_PLACEHOLDER = re.compile(r"file:(/.*|[A-Za-z]:[\\/].*)#sha256=([0-9a-f]{64})")
#: Request fields that may carry reference-image placeholders.
IMAGE_FIELDS = ("images", "urls")


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """Top-level values that matrix axes and include entries override."""

    model: str | None
    aspect_ratio: str
    image_size: str
    prompt: str | None
    images: tuple[ImageRef, ...] = ()
    params: Mapping[str, object] | None = None
    model_params: Mapping[str, Mapping[str, object]] | None = None


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


def pixel_size(aspect_ratio: str) -> str | None:
    """The ``WxH`` size of gpt-image routes for ``aspect_ratio`` (``auto`` stays), or None."""
    if _PIXELS.fullmatch(aspect_ratio):
        return aspect_ratio
    return _RATIO_PIXELS.get(aspect_ratio)


def build_request(
    endpoint: str,
    *,
    model: str,
    prompt: str,
    images: list[str],
    aspect_ratio: str,
    image_size: str,
    params: Mapping[str, object],
) -> dict[str, object]:
    """The request body of ``endpoint`` (see protocol.md); ``images`` omitted when empty.

    Raises ValueError when ``endpoint`` needs a pixel size that ``aspect_ratio`` has none of.
    """
    body: dict[str, object] = {"model": model, "prompt": prompt}
    if endpoint == "images":
        body.update(n=1, size=_pixels(aspect_ratio), response_format="url")
        body.update(params)
        return body
    if images:
        body["images"] = images
    if endpoint == "generate":
        body.update(aspectRatio=aspect_ratio, imageSize=image_size, replyType="async")
    elif endpoint == "nano-banana":
        body.update(aspectRatio=aspect_ratio, imageSize=image_size, webHook="-1")
        body["shutProgress"] = True
    elif endpoint == "draw-completions":
        body.update(aspectRatio=_pixels(aspect_ratio), webHook="-1")
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    body.update(params)
    return body


def _pixels(aspect_ratio: str) -> str:
    size = pixel_size(aspect_ratio)
    if size is None:
        raise ValueError(f"no pixel size for aspect ratio {aspect_ratio!r}")
    return size


def task_key(canonical: Mapping[str, object]) -> str:
    """32 hex digits of the SHA-256 of the canonical JSON of ``canonical`` (see module doc)."""
    return hashlib.sha256(_CANONICAL.encode(canonical).encode("utf-8")).hexdigest()[:32]


def count_tasks(spec: Spec) -> int:
    """The exact number of tasks ``expand(spec)`` yields, computed without expanding."""
    return count_combinations(spec.matrix).total * spec.repeat


def expand(spec: Spec) -> Iterator[PlannedTask]:
    """Yield the tasks of ``spec`` in order: each combination's variants together.

    A generator: memory does not depend on the number of tasks. The spec was fully
    validated by :func:`batchgen.spec.load_spec`, so expansion cannot fail.
    """
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


def materialize_request(request: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``request`` with ``file:<path>#sha256=<hex>`` image placeholders replaced
    by ``data:image/...;base64,...`` URIs, ready to send.

    Only the ``images`` (and ``urls``) lists are touched; each file is read once per
    call. Raises :class:`~batchgen.errors.ConfigError` if a file is missing or its
    bytes no longer match the digest the task's key was computed from.
    """
    body = dict(request)
    cache: dict[str, str] = {}
    for name in IMAGE_FIELDS:
        items = body.get(name)
        if not isinstance(items, list):
            continue
        out: list[object] = []
        for item in items:
            match = _PLACEHOLDER.fullmatch(item) if isinstance(item, str) else None
            if match is None:
                out.append(item)
                continue
            if item not in cache:
                cache[item] = image_data_uri(match.group(1), match.group(2))
            out.append(cache[item])
        body[name] = out
    return body
