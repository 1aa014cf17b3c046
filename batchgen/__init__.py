"""batchgen: batch image generation through the CobabaAi API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
