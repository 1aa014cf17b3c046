"""The building blocks of pacing: backoff, a token bucket, an adaptive in-flight limit.

Each is a small value or class with an injectable clock, so tests need no sleeping:
:func:`full_jitter` computes a backoff delay from a policy and an attempt number;
:class:`TokenBucket` hands out reservations at a rate with a burst;
:class:`AdaptiveLimit` bounds the tasks in flight at the service (AIMD). The
:class:`~batchgen.runner.throttle.Throttle` ties them together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

__all__ = [
    "MIN_RATE",
    "AdaptiveLimit",
    "BackoffPolicy",
    "Clock",
    "ParkedError",
    "TokenBucket",
    "full_jitter",
]

Clock = Callable[[], float]

#: Slowest rate batchgen will pace at: one request every ten minutes.
MIN_RATE: Final = 1.0 / 600.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Full-jitter exponential backoff: ``uniform(0, min(cap, base * 2**n))``."""

    base: float = 0.25
    cap: float = 60.0


def full_jitter(policy: BackoffPolicy, attempt: int, rng: random.Random) -> float:
    """The delay before retry number ``attempt`` (0-based). Never negative."""
    ceiling = min(policy.cap, policy.base * (2.0 ** min(attempt, 62)))
    return rng.uniform(0.0, max(0.0, ceiling))


class ParkedError(Exception):
    """The service asked for a pause longer than the run will wait (``max_retry_after``)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        super().__init__(f"the service asked to wait {delay:,.0f}s")


class TokenBucket:
    """A token bucket that hands out reservations: ``reserve()`` returns the wait.

    Tokens may go negative: each reservation takes the next free slot, so concurrent
    callers are paced one after another rather than all retrying at once. ``rate`` is
    in tokens per second; ``None`` means unlimited.
    """

    def __init__(self, rate: float | None, burst: float = 1.0, *, clock: Clock) -> None:
        self._clock = clock
        self._rate = None if rate is None else max(MIN_RATE, rate)
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = clock()
        self.epoch = 0  # bumped when the rate is lowered: reservations made before are void

    @property
    def rate(self) -> float | None:
        """Tokens per second, or ``None`` when unlimited."""
        return self._rate

    def set_rate(self, rate: float | None, *, burst: float | None = None) -> None:
        """Change the rate (and burst).

        A higher rate lets reservations already handed out stand. A lower one voids
        them (``epoch`` changes, the debt is forgiven): they were paced for the old
        rate, and callers holding one must reserve again (see ``Throttle.acquire``).
        """
        self._refill()
        new = None if rate is None else max(MIN_RATE, rate)
        if new is not None and (self._rate is None or new < self._rate):
            self.epoch += 1
            self._tokens = max(self._tokens, 0.0)
        self._rate = new
        if burst is not None:
            self.burst = max(1.0, burst)
            self._tokens = min(self._tokens, self.burst)

    def drain(self) -> None:
        """Empty the bucket: the service just said it is out of tokens."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        if self._rate is None:
            return 0.0
        self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return 0.0
        return -self._tokens / self._rate

    def peek(self) -> bool:
        """Whether a token is there now (nothing is taken)."""
        if self._rate is None:
            return True
        self._refill()
        return self._tokens >= 1.0

    def refund(self) -> None:
        """Give back a reservation that was not used (the caller was cancelled)."""
        if self._rate is not None:
            self._refill()
            self._tokens = min(self.burst, self._tokens + 1.0)


class AdaptiveLimit:
    """An AIMD limit on tasks in flight, shared by every submitter.

    ``acquire()`` waits for a free slot; ``release()`` frees one. ``on_success`` grows
    the limit by one per ``limit`` successes; ``on_congestion`` multiplies it by
    ``decrease`` (floor 1), at most once per ``hold`` seconds so one burst of 429s
    counts as one signal.
    """

    def __init__(
        self,
        maximum: int,
        *,
        initial: int | None = None,
        decrease: float = 0.7,
        hold: float = 1.0,
        clock: Clock,
    ) -> None:
        self.maximum = max(1, maximum)
        self.limit = float(min(self.maximum, initial or self.maximum))
        self.decrease = decrease
        self.hold = hold
        self._clock = clock
        self._last_cut = -math.inf
        self.in_use = 0
        self._changed = anyio.Event()

    @property
    def current(self) -> int:
        """The limit as a whole number of slots."""
        return max(1, int(self.limit))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def acquire(self) -> None:
        """Wait until a slot is free, then take it."""
        while self.in_use >= self.current:
            await self._changed.wait()
        self.in_use += 1

    def release(self) -> None:
        """Free a slot taken by :meth:`acquire`."""
        self.in_use = max(0, self.in_use - 1)
        self._notify()

    def on_success(self) -> None:
        """Additive increase: +1 slot per window of ``limit`` successes."""
        if self.limit < self.maximum:
            before = self.current
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            if self.current != before:
                self._notify()

    def on_congestion(self) -> bool:
        """Multiplicative decrease; returns whether a cut happened."""
        now = self._clock()
        if now - self._last_cut < self.hold:
            return False
        self._last_cut = now
        self.limit = max(1.0, self.limit * self.decrease)
        return True
