"""What batchgen knows about the service's models: families, accepted values, prices.

One table serves the spec validator (which values a model accepts), the planner
(default prices) and the simulator (which models it serves and what it charges), so
the three cannot disagree. Prices are per image, in the account's currency (CNY on
CobabaAi); they are user configuration, and a spec's ``prices`` overrides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ASPECT_RATIOS",
    "CHAT_PRICES",
    "DEFAULT_PRICES",
    "EXTRA_ASPECT_RATIOS_NB2",
    "GPT_IMAGE_SIZES",
    "IMAGE_SIZES",
    "PRICES_DATED",
    "ModelFamily",
    "chat_cost",
    "family_of",
    "image_dimensions",
    "known_models",
]

#: Ratios every nano-banana model accepts (``auto`` means the model chooses; 1:1 here).
ASPECT_RATIOS: tuple[str, ...] = (
    "auto",
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "5:4",
    "4:5",
    "21:9",
)
#: The nano-banana-2 family also accepts these.
EXTRA_ASPECT_RATIOS_NB2: tuple[str, ...] = ("1:4", "4:1", "1:8", "8:1")
#: ``imageSize`` values; only the pro and 2 families honour anything but 1K.
IMAGE_SIZES: tuple[str, ...] = ("1K", "2K", "4K")
#: gpt-image-2 takes its size as pixels.
GPT_IMAGE_SIZES: tuple[str, ...] = ("auto", "1024x1024", "1536x1024", "1024x1536")

#: When the built-in prices were published (CobabaAi's docs, as a public client quoted them).
PRICES_DATED = "2026-06"

#: Default per-image prices (CNY), as published in 2026-06 (protocol.md, "Published
#: prices"). The live price list (``/api/pricing``) beats this table: a run asks for it.
DEFAULT_PRICES: dict[str, float] = {
    "gpt-image-2": 0.066,
    "gpt-image-2-vip": 0.22,
    "nano-banana-fast": 0.048,
    "nano-banana": 0.066,
    "nano-banana-pro": 0.198,
    "nano-banana-pro-preview": 0.36,
    "nano-banana-pro-vt": 0.198,
    "nano-banana-pro-cl": 1.1,
    "nano-banana-pro-vip": 1.1,
    "nano-banana-pro-4k-vip": 1.98,
    "nano-banana-2": 0.132,
    "nano-banana-2-cl": 0.66,
    "nano-banana-2-4k-cl": 1.43,
}

#: Chat models' prices per million tokens (input, output), CNY. CobabaAi publishes no
#: price for its chat model, and the gateway prices chat by tokens (quota_type 0): this
#: is the upstream list price (2 and 12 USD) at 7.3 CNY a dollar, an estimate that the
#: service's usage counter corrects. The simulator charges exactly this.
CHAT_PRICES: dict[str, tuple[float, float]] = {
    "gemini-3.1-pro-preview": (14.6, 87.6),
}


def chat_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What a chat answer of these token counts costs (CNY), or None for a model
    without a known price."""
    prices = CHAT_PRICES.get(model)
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1_000_000


@dataclass(frozen=True, slots=True)
class ModelFamily:
    """The values one family of models accepts."""

    name: str
    aspect_ratios: tuple[str, ...]
    image_sizes: tuple[str, ...]
    pixel_sizes: bool = False  # gpt-image: aspectRatio/size are "WxH" strings

    def accepts_ratio(self, value: str) -> bool:
        """Whether ``value`` is an aspect ratio (or pixel size) this family accepts."""
        return value in self.aspect_ratios

    def accepts_size(self, value: str) -> bool:
        """Whether ``value`` is an ``imageSize`` this family honours."""
        return value in self.image_sizes


_NANO = ModelFamily("nano-banana", ASPECT_RATIOS, ("1K",))
_NANO_PRO = ModelFamily("nano-banana-pro", ASPECT_RATIOS, IMAGE_SIZES)
_NANO_2 = ModelFamily("nano-banana-2", ASPECT_RATIOS + EXTRA_ASPECT_RATIOS_NB2, IMAGE_SIZES)
_GPT = ModelFamily(
    "gpt-image",
    (*GPT_IMAGE_SIZES, "1:1", "3:2", "2:3"),
    ("1K",),
    pixel_sizes=True,
)


# The "-4k" variants (nano-banana-pro-4k-vip, nano-banana-2-4k-cl) are priced and sold
# as 4K images: asking them for another size would plan files of the wrong size.
_NANO_PRO_4K = ModelFamily("nano-banana-pro (4K)", ASPECT_RATIOS, ("4K",))
_NANO_2_4K = ModelFamily("nano-banana-2 (4K)", _NANO_2.aspect_ratios, ("4K",))


def family_of(model: str) -> ModelFamily | None:
    """The family of ``model``, or ``None`` for a model batchgen does not know.

    The pro family (``-vip``, ``-cl``, ``-vt``, ``-preview`` variants included) and
    the 2 family (``-cl``) take every ratio of their family and 1K, 2K or 4K; their
    ``-4k`` variants take 4K only.
    """
    if model.startswith("nano-banana-pro"):
        return _NANO_PRO_4K if "-4k" in model else _NANO_PRO
    if model.startswith("nano-banana-2"):
        return _NANO_2_4K if "-4k" in model else _NANO_2
    if model.startswith("nano-banana"):
        return _NANO
    if model.startswith("gpt-image"):
        return _GPT
    return None


def known_models() -> tuple[str, ...]:
    """Every model name with a default price."""
    return tuple(DEFAULT_PRICES)


_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
_GPT_RATIO_PIXELS = {"1:1": (1024, 1024), "3:2": (1536, 1024), "2:3": (1024, 1536)}


def image_dimensions(aspect_ratio: str, image_size: str) -> tuple[int, int]:
    """Width and height of an image of ``aspect_ratio`` at ``image_size``.

    ``1K`` is 1024 px on the long side, ``2K`` 2048, ``4K`` 4096; the short side is
    rounded to a multiple of 8 so that 16:9 at 2K is 2048x1152. ``auto`` is square;
    a pixel string such as ``1536x1024`` is taken as it is.

    Raises ValueError for a value that is neither a ratio, a pixel size nor ``auto``.
    """
    if "x" in aspect_ratio:
        w_text, _, h_text = aspect_ratio.partition("x")
        width, height = int(w_text), int(h_text)
        if width <= 0 or height <= 0:
            raise ValueError(f"bad pixel size {aspect_ratio!r}")
        return width, height
    if aspect_ratio in _GPT_RATIO_PIXELS and image_size not in _LONG_SIDE:
        return _GPT_RATIO_PIXELS[aspect_ratio]
    long_side = _LONG_SIDE.get(image_size)
    if long_side is None:
        raise ValueError(f"bad image size {image_size!r}")
    if aspect_ratio == "auto":
        return long_side, long_side
    w_text, sep, h_text = aspect_ratio.partition(":")
    if not sep:
        raise ValueError(f"bad aspect ratio {aspect_ratio!r}")
    rw, rh = float(w_text), float(h_text)
    if rw <= 0 or rh <= 0:
        raise ValueError(f"bad aspect ratio {aspect_ratio!r}")
    if rw >= rh:
        return long_side, max(8, 8 * math.floor(long_side * rh / rw / 8 + 0.5))
    return max(8, 8 * math.floor(long_side * rw / rh / 8 + 0.5)), long_side
