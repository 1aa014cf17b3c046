"""Deterministic result images: real PNGs drawn from the request, cached by size in bytes.

The same :class:`RenderParams` always give the same bytes (a background colour from a
hash of the parameters, the prompt wrapped in the system's fonts, the model and size in
a corner), so tests can compare digests across runs. The prompt is drawn with
:mod:`batchgen.fonts` (a Latin and a CJK face, per-character fallback): a Chinese
prompt shows as Chinese, and a machine with no CJK font logs one warning saying what
to install. Rendering is cheap
(``compress_level=1``, flat shapes) because it runs on the event loop, and an LRU keyed
by the parameters and bounded in bytes makes re-downloads free.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw

from batchgen.api.catalog import image_dimensions
from batchgen.fonts import missing_notice, typeface

__all__ = ["DEFAULT_CACHE_BYTES", "ImageCache", "RenderParams", "RenderedImage", "render_png"]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
MIN_SIDE = 8


@dataclass(frozen=True, slots=True)
class RenderParams:
    """What an image is drawn from; equal parameters give byte-identical PNGs."""

    model: str
    prompt: str
    width: int
    height: int
    variant: int = 0

    @classmethod
    def for_request(
        cls, model: str, prompt: str, aspect: str, size: str, *, variant: int = 0, scale: float = 1
    ) -> RenderParams:
        """Parameters for ``aspect`` at ``size`` (via catalog.image_dimensions), times ``scale``.

        Each side is at least 8 px. Raises ValueError for an aspect or size that
        catalog.image_dimensions refuses.
        """
        width, height = image_dimensions(aspect, size)
        return cls(
            model=model,
            prompt=prompt,
            width=max(MIN_SIDE, round(width * scale)),
            height=max(MIN_SIDE, round(height * scale)),
            variant=variant,
        )


@dataclass(frozen=True, slots=True)
class RenderedImage:
    """PNG bytes and their sha256 (hex), computed once."""

    data: bytes
    sha256: str


log = logging.getLogger("batchgen.sim")
_warned = False


def _warn_missing_glyphs(missing: set[str]) -> None:
    """Log, once per process, that CJK characters had no font (and what to install)."""
    global _warned
    notice = missing_notice(missing)
    if notice and not _warned:
        _warned = True
        log.warning("simulated images: %s", notice)


def render_png(params: RenderParams) -> bytes:
    """Draw the image ``params`` describe and return it as PNG bytes (deterministic)."""
    digest = hashlib.sha256(
        f"{params.model}\0{params.prompt}\0{params.width}x{params.height}\0{params.variant}".encode()
    ).digest()
    background = (digest[0], digest[1], digest[2])
    accent = (255 - digest[0], 255 - digest[1], 255 - digest[2])
    luminance = 0.299 * digest[0] + 0.587 * digest[1] + 0.114 * digest[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    w, h = params.width, params.height
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    # A few flat shapes placed by the digest make variants visibly different.
    for i in range(3):
        x0, y0 = digest[4 + i] * w // 256, digest[8 + i] * h // 256
        radius = max(2, (digest[12 + i] % 64 + 16) * min(w, h) // 512)
        draw.ellipse((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=accent)
    if min(w, h) >= 32:
        font_size = max(8, min(w, h) // 18)
        font = typeface(font_size)
        margin = max(4, w // 20)
        line_height = font_size * 1.25
        max_lines = max(1, int((h - 2 * margin - line_height) // line_height))
        y = float(margin)
        for line in font.wrap(params.prompt, w - 2 * margin, max_lines, ellipsis=False):
            font.draw(draw, (margin, y), line, ink)
            y += line_height
        small = typeface(max(8, font_size // 2))
        label = f"{params.model} {w}x{h} #{params.variant}"
        small.draw(draw, (margin, h - margin - font_size // 2), label, ink)
        if font.missing:
            _warn_missing_glyphs(font.missing)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class ImageCache:
    """Rendered images by parameters, least recently used first out, bounded in bytes.

    An image larger than the whole bound is rendered and returned but not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.renders = 0
        self._entries: OrderedDict[RenderParams, RenderedImage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, params: RenderParams) -> RenderedImage:
        """The image for ``params``, rendered now if it is not cached."""
        entry = self._entries.get(params)
        if entry is not None:
            self._entries.move_to_end(params)
            return entry
        data = render_png(params)
        self.renders += 1
        entry = RenderedImage(data, hashlib.sha256(data).hexdigest())
        if len(data) <= self.max_bytes:
            self._entries[params] = entry
            self.size += len(data)
            while self.size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.size -= len(evicted.data)
        return entry
