"""Test markers in prompts: ``[sim:fail=REASON]`` and ``[sim:latency=SECONDS]``.

They make single simulated tasks deterministic (a forced failure, a fixed duration)
whatever the configured fault rates and latency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Markers", "parse_markers"]

_FAIL_MARKER = re.compile(r"\[sim:fail=(error|output_moderation|input_moderation)\]")
_LATENCY_MARKER = re.compile(r"\[sim:latency=([0-9]+(?:\.[0-9]*)?)\]")


@dataclass(frozen=True, slots=True)
class Markers:
    """Test markers found in a prompt: a forced failure and a fixed duration."""

    failure: str | None
    latency: float | None


def parse_markers(prompt: str) -> Markers:
    """Read ``[sim:fail=REASON]`` and ``[sim:latency=SECONDS]`` out of ``prompt``."""
    if "[sim:" not in prompt:  # the common case costs one substring search
        return Markers(None, None)
    fail = _FAIL_MARKER.search(prompt)
    latency = _LATENCY_MARKER.search(prompt)
    return Markers(
        fail.group(1) if fail else None,
        float(latency.group(1)) if latency else None,
    )
