"""Discovering the service's submission rate when the spec does not state it."""

from __future__ import annotations

from batchgen.runner.pacing import MIN_RATE, Clock

__all__ = ["RateEstimator"]


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
