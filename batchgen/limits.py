"""A rate limit as the service states it: a plain value shared by the client (which
reads it from a 429's message), the throttle and the runner (which pace to it).

It lives apart from :mod:`batchgen.errors` (which re-exports it, as
``batchgen.errors.StatedLimit``) because it is data, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StatedLimit"]


@dataclass(frozen=True, slots=True)
class StatedLimit:
    """A rate limit as the service states it in a 429: ``count`` requests per ``window``.

    ``window`` is in seconds. ``scope`` is ``success`` (the gateway's sliding log of
    successful requests) or ``total`` (its token bucket over every attempt, failures
    included).
    """

    count: int
    window: float
    scope: str = "success"

    def __str__(self) -> str:
        what = "requests" if self.scope == "success" else "attempts"
        return f"{self.count} {what} per {self.window:g}s"
