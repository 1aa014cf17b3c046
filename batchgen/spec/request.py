"""The request a task sends: its body for each route, its key, its images made real.

:func:`build_request` writes the exact body of a route (see protocol.md) from a task's
values; :func:`task_key` hashes a task's canonical request (see :mod:`.matrix` for
what goes in); :func:`materialize_request` turns the local reference-image
placeholders a stored request keeps into ``data:`` URIs just before sending. Pure
functions; the only I/O is reading reference images, at send time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from batchgen.spec.sources import ImageRef, image_data_uri

__all__ = [
    "IMAGE_FIELDS",
    "TaskDefaults",
    "build_request",
    "materialize_request",
    "pixel_size",
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
