"""Pacing under the service's rate limits, shared by every worker of a run.

Three mechanisms, each a small class with an injectable clock so tests need no
sleeping:

- :class:`TokenBucket` paces requests at a rate (the spec's ``requests_per_minute``,
  or the rate :class:`RateEstimator` discovers) with a burst.
- :class:`AdaptiveLimit` bounds the tasks in flight at the service: cut
  multiplicatively on congestion (429, timeout), grown additively on success (AIMD).
- :class:`Throttle` ties them to a shared cooldown: a 429 pauses every worker of the
  run together, until ``Retry-After`` when the service sends it, else for a
  full-jitter exponential backoff (:func:`full_jitter`).

The delay computations are pure functions of their inputs; only :meth:`Throttle.acquire`
and :meth:`AdaptiveLimit.acquire` sleep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

__all__ = [
    "AdaptiveLimit",
    "BackoffPolicy",
    "ParkedError",
    "RateEstimator",
    "Throttle",
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

    def refund(self) -> None:
        """Give back a reservation that was not used (the caller was cancelled)."""
        if self._rate is not None:
            self._refill()
            self._tokens = min(self.burst, self._tokens + 1.0)


class RateEstimator:
    """Finds the service's submission rate when the spec does not give one.

    Before the first 429 there is no rate. The first 429 sets a provisional rate from
    what the service accepted so far. After that the estimate moves once per window
    (long enough for ``samples`` answers, between ``min_window`` and ``max_window``),
    and a window with 429s is judged by comparing it with the window before:

    - the pace changed and what the service accepted did not follow it (by less than
      half): that is the limit. The window's accepted rate *is* the service's rate,
      so the estimate goes a little under it (``margin``), by at most a tenth per
      window so one noisy window cannot do much harm;
    - what the service accepted followed the pace, up or down: the 429s do not
      come from the pace but from an upstream busy at random. Treating them as a
      limit would ratchet the rate down to nothing. The rate probes on;
    - the pace did not change: the rate holds.

    Two rules come first. 429s in a window after two clean ones mean the service's
    reserve (its burst) ran out under a pace above its rate: that window measures the
    rate, and the cut is full (the cooldowns that follow 429s slow the pace by
    themselves, so elasticity would misread it). And answers to requests sent before
    the current window began are not counted: after a cut, the 429s still in flight
    from the old pace say nothing about the new one.

    A window without 429s that used its rate probes upward: doubling while far under
    the best accepted rate seen (or with none seen), ``growth`` near it, and half of
    ``growth`` above the rate where the limit was met (twice): clean windows there may
    only be the reserve being spent, so the pace is only a little over the limit
    when it runs out.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        margin: float = 0.95,
        growth: float = 1.10,
        min_window: float = 2.0,
        max_window: float = 120.0,
        samples_per_window: int = 40,
        start_rate: float = 1.0,
        initial_rate: float | None = None,
    ) -> None:
        self._clock = clock
        self.margin = margin
        self.growth = growth
        self.min_window = min_window
        self.max_window = max_window
        self.samples = samples_per_window
        self.start_rate = start_rate
        # With an initial rate, the estimator probes from there (doubling each window
        # that used its rate) instead of starting unlimited: like TCP's slow start, so
        # the first contact with an unknown limit is not a burst of 429s.
        self.rate: float | None = initial_rate
        self.ceiling: float | None = None
        self._limit_seen = False
        self._probing = initial_rate is not None
        self._started: float | None = None
        self._accepted_total = 0
        self._window_start = clock()
        self._accepted = 0
        self._limited = 0
        self._previous: tuple[float, float] | None = None  # sent and accepted per second
        self._clean = 0  # windows in a row without a 429
        self._limit_at: float | None = None  # accepted rate of the last saturated window
        self._limit_confirmed = False  # ... and the one before agreed with it

    def window(self) -> float:
        """The current window length: long enough to hold ``samples`` answers."""
        if self.rate is None:
            return self.min_window
        if self._probing:
            return 1.0  # climbing from the initial rate: no limit met, nothing to measure
        return min(self.max_window, max(self.min_window, self.samples / self.rate))

    def _stale(self, sent_at: float | None) -> bool:
        # The service judged a request when it arrived, just after it was sent: an
        # answer to one sent before this window began says nothing about its pace
        # (answers still in flight when the rate was cut would count against the
        # new rate and cut it again).
        return sent_at is not None and self._limit_seen and sent_at < self._window_start

    def on_accepted(self, sent_at: float | None = None) -> float | None:
        """Record an accepted request (sent at ``sent_at`` on the same clock, when
        known); return the new rate when it changes."""
        if self._started is None:
            self._started = self._clock()
        self._accepted_total += 1
        if self._stale(sent_at):
            return None
        self._accepted += 1
        return self._maybe_close()

    def on_rate_limited(self, sent_at: float | None = None) -> float | None:
        """Record a 429 (see :meth:`on_accepted`); return the new rate when it changes."""
        now = self._clock()
        if self._started is None:
            self._started = now
        if self._stale(sent_at):
            return None
        self._limited += 1
        if not self._limit_seen and self.ceiling is None:
            if self._accepted_total < 10 and self._limited < 5:
                # Too little evidence yet: one early 429 may be a busy upstream, and
                # answers arrive out of order. The cooldown slows things meanwhile.
                return None
            # The accepts so far include the service's initial burst, so this tends
            # to overestimate; the first window, sure to see 429s, measures the rate.
            elapsed = max(0.5, now - self._started)
            self.rate = max(self.start_rate, self._accepted_total / elapsed)
            self._limit_seen = True
            self._probing = False
            self._previous = None  # windows before the limit say nothing about it
            self._reset(now)
            return self.rate
        return self._maybe_close()

    def _maybe_close(self) -> float | None:
        now = self._clock()
        elapsed = now - self._window_start
        if self.rate is None:
            return None
        # The first window after the provisional estimate, most answers refused: that
        # burst-inflated guess is far over the limit, and every second of the window
        # would cost more 429s. Close it now. (Only then: later, a run of refusals can
        # be an upstream busy at random, which must not cut the rate fully.)
        flooded = (
            self._previous is None
            and self._limited >= 10
            and self._limited > self._accepted
            and elapsed >= 0.5
        )
        if elapsed < self.window() and not flooded:
            return None
        sent = self._accepted + self._limited
        sent_rate = sent / elapsed
        accepted_rate = self._accepted / elapsed
        share = self._limited / sent if sent else 0.0
        clean_before = self._clean
        self._clean = 0 if self._limited else self._clean + 1
        previous, self._previous = self._previous, (sent_rate, accepted_rate)
        before = self.rate
        if not self._limited:
            self._probe(sent, elapsed, accepted_rate)
        elif flooded:
            # A window cut short after a few answers: it measures the limit too
            # roughly to hold the probes back later (see _probe).
            self._saturated(accepted_rate, first=True, measured=False)
        elif previous is None or previous[0] <= 0:
            # The first window after the provisional estimate (which the burst
            # inflates): more than a few 429s mean it was over the limit.
            over = self.ceiling is None or sent_rate > self.ceiling * 1.02
            if over and self._limited / sent > 0.05:
                self._saturated(accepted_rate, first=True)
        elif share > 0.05 and clean_before >= 2 and sent_rate >= 0.6 * self.rate:
            # 429s appeared at this pace after clean windows (an upstream busy at random
            # leaves no two windows in a row clean): the service's reserve (burst) ran
            # out under a pace above its rate. Whatever the pace did meanwhile: the
            # cooldowns after 429s slow it by themselves, and what the service
            # accepted then follows, which is not elasticity.
            # Clear evidence, so the cut is full; but only when the window used its
            # rate: sent well under it (the in-flight limit or cooldowns pacing), what
            # was accepted measures us, not the service.
            self._saturated(accepted_rate, first=True)
        else:
            paced = sent_rate / previous[0] - 1.0
            if abs(paced) > 0.03:
                gained = accepted_rate / previous[1] - 1.0 if previous[1] > 0 else paced
                # Elastic: what the service accepted followed the pace (up or down),
                # so the pace, not the service, was the limit.
                if gained / paced >= 0.5:
                    self._probe(sent, elapsed, accepted_rate)
                else:
                    self._saturated(accepted_rate)
        self._reset(now)
        return self.rate if self.rate != before else None

    def _saturated(
        self, accepted_rate: float, *, first: bool = False, measured: bool = True
    ) -> None:
        assert self.rate is not None
        self._probing = False
        self._limit_seen = True
        if accepted_rate <= 0:
            self.rate = max(MIN_RATE, self.rate / 2)
            return
        first = first or self.ceiling is None  # nothing measured yet: trust this window
        # A limit met twice at about the same rate is the service's: probes above it
        # then climb in half steps (see _probe). One measurement is not enough: a
        # window slowed by our own cooldowns under-measures.
        previous = self._limit_at
        self._limit_confirmed = (
            measured and previous is not None and abs(accepted_rate / previous - 1) < 0.15
        )
        self._limit_at = accepted_rate if measured else None
        self.ceiling = accepted_rate
        target = min(self.rate, accepted_rate) * self.margin
        # One noisy window (an upstream busy at random) must not cost more than a
        # tenth of the rate; clear evidence (the first window after the burst-inflated
        # guess, 429s appearing where there were none) may cut fully.
        self.rate = max(MIN_RATE, target if first else max(target, self.rate * 0.9))

    def _probe(self, sent: int, elapsed: float, accepted_rate: float) -> None:
        assert self.rate is not None
        if self.ceiling is not None:
            self.ceiling = max(self.ceiling, accepted_rate)
        if sent < 0.6 * self.rate * elapsed:
            return  # the window did not use the rate it had: no evidence for more
        far_under = self.ceiling is None or self.rate < 0.8 * self.ceiling
        step = 2.0 if far_under else self.growth
        if (
            not far_under
            and not self._limited
            and self._limit_confirmed
            and self._limit_at is not None
            and self.rate >= self._limit_at
        ):
            # Above where the limit was last met, clean windows may only be the
            # service's reserve (burst) being spent: climb in half steps, so that when
            # the reserve is gone the pace is only a little over the limit.
            step = 1.0 + (self.growth - 1.0) / 2
        self.rate = self.rate * step
        if self.ceiling is not None and far_under:
            self.rate = min(self.rate, self.ceiling * self.margin)

    def _reset(self, now: float) -> None:
        self._window_start = now
        self._accepted = 0
        self._limited = 0


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


class Throttle:
    """The shared pacing of one kind of request (submissions, or polls).

    ``acquire()`` returns when the caller may send: after the shared cooldown and its
    token-bucket reservation. Report every outcome: :meth:`on_success`,
    :meth:`on_rate_limited` or :meth:`on_failure` (or :meth:`on_abandoned`). With
    ``rate_per_minute=None`` the rate is discovered, starting unlimited or, with
    ``probe_from`` (requests per second), from that rate doubling while it is used.

    Failures that are not 429s (5xx, connection failures, timeouts) feed a circuit
    breaker: after ``breaker_threshold`` in a row the service is taken to be down,
    every caller waits out a growing shared pause, and only one request at a time
    probes it until one succeeds. Failures while the breaker is open are the
    outage's, not the task's: :meth:`on_failure` says so, so a minute-long outage does
    not use up every task's attempts.
    """

    def __init__(
        self,
        *,
        rate_per_minute: float | None,
        burst: float | None = None,
        discover: bool = True,
        probe_from: float | None = None,
        backoff: BackoffPolicy | None = None,
        breaker_backoff: BackoffPolicy | None = None,
        breaker_threshold: int = 3,
        max_pause: float = 600.0,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or anyio.current_time
        self._rng = rng or random.Random()
        self.backoff = backoff or BackoffPolicy()
        self.breaker_backoff = breaker_backoff or BackoffPolicy(base=1.0, cap=20.0)
        self.breaker_threshold = breaker_threshold
        self.max_pause = max_pause
        rate = None if rate_per_minute is None else rate_per_minute / 60.0
        self.estimator = (
            RateEstimator(clock=self._clock, initial_rate=probe_from)
            if rate is None and discover
            else None
        )
        if self.estimator is not None:
            rate = self.estimator.rate  # the probing start, when there is one
        self.bucket = TokenBucket(rate, burst if burst is not None else 1.0, clock=self._clock)
        self.paused_until = -math.inf
        self.consecutive_limited = 0
        self.consecutive_failures = 0
        self._escalations = 0
        self.rate_limited = 0
        self._probing = False
        self._changed = anyio.Event()

    @property
    def rate_per_minute(self) -> float | None:
        """The pacing rate in requests per minute (``None``: not limited yet)."""
        rate = self.bucket.rate
        return None if rate is None else rate * 60.0

    @property
    def breaker_open(self) -> bool:
        """Whether the service is taken to be down (only probes go out)."""
        return self.consecutive_failures >= self.breaker_threshold

    def cooldown_remaining(self) -> float:
        """Seconds until the shared cooldown ends (0 when not cooling down)."""
        return max(0.0, self.paused_until - self._clock())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_clear(self) -> None:
        while True:
            remaining = self.cooldown_remaining()
            if remaining > 0:
                with anyio.move_on_after(remaining):
                    await self._changed.wait()
                continue
            if self.breaker_open and self._probing:
                await self._changed.wait()
                continue
            return

    async def acquire(self) -> None:
        """Wait for the cooldown, the breaker and a token; cancellation gives it back."""
        await self._wait_clear()
        while True:
            epoch = self.bucket.epoch
            wait = self.bucket.reserve()
            if wait > 0:
                try:
                    await anyio.sleep(wait)
                except BaseException:
                    self.bucket.refund()
                    raise
            # A 429 seen by another caller while we slept pauses us too.
            await self._wait_clear()
            if self.bucket.epoch == epoch:
                break
            # The rate was lowered meanwhile: our slot was priced at the old rate, and
            # every caller sent on it would be an answer the service refuses.
        if self.breaker_open:
            self._probing = True

    def _settle(self) -> None:
        if self._probing:
            self._probing = False
            self._notify()

    def on_success(self, sent_at: float | None = None) -> None:
        """An accepted request: close the breaker, reset backoff, feed the estimator.

        ``sent_at`` is when the request left (this throttle's clock), when known.
        """
        self.consecutive_limited = 0
        if self.consecutive_failures:
            self.consecutive_failures = 0
            self._escalations = 0
            self.paused_until = min(self.paused_until, self._clock())
        self._settle()
        if self.estimator is not None:
            rate = self.estimator.on_accepted(sent_at)
            if rate is not None:
                self.bucket.set_rate(rate)

    def on_abandoned(self) -> None:
        """The caller acquired but never learned the outcome (cancelled)."""
        self._settle()

    def pause_for(self, retry_after: float | None) -> float:
        """The pause a 429 calls for: ``Retry-After`` if given, else full jitter.

        Pure apart from the random draw; changes no state.
        """
        if retry_after is not None:
            return retry_after
        rate = self.bucket.rate
        policy = self.backoff
        if rate is not None:
            # Back off in units of the pacing interval, so a fast limit is not
            # punished with pauses meant for a slow one.
            policy = BackoffPolicy(base=min(policy.base, max(0.05, 1.0 / rate)), cap=policy.cap)
        return full_jitter(policy, self.consecutive_limited, self._rng)

    def on_rate_limited(self, retry_after: float | None, sent_at: float | None = None) -> float:
        """A 429: pause every caller, adjust the rate. Returns the pause in seconds.

        Raises ParkedError when the service asks for longer than ``max_pause``.
        """
        self.rate_limited += 1
        self._settle()
        if retry_after is not None and retry_after > self.max_pause:
            raise ParkedError(retry_after)
        if self.estimator is not None:
            rate = self.estimator.on_rate_limited(sent_at)
            if rate is not None:
                self.bucket.set_rate(rate)
        delay = self.pause_for(retry_after)
        self.consecutive_limited += 1
        self.paused_until = max(self.paused_until, self._clock() + delay)
        self.bucket.drain()
        return delay

    def on_failure(self) -> bool:
        """A 5xx, connection failure or timeout. Returns whether it counts for the task.

        It does not count when the breaker was already open: the service is down.
        """
        counted = not self.breaker_open
        if counted or self.cooldown_remaining() <= 0:
            # While a pause runs, failures are answers to requests sent before it: they
            # say nothing new, so only the probe sent after the pause escalates it.
            self.consecutive_failures += 1
            self._escalations += 1 if self.breaker_open else 0
        self._settle()
        if self.breaker_open and self.cooldown_remaining() <= 0:
            n = self._escalations - 1
            ceiling = min(self.breaker_backoff.cap, self.breaker_backoff.base * 2.0 ** min(n, 30))
            # Equal jitter: never less than half the step, so probes really spread out.
            delay = ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
            self.paused_until = max(self.paused_until, self._clock() + delay)
        return counted
