"""Simulator images: real PNGs of the right size, deterministic, cached within a byte bound."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from batchgen.sim.images import ImageCache, RenderParams, render_png


@pytest.mark.parametrize(
    ("aspect", "size", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("16:9", "2K", (2048, 1152)),
        ("9:16", "1K", (576, 1024)),
        ("auto", "1K", (1024, 1024)),
        ("1536x1024", "1K", (1536, 1024)),
        ("21:9", "1K", (1024, 440)),
    ],
)
def test_dimensions_follow_aspect_and_size(
    aspect: str, size: str, expected: tuple[int, int]
) -> None:
    """The PNG decodes with the catalog's dimensions for its ratio and size."""
    params = RenderParams.for_request("nano-banana-pro", "a cat", aspect, size)
    with Image.open(io.BytesIO(render_png(params))) as image:
        assert image.format == "PNG"
        assert image.size == expected


def test_scale_shrinks_with_a_minimum_side() -> None:
    """image_scale shrinks both sides, never below 8 px."""
    params = RenderParams.for_request("m", "p", "16:9", "1K", scale=0.25)
    assert (params.width, params.height) == (256, 144)
    tiny = RenderParams.for_request("m", "p", "8:1", "1K", scale=0.01)
    assert (tiny.width, tiny.height) == (10, 8)
    with Image.open(io.BytesIO(render_png(tiny))) as image:
        assert image.size == (10, 8)


def test_rendering_is_deterministic_and_varies_by_request() -> None:
    """Equal parameters give equal bytes; another prompt or variant gives other bytes."""
    base = RenderParams("nano-banana", "A cat on the moon", 256, 256, 0)
    assert render_png(base) == render_png(
        RenderParams("nano-banana", "A cat on the moon", 256, 256)
    )
    assert render_png(base) != render_png(RenderParams("nano-banana", "A dog", 256, 256, 0))
    assert render_png(base) != render_png(
        RenderParams("nano-banana", "A cat on the moon", 256, 256, 1)
    )


def test_long_prompts_wrap_without_error() -> None:
    """A very long prompt (and CJK text) renders within the image."""
    prompt = "一只猫 " * 300 + "word " * 500
    with Image.open(io.BytesIO(render_png(RenderParams("m", prompt, 300, 200)))) as image:
        assert image.size == (300, 200)


def test_cache_hits_and_byte_bound() -> None:
    """Repeats come from the cache; the cache evicts least recently used past its bound."""
    cache = ImageCache(max_bytes=10_000_000)
    first = cache.get(RenderParams("m", "a", 128, 128))
    again = cache.get(RenderParams("m", "a", 128, 128))
    assert again is first
    assert cache.renders == 1
    one_size = len(first.data)
    small = ImageCache(max_bytes=one_size * 2 + one_size // 2)
    for prompt in ("a", "b", "c"):
        small.get(RenderParams("m", prompt, 128, 128))
    assert len(small) <= 2
    assert small.size <= small.max_bytes
    small.get(RenderParams("m", "a", 128, 128))
    assert small.renders == 4  # "a" had been evicted


def test_image_larger_than_cache_is_not_kept() -> None:
    """An image bigger than the whole cache is returned but not stored."""
    cache = ImageCache(max_bytes=10)
    image = cache.get(RenderParams("m", "a", 64, 64))
    assert image.data.startswith(b"\x89PNG")
    assert len(cache) == 0
    assert cache.size == 0
