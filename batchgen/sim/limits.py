"""The simulator's rate limiters as pure logic: every call is told ``now``.

Two limiters, chosen by ``SimConfig.limiter``:

- ``bucket``: :class:`TokenBucket`, the ``rpm``/``burst`` and ``poll_rpm`` buckets.
- ``gateway``: new-api's model request limit (``protocol.md``, "Rate limiting"), per
  account. The *success* limit is a :class:`SlidingLog`: a request is allowed when the
  log holds fewer than N entries or the oldest of the N most recent is a whole window
  old, and it is recorded only when its answer's status is < 400, when the answer ends.
  The optional *total* limit is a :class:`TotalBucket` over every attempt (burst N, one
  back every window/N seconds), checked only once the success limit lets a request by.

:class:`GatewayLimits` holds one account's pair; the service calls :meth:`~GatewayLimits.check`
before a handler and :meth:`~GatewayLimits.record` after a successful one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["GatewayLimits", "Refused", "SlidingLog", "TokenBucket", "TotalBucket"]

#: Which gateway limit refused a request.
Refused = Literal["success", "total"]

_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """A token bucket whose rate and capacity are passed at each use (they may change)."""

    tokens: float
    updated: float

    def take(self, rate: float, capacity: float, now: float) -> float:
        """Take one token: 0.0 if one was there, else the seconds until one will be.

        ``rate`` is tokens per second (> 0); tokens never exceed ``capacity``.
        """
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class SlidingLog:
    """new-api's success limit: the times of the most recent successful requests.

    ``limit`` and ``window`` are passed at each use (the config may change them); a
    ``limit`` of 0 means no limit (nothing is checked or recorded).
    """

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._times)

    def entries(self) -> list[float]:
        """The recorded times, oldest first."""
        return list(self._times)

    def allows(self, limit: int, window: float, now: float) -> bool:
        """Whether a request arriving at ``now`` may go ahead (nothing is recorded)."""
        if limit <= 0:
            return True
        times = self._times
        return len(times) < limit or now - times[-limit] >= window

    def record(self, limit: int, now: float) -> None:
        """Record a success at ``now``, keeping only the ``limit`` most recent entries."""
        if limit <= 0:
            return
        times = self._times
        times.append(now)
        while len(times) > limit:
            times.popleft()


@dataclass(slots=True)
class TotalBucket:
    """new-api's total limit: burst ``limit``, one request back every ``window/limit`` s.

    Kept in new-api's own units (a request costs ``window``, ``limit`` units come back
    per second, the capacity is ``limit * window``), so whole-second refills are exact.
    A new bucket is full.
    """

    level: float
    updated: float

    @classmethod
    def full(cls, limit: int, window: float, now: float) -> TotalBucket:
        """A bucket holding ``limit`` requests at ``now``."""
        return cls(limit * window, now)

    def take(self, limit: int, window: float, now: float) -> bool:
        """Take one request's worth if there is one (True), else take nothing (False)."""
        self.level = min(limit * window, self.level + max(0.0, now - self.updated) * limit)
        self.updated = now
        if self.level >= window * (1.0 - _EPSILON):
            self.level = max(0.0, self.level - window)
            return True
        return False


@dataclass(slots=True)
class GatewayLimits:
    """One account's state in the gateway limiter: its success log and total bucket."""

    log: SlidingLog = field(default_factory=SlidingLog)
    total: TotalBucket | None = None

    def check(self, limit: int, window: float, total: int, now: float) -> Refused | None:
        """None if a request arriving at ``now`` may go ahead, else the limit refusing it.

        The success limit (``limit``, 0 = none) is checked first and records nothing;
        only a request it lets by takes a token of the total limit (``total``, 0 = off).
        """
        if not self.log.allows(limit, window, now):
            return "success"
        if total > 0:
            if self.total is None:
                self.total = TotalBucket.full(total, window, now)
            if not self.total.take(total, window, now):
                return "total"
        return None

    def record(self, limit: int, now: float) -> None:
        """Record a successful answer (status < 400) that ended at ``now``."""
        self.log.record(limit, now)
