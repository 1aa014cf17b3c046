"""Pacing under the service's rate limits, shared by every worker of a run.

Three mechanisms, each a small class with an injectable clock so tests need no
sleeping:

- :class:`~.pacing.TokenBucket` paces requests at a rate (the spec's ``requests_per_minute``,
  or the rate :class:`~.discovery.RateEstimator` discovers) with a burst.
- :class:`~.pacing.AdaptiveLimit` bounds the tasks in flight at the service: cut
  multiplicatively on congestion (429, timeout), grown additively on success (AIMD).
- :class:`Throttle` ties them to a shared cooldown: a 429 pauses every worker of the
  run together, until ``Retry-After`` when the service sends it, else for a
  full-jitter exponential backoff (:func:`~.pacing.full_jitter`).

The delay computations are pure functions of their inputs; only :meth:`Throttle.acquire`
and ``AdaptiveLimit.acquire`` sleep.
"""

from __future__ import annotations

import math
import random

import anyio

from batchgen.errors import StatedLimit
from batchgen.runner.discovery import RateEstimator
from batchgen.runner.pacing import BackoffPolicy, Clock, ParkedError, TokenBucket, full_jitter
from batchgen.runner.service_limit import POLL, SUBMIT, ServiceLimit
from batchgen.runner.window import REFUSED, SUCCESS, Permit

__all__ = ["Throttle"]


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
        limit: ServiceLimit | None = None,
        kind: str = SUBMIT,
    ) -> None:
        self._clock: Clock = clock or anyio.current_time
        self.limit = limit
        self.kind = kind
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
        self._windowed = False  # the service's window paces these requests now
        self._gated = False  # finding a gateway's limit: a few in flight, no slow start

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

    async def acquire(self) -> Permit | None:
        """Wait for the cooldown, the breaker and a token, or a slot of the service's
        window when it has one (returned: settle it with the answer, see
        :mod:`.window`); cancellation gives either back."""
        await self._wait_clear()
        permit = await self._window_slot()
        try:
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
            if (
                self.limit is not None
                and self.limit.window_for(self.kind)
                and (permit is None or permit.window is self.limit.gate)
            ):
                if permit is not None:
                    permit.settle(REFUSED)  # not sent: its place in the gate is free
                # The window became known while this caller waited on the bucket: it
                # paces from now on, this request included.
                permit = await self._window_slot()
            await self._total_token()
        except BaseException:
            if permit is not None:
                permit.settle(REFUSED)
            if self.kind == POLL and self.limit is not None:
                self.limit.poll_failed()  # not sent: give its poll probe (if any) back
            raise
        if self.breaker_open:
            self._probing = True
        return permit

    async def _window_slot(self) -> Permit | None:
        limit = self.limit
        if limit is None:
            return None
        if self.kind == POLL:
            while not limit.poll_may_go():  # a poll probe is out: wait for its answer
                await self._changed.wait()
            # Claimed before anything else is awaited: no other poll passes while this
            # one waits for a token.
            limit.poll_sent()
        if self.kind == SUBMIT and (contact := await limit.first_contact()) is not None:
            return contact
        window = limit.window_for(self.kind)
        if window is None:
            if limit.discovering(self.kind):
                self._use_gate()
                return await limit.gate.acquire()
            return None
        self._use_window()
        return await window.acquire(priority=self.kind == POLL)

    def _use_gate(self) -> None:
        """A new-api gateway's limit is being found: its first window takes N at once,
        so no slow start; the gate keeps a few in flight instead."""
        if not self._gated:
            self._gated = True
            self.estimator = None  # a sliding log has no rate to discover
            self.bucket.set_rate(None)

    async def _total_token(self) -> None:
        total = self.limit.total if self.limit is not None else None
        if total is not None and (wait := total.reserve()) > 0:
            try:
                await anyio.sleep(wait)
            except BaseException:
                total.refund()
                raise

    @property
    def windowed(self) -> bool:
        """Whether the service's own window paces these requests (no guessing)."""
        return self.limit is not None and self.limit.window_for(self.kind) is not None

    def _use_window(self) -> None:
        """The service's window paces from now on: rate discovery has nothing to find."""
        if not self._windowed:
            self._windowed = True
            self.estimator = None
            self.bucket.set_rate(None)

    def _settle(self) -> None:
        if self._probing:
            self._probing = False
            self._notify()

    def on_success(
        self,
        sent_at: float | None = None,
        permit: Permit | None = None,
        *,
        hold: bool = False,
        record: bool = True,
    ) -> None:
        """An accepted request: close the breaker, reset backoff, feed the estimator.

        ``sent_at`` is when the request left (this throttle's clock), when known.
        ``permit`` is the window slot it held: settled now, unless ``hold`` (a stream,
        which the gateway records when it ends: call :meth:`on_stream_end` then).
        ``record=False``: the service answered (it is up) with an error whose slot was
        already settled (:meth:`on_abandoned`); only the breaker learns from it.
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
        limit = self.limit
        if hold and permit is not None and limit is not None and permit.window is limit.gate:
            permit.settle(SUCCESS)  # the gate bounds answers pending, not open streams
        if record and not hold:
            self._recorded(permit)

    def on_stream_end(self, permit: Permit | None) -> None:
        """A stream accepted earlier (``on_success(hold=True)``) ended: now it counts."""
        self._recorded(permit)

    def _recorded(self, permit: Permit | None) -> None:
        limit = self.limit
        if limit is None:
            return
        limit.record_success(self.kind)
        window = limit.window_for(self.kind)
        if permit is not None and permit.window is window:
            permit.settle(SUCCESS)
        else:
            if permit is not None:
                permit.settle(SUCCESS)  # the gate's
            if window is not None:
                window.observe(self._clock())  # sent before the window was known
        self._notify()

    def on_abandoned(self, permit: Permit | None = None, outcome: str = REFUSED) -> None:
        """The caller acquired but never learned the outcome (cancelled), did not send
        at all, or got an answer other than a success: its window slot (if any) is
        settled as ``outcome`` (:func:`.window.outcome_of`)."""
        self._settle()
        if permit is not None:
            permit.settle(outcome)
        elif (
            outcome != REFUSED
            and self.limit is not None
            and (window := self.limit.window_for(self.kind)) is not None
        ):
            window.observe(self._clock())  # sent before the window was known
        if self.limit is not None:
            if outcome == SUCCESS:  # an answer below 400 that is still an error
                self.limit.record_success(self.kind)
            if self.kind == POLL:
                self.limit.poll_failed()
        self._notify()

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

    def on_rate_limited(
        self,
        retry_after: float | None,
        sent_at: float | None = None,
        *,
        limit: StatedLimit | None = None,
        empty: bool = False,
        server: str | None = None,
        permit: Permit | None = None,
    ) -> float:
        """A 429: pause every caller, adjust the rate. Returns the pause in seconds.

        ``limit``, ``empty`` and ``server`` are what the answer says of the service's
        limiter (see :class:`~batchgen.errors.RateLimitError`); when it is the
        gateway's, the shared :class:`.service_limit.ServiceLimit` learns from it and
        its window paces from then on. Raises ParkedError when the service asks for
        longer than ``max_pause``.
        """
        self.rate_limited += 1
        self._settle()
        if permit is not None:
            permit.settle(REFUSED)  # the gateway records only answers below 400
        if self.kind == POLL and self.limit is not None:
            self.limit.poll_failed()
        self._notify()
        if retry_after is not None and retry_after > self.max_pause:
            raise ParkedError(retry_after)
        if self.limit is not None:
            pause = self.limit.learn(
                self.kind,
                limit=limit,
                empty=empty,
                server=server,
                retry_after=retry_after,
                paced=permit is not None and permit.window is self.limit.window,
            )
            if pause is not None:
                if self.limit.window_for(self.kind) is not None:
                    self._use_window()
                if pause > self.max_pause:
                    raise ParkedError(pause)
                self.paused_until = max(self.paused_until, self._clock() + pause)
                self._notify()
                return pause
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
