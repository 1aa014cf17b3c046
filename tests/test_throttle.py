"""Unit tests for batchgen.runner pacing: delays, the bucket, the estimator, AIMD, the breaker.

Every component takes an injected clock (:class:`FakeClock`), so pacing is checked by
arithmetic instead of by sleeping. The few tests that must await ``acquire`` either
arrange for no wait at all or wait a few real milliseconds while the fake clock
decides the outcome; task coordination uses ``wait_all_tasks_blocked``, never sleeps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.runner.discovery import RateEstimator
from batchgen.runner.pacing import (
    MIN_RATE,
    AdaptiveLimit,
    BackoffPolicy,
    ParkedError,
    TokenBucket,
    full_jitter,
)
from batchgen.runner.throttle import Throttle


class FakeClock:
    """A clock that only moves when the test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


class TopRandom(random.Random):
    """A Random whose ``uniform(a, b)`` always returns ``b``: exposes the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- full_jitter -------------------------------------------------------------------------


@settings(derandomize=True, max_examples=300)
@given(
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
    attempt=st.integers(min_value=0, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_stays_within_bounds(base: float, cap: float, attempt: int, seed: int) -> None:
    """Every delay lies in [0, min(cap, base * 2**attempt)], even for huge attempt numbers."""
    delay = full_jitter(BackoffPolicy(base=base, cap=cap), attempt, random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    assert math.isfinite(delay)
    assert 0.0 <= delay <= ceiling


def test_full_jitter_is_deterministic_for_a_seeded_rng() -> None:
    """Two generators with the same seed give the same delays: uniform(0, ceiling) draws."""
    policy = BackoffPolicy(base=0.5, cap=8.0)
    first = [full_jitter(policy, n, random.Random(7)) for n in range(10)]
    second = [full_jitter(policy, n, random.Random(7)) for n in range(10)]
    reference = [random.Random(7).uniform(0.0, min(8.0, 0.5 * 2.0**n)) for n in range(10)]
    assert first == second == reference


def test_full_jitter_ceiling_doubles_then_caps() -> None:
    """The ceiling is base * 2**n until it reaches cap, then stays at cap."""
    policy = BackoffPolicy(base=0.5, cap=6.0)
    ceilings = [full_jitter(policy, n, TopRandom()) for n in range(6)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]


# --- TokenBucket -------------------------------------------------------------------------


def test_bucket_serves_the_burst_then_paces_callers_in_order() -> None:
    """After the burst, the n-th extra reservation waits n / rate: callers queue, not collide."""
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=3, clock=clock)
    waits = [bucket.reserve() for _ in range(7)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    """Elapsed time adds rate * dt tokens, but never more than the burst."""
    clock = FakeClock()
    bucket = TokenBucket(4.0, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    clock.advance(0.25)  # one token back
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.25)
    clock.advance(100.0)  # long idle: refilled to the burst only
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25)]


def test_bucket_refund_gives_a_reservation_back() -> None:
    """A refunded reservation frees its slot, so the next caller waits one interval less."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == 1.0
    bucket.refund()
    assert bucket.reserve() == 1.0


def test_bucket_refund_never_exceeds_the_burst() -> None:
    """Refunds on a full bucket do not grow it past the burst."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=2, clock=clock)
    for _ in range(5):
        bucket.refund()
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]


def test_bucket_drain_empties_it_but_keeps_queued_reservations() -> None:
    """drain() removes spare tokens; a bucket already in debt keeps its queue."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=5, clock=clock)
    bucket.drain()
    assert bucket.reserve() == 1.0
    bucket.reserve()  # now two reservations ahead
    bucket.drain()  # must not forgive the debt
    assert bucket.reserve() == 3.0


def test_bucket_set_rate_paces_at_the_new_rate_and_keeps_given_reservations() -> None:
    """set_rate applies to new reservations; those already handed out stand."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == 1.0  # one token of debt
    bucket.set_rate(4.0)
    assert bucket.rate == 4.0
    assert bucket.reserve() == pytest.approx(0.5)  # two tokens of debt at 4/s


def test_bucket_set_rate_clamps_to_the_minimum_and_can_shrink_the_burst() -> None:
    """A rate below MIN_RATE is raised to it; a smaller burst caps the saved tokens."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=10, clock=clock)
    bucket.set_rate(0.0)
    assert bucket.rate == MIN_RATE
    bucket.set_rate(1.0, burst=2)
    assert bucket.burst == 2
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]


def test_unlimited_bucket_never_waits() -> None:
    """With rate None every reservation is free, and refund/drain change nothing."""
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock)
    bucket.drain()
    assert all(bucket.reserve() == 0.0 for _ in range(10_000))
    bucket.refund()
    assert bucket.rate is None


def test_bucket_switches_between_unlimited_and_paced() -> None:
    """set_rate(None) lifts the limit; setting a rate again paces from the next call."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=1, clock=clock)
    bucket.set_rate(None)
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    bucket.set_rate(2.0)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("rate", [0.0, 1e-6])
def test_bucket_constructor_clamps_the_rate_like_set_rate(rate: float) -> None:
    """A bucket built with a rate below MIN_RATE paces at MIN_RATE, as set_rate does."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() <= 1.0 / MIN_RATE


# --- RateEstimator -----------------------------------------------------------------------


def test_estimator_is_unlimited_before_the_first_429() -> None:
    """However many requests are accepted, no rate is imposed until a 429 arrives."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock)
    for _ in range(5_000):
        clock.advance(0.01)
        assert estimator.on_accepted() is None
    assert estimator.rate is None
    assert estimator.ceiling is None


def test_estimator_first_429_sets_the_rate_from_the_accepts_so_far() -> None:
    """The first 429 sets the rate to the accepts per second since the first request."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, margin=0.9)
    for _ in range(50):
        estimator.on_accepted()
    clock.advance(4.5)
    for _ in range(10):
        clock.advance(0.05)
        estimator.on_accepted()
    assert estimator.on_rate_limited() == pytest.approx(60 / 5.0)
    assert estimator.rate == pytest.approx(12.0)


def test_estimator_waits_for_evidence_before_the_first_estimate() -> None:
    """A lone early 429 sets no rate; five of them with no accept start at start_rate."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, start_rate=1.0)
    assert [estimator.on_rate_limited() for _ in range(4)] == [None] * 4
    assert estimator.rate is None
    assert estimator.on_rate_limited() == pytest.approx(1.0)
    assert estimator.window() == pytest.approx(40.0)  # samples / rate


def test_estimator_window_holds_enough_samples() -> None:
    """The window is samples / rate seconds, never shorter than min_window."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, min_window=2.0, samples_per_window=20)
    assert estimator.window() == 2.0
    estimator.rate = 4.0
    assert estimator.window() == 5.0
    estimator.rate = 100.0
    assert estimator.window() == 2.0


def test_estimator_probes_upward_only_after_a_window_that_used_its_rate() -> None:
    """A clean window grows the rate by ``growth``; an idle clean window leaves it alone."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, growth=1.1, min_window=2.0, samples_per_window=20)
    estimator.rate = 10.0
    estimator.ceiling = 10.5  # near the known ceiling: a gentle probe
    for _ in range(20):  # 10/s for 2 s: the window used its rate
        clock.advance(0.1)
        estimator.on_accepted()
    assert estimator.rate == pytest.approx(11.0)
    clock.advance(10.0)  # idle: one accept in a long window
    assert estimator.on_accepted() is None
    assert estimator.rate == pytest.approx(11.0)


def test_estimator_429s_that_follow_the_pace_do_not_cut() -> None:
    """429s whose accepted count rises with the pace (a busy upstream) never cut the rate."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, min_window=2.0, samples_per_window=20)
    estimator.rate = 9.0
    estimator.ceiling = 10.0
    sent = 0
    while clock.now < 600.0:
        rate = estimator.rate
        assert rate is not None
        clock.advance(1.0 / rate)
        sent += 1
        if sent % 10 == 0:  # one in ten refused, whatever the pace
            estimator.on_rate_limited()
        else:
            estimator.on_accepted()
        assert estimator.rate is not None
        assert estimator.rate >= 9.0


def _window(estimator: RateEstimator, clock: FakeClock, accepted: int, limited: int) -> None:
    """Feed one window's answers evenly over its length (its requests sent just now)."""
    total = accepted + limited
    rate = estimator.rate
    assert rate is not None
    length = max(estimator.window(), total / rate)
    for i in range(total):
        clock.advance(length / total * 1.001)  # the last answer lands past the end
        if i < limited:
            estimator.on_rate_limited(sent_at=clock.now)
        else:
            estimator.on_accepted(sent_at=clock.now)


def _limited_estimator(clock: FakeClock, rate: float) -> RateEstimator:
    """An estimator that has met the limit once (a first estimate made)."""
    estimator = RateEstimator(clock=clock, min_window=2.0, samples_per_window=20)
    for _ in range(5):
        estimator.on_rate_limited()
    estimator.rate = rate
    estimator.ceiling = rate
    return estimator


def test_estimator_ignores_answers_to_requests_sent_before_the_window() -> None:
    """After a cut, 429s still in flight from the old pace do not cut the new rate again."""
    clock = FakeClock(10.0)
    estimator = _limited_estimator(clock, 5.0)
    estimator.on_accepted(sent_at=clock.now)  # opens nothing: the window runs
    clock.advance(1.0)
    old = clock.now - 5.0  # sent under the previous window's pace
    for _ in range(30):
        assert estimator.on_rate_limited(sent_at=old) is None
    assert estimator.rate == 5.0
    # Without a send time (or sent inside the window) they do count.
    for _ in range(30):
        estimator.on_rate_limited(sent_at=clock.now)
    assert estimator.rate is not None
    assert estimator.rate < 5.0


def test_estimator_cuts_fully_when_429s_follow_clean_windows() -> None:
    """429s after two clean windows are the service's reserve running out: one full cut
    to just under what it accepted, not a tenth at a time."""
    clock = FakeClock()
    estimator = _limited_estimator(clock, 10.0)
    estimator.ceiling = 10.5
    _window(estimator, clock, 20, 0)  # clean: probes to 11
    _window(estimator, clock, 22, 0)  # clean: probes to 12.1
    rate = estimator.rate
    assert rate is not None
    assert rate > 11.5
    _window(estimator, clock, 20, 5)  # the reserve is gone: 20 accepted in ~2.07 s
    accepted_rate = 20 / (25 / rate)
    assert estimator.rate == pytest.approx(accepted_rate * estimator.margin, rel=0.01)


def test_estimator_429s_in_a_window_that_did_not_use_its_rate_cut_gently() -> None:
    """429s after clean windows, but sent far under the rate (the in-flight limit or
    the cooldowns paced the run): what was accepted measures us, so no full cut."""
    clock = FakeClock()
    estimator = _limited_estimator(clock, 10.0)
    estimator.ceiling = 10.5
    _window(estimator, clock, 20, 0)
    _window(estimator, clock, 22, 0)
    rate = estimator.rate
    assert rate is not None
    length = estimator.window()
    for i in range(10):  # 10 answers in a whole window: under half the rate
        clock.advance(length / 10 * 1.001)
        if i < 2:
            estimator.on_rate_limited(sent_at=clock.now)
        else:
            estimator.on_accepted(sent_at=clock.now)
    assert estimator.rate is not None
    assert estimator.rate >= 0.9 * rate * 0.999


def test_estimator_a_later_run_of_refusals_cuts_gently() -> None:
    """Most answers refused in a window that is not the first after the estimate (an
    upstream busy at random, in a streak) costs at most a tenth of the rate."""
    clock = FakeClock()
    estimator = _limited_estimator(clock, 10.0)
    _window(estimator, clock, 15, 5)  # busy at random: a quarter refused
    before = estimator.rate
    assert before is not None
    _window(estimator, clock, 8, 12)  # a streak: more refused than accepted
    assert estimator.rate is not None
    assert estimator.rate >= 0.9 * before * 0.999


def test_estimator_climbs_in_half_steps_above_a_limit_met_twice() -> None:
    """Over the rate where the limit was met twice (at about the same rate), clean
    windows raise the rate by half of ``growth``: they may only be the service's reserve
    being spent. After the first meeting the steps stay whole (one window slowed by
    our own cooldowns under-measures)."""
    clock = FakeClock()
    estimator = _limited_estimator(clock, 10.0)
    estimator.ceiling = 10.5
    half = 1 + (estimator.growth - 1) / 2

    def clean_steps(count: int) -> list[float]:
        steps = []
        for _ in range(count):
            rate = estimator.rate
            assert rate is not None
            _window(estimator, clock, max(20, int(rate * 2) + 1), 0)
            assert estimator.rate is not None
            steps.append(estimator.rate / rate)
        return steps

    clean_steps(2)
    _window(estimator, clock, 20, 5)  # the limit met once: a full cut
    first = clean_steps(3)
    assert first == [pytest.approx(estimator.growth)] * 3  # whole steps, even above it
    _window(estimator, clock, 20, 5)  # met again at about the same rate
    limit_at = estimator.ceiling
    assert limit_at is not None
    steps = clean_steps(4)
    rates = [estimator.rate]
    assert steps[0] == pytest.approx(estimator.growth)  # from under the limit met
    assert steps[1:] == [pytest.approx(half)] * 3
    assert rates[0] is not None
    assert rates[0] > limit_at


def test_estimator_a_flooded_first_window_does_not_slow_the_climb() -> None:
    """The first window after the estimate, cut short by a flood of 429s, measures the
    limit too roughly to hold probes to half steps afterwards."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, min_window=2.0, samples_per_window=20)
    for _ in range(20):
        clock.advance(0.01)
        estimator.on_accepted()
    for _ in range(5):
        estimator.on_rate_limited()  # the first estimate: far over the limit
    first = estimator.rate
    for i in range(40):  # a flood: 2 accepted, then refusals until the window closes
        clock.advance(0.1)
        if i < 2:
            estimator.on_accepted(sent_at=clock.now)
        elif estimator.on_rate_limited(sent_at=clock.now) is not None:
            break
    rate = estimator.rate
    assert rate is not None
    assert first is not None
    assert rate < first / 5  # cut fully
    # Climbed back past what the flood measured, near the best seen: a growth step,
    # not half of one.
    estimator.rate = rate * 1.3
    estimator.ceiling = rate * 1.35
    _window(estimator, clock, max(20, int(rate * 3) + 1), 0)
    assert estimator.rate == pytest.approx(rate * 1.3 * estimator.growth)


def test_bucket_lowering_the_rate_voids_reservations() -> None:
    """A lower rate bumps ``epoch`` and forgives the debt of reservations made at the old
    rate; a higher one lets them stand."""
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=1, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[-1] == pytest.approx(0.4)
    bucket.set_rate(20.0)
    assert bucket.epoch == 0
    assert bucket.reserve() == pytest.approx(5 / 20)  # the debt stands, paced at 20/s
    bucket.set_rate(1.0)
    assert bucket.epoch == 1
    assert bucket.reserve() == pytest.approx(1.0)  # a fresh start at the new rate


@pytest.mark.anyio
async def test_acquire_reserves_again_after_the_rate_was_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers asleep on reservations made at the old rate re-reserve at the new one."""
    clock = FakeClock()
    throttle = Throttle(rate_per_minute=600.0, burst=1, clock=clock)
    passed: list[float] = []

    async def caller() -> None:
        await throttle.acquire()
        passed.append(clock.now)

    gate = anyio.Event()

    async def gated_sleep(seconds: float) -> None:
        await gate.wait()  # the fake clock, not real time, says when sleepers wake

    monkeypatch.setattr(anyio, "sleep", gated_sleep)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            # The first went at once; three reserved 0.1, 0.2 and 0.3 s ahead.
            assert passed == [0.0]
            throttle.bucket.set_rate(1.0)  # cut while they sleep
            clock.advance(0.3)
            gate.set()
    monkeypatch.undo()
    assert len(passed) == 4
    # After the cut each of the three took a new slot at 1/s: the bucket owes for them.
    assert throttle.bucket.reserve() >= 2.0


@dataclass
class SimResult:
    """What a simulated run observed after its warm-up."""

    rates: list[float] = field(default_factory=list)
    cuts: list[float] = field(default_factory=list)
    accepted: int = 0
    limited: int = 0
    seconds: float = 0.0


def simulate(
    *,
    limit: float | None,
    burst: float,
    refuse_share: float,
    offered: float,
    duration: float,
    warmup: float,
    seed: int = 0,
) -> SimResult:
    """Drive a discovering Throttle against a fake service on a fake clock.

    The client sends as fast as the throttle allows (its cooldown, then its bucket),
    but never faster than ``offered`` per second. The service refuses with a 429
    when its own token bucket (``limit``/s, ``burst``) is empty, and also at random
    with probability ``refuse_share`` (a busy upstream).
    """
    clock = FakeClock()
    throttle = Throttle(rate_per_minute=None, rng=random.Random(seed), clock=clock)
    service_rng = random.Random(seed + 1)
    tokens, stamp, last = burst, 0.0, -math.inf
    result = SimResult()
    previous_rate: float | None = None
    while clock.now < duration:
        clock.advance(throttle.cooldown_remaining())
        clock.advance(throttle.bucket.reserve())
        clock.now = max(clock.now, last + 1.0 / offered)
        last = clock.now
        accepted = True
        if limit is not None:
            tokens = min(burst, tokens + (clock.now - stamp) * limit)
            stamp = clock.now
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                accepted = False
        if accepted and service_rng.random() < refuse_share:
            accepted = False
        if accepted:
            throttle.on_success()
        else:
            throttle.on_rate_limited(None)
        rate = throttle.rate_per_minute
        per_second = None if rate is None else rate / 60.0
        if clock.now >= warmup:
            result.accepted += accepted
            result.limited += not accepted
            if per_second is not None:
                result.rates.append(per_second)
                if previous_rate is not None and per_second < previous_rate:
                    result.cuts.append(per_second)
        previous_rate = per_second
    result.seconds = duration - warmup
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimator_converges_under_a_true_limit_and_stays_there(seed: int) -> None:
    """Against a 10/s (burst 20) service the rate settles just under 10/s and stays near it."""
    result = simulate(
        limit=10.0,
        burst=20.0,
        refuse_share=0.0,
        offered=50.0,
        duration=600.0,
        warmup=60.0,
        seed=seed,
    )
    assert result.cuts, "the limit is probed, so it is found again from time to time"
    # Each estimate lands near the limit (a window may include the burst's refill).
    assert all(9.0 <= cut <= 11.5 for cut in result.cuts)
    assert all(8.5 <= rate <= 13.0 for rate in result.rates)  # probes stay close (10% steps)
    assert 9.0 <= sum(result.rates) / len(result.rates) <= 11.0
    assert result.accepted / result.seconds >= 9.5  # the service's rate is used
    assert result.limited / (result.accepted + result.limited) < 0.05  # 429s stay rare


def test_estimator_does_not_collapse_under_random_429s() -> None:
    """With no real limit and 10% random 429s the rate stays at least 80% of what is sent."""
    offered = 20.0
    result = simulate(
        limit=None, burst=0.0, refuse_share=0.1, offered=offered, duration=600.0, warmup=60.0
    )
    sent_per_second = (result.accepted + result.limited) / result.seconds
    assert sent_per_second >= 0.8 * offered
    assert all(rate >= 0.8 * offered for rate in result.rates)


# --- AdaptiveLimit -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_limit_bounds_tasks_in_flight() -> None:
    """acquire() lets at most ``current`` callers in; release() admits the next one."""
    limit = AdaptiveLimit(2, clock=FakeClock())
    entered: list[int] = []

    async def worker(i: int) -> None:
        await limit.acquire()
        entered.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(worker, i)
        await anyio.wait_all_tasks_blocked()
        assert entered == [0, 1]
        assert limit.in_use == 2
        limit.release()
        await anyio.wait_all_tasks_blocked()
        assert entered == [0, 1, 2]
    assert limit.in_use == 2


@pytest.mark.anyio
async def test_limit_growth_wakes_a_waiting_caller() -> None:
    """When successes raise the limit, a caller blocked in acquire() gets the new slot."""
    limit = AdaptiveLimit(5, initial=1, clock=FakeClock())
    await limit.acquire()
    got_in = anyio.Event()

    async def waiter() -> None:
        await limit.acquire()
        got_in.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not got_in.is_set()
        limit.on_success()  # 1 -> 2
        await anyio.wait_all_tasks_blocked()
        assert got_in.is_set()
    assert limit.in_use == 2


def test_limit_release_never_goes_negative() -> None:
    """Extra release() calls leave in_use at zero."""
    limit = AdaptiveLimit(3, clock=FakeClock())
    limit.release()
    limit.release()
    assert limit.in_use == 0


@pytest.mark.parametrize("start", [1, 2, 4, 8])
def test_limit_grows_by_one_per_window_of_successes(start: int) -> None:
    """From limit L, one slot is added after about L successes (L - 1 are not enough)."""
    limit = AdaptiveLimit(100, initial=start, clock=FakeClock())
    for _ in range(start - 1):
        limit.on_success()
    assert limit.current == start
    # The increment is 1/limit per success, so the window is L or L + 1 successes.
    limit.on_success()
    if limit.current == start:
        limit.on_success()
    assert limit.current == start + 1


def test_limit_never_grows_past_its_maximum() -> None:
    """Successes stop adding slots at ``maximum``."""
    limit = AdaptiveLimit(3, initial=1, clock=FakeClock())
    for _ in range(100):
        limit.on_success()
    assert limit.current == 3
    assert limit.limit == 3.0


def test_limit_initial_is_clamped() -> None:
    """initial is capped at maximum, and maximum is at least one."""
    assert AdaptiveLimit(4, initial=10, clock=FakeClock()).current == 4
    assert AdaptiveLimit(0, clock=FakeClock()).current == 1
    assert AdaptiveLimit(8, initial=3, clock=FakeClock()).current == 3


def test_limit_congestion_cuts_by_the_factor_down_to_one() -> None:
    """Each congestion signal multiplies the limit by 0.7; it never drops below 1."""
    clock = FakeClock()
    limit = AdaptiveLimit(10, clock=clock)
    currents = []
    for _ in range(8):
        assert limit.on_congestion()
        currents.append(limit.current)
        clock.advance(1.0)
    assert currents == [7, 4, 3, 2, 1, 1, 1, 1]
    assert limit.limit == 1.0


def test_limit_cuts_at_most_once_per_hold() -> None:
    """Congestion within ``hold`` seconds of the last cut is ignored: one burst, one cut."""
    clock = FakeClock()
    limit = AdaptiveLimit(10, hold=2.0, clock=clock)
    assert limit.on_congestion()
    for _ in range(5):
        clock.advance(0.3)
        assert not limit.on_congestion()
    assert limit.current == 7
    clock.now = 2.0
    assert limit.on_congestion()
    assert limit.current == 4


# --- Throttle: cooldown and backoff ------------------------------------------------------


def unlimited_throttle(
    clock: FakeClock,
    *,
    backoff: BackoffPolicy | None = None,
    breaker_backoff: BackoffPolicy | None = None,
    breaker_threshold: int = 3,
    max_pause: float = 600.0,
    rng: random.Random | None = None,
) -> Throttle:
    """A throttle with no token bucket and no discovery, so only the cooldown paces."""
    return Throttle(
        rate_per_minute=None,
        discover=False,
        backoff=backoff,
        breaker_backoff=breaker_backoff,
        breaker_threshold=breaker_threshold,
        max_pause=max_pause,
        rng=rng or random.Random(0),
        clock=clock,
    )


@pytest.mark.anyio
async def test_retry_after_pauses_every_caller_until_then() -> None:
    """A 429 with Retry-After holds back every acquire() until that time has passed."""
    clock = FakeClock(100.0)
    throttle = unlimited_throttle(clock)
    assert throttle.on_rate_limited(0.02) == 0.02
    assert throttle.cooldown_remaining() == pytest.approx(0.02)
    passed: list[int] = []

    async def caller(i: int) -> None:
        await throttle.acquire()
        passed.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(caller, i)
            await anyio.wait_all_tasks_blocked()
            assert passed == []  # the fake clock has not moved: nobody may go
            clock.advance(0.01)
            assert throttle.cooldown_remaining() == pytest.approx(0.01)
            await anyio.wait_all_tasks_blocked()
            assert passed == []
            clock.advance(0.5)  # well past the end: no float rounding can hold them
    assert sorted(passed) == [0, 1, 2]
    assert throttle.cooldown_remaining() == 0.0


def test_retry_after_extends_but_never_shortens_the_pause() -> None:
    """A later, shorter Retry-After does not end a longer pause early."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock)
    throttle.on_rate_limited(30.0)
    throttle.on_rate_limited(5.0)
    assert throttle.cooldown_remaining() == 30.0
    clock.advance(10.0)
    throttle.on_rate_limited(40.0)
    assert throttle.cooldown_remaining() == 40.0
    clock.advance(100.0)
    assert throttle.cooldown_remaining() == 0.0


def test_429_without_retry_after_uses_full_jitter() -> None:
    """Without Retry-After the pauses follow full_jitter over consecutive 429s."""
    clock = FakeClock()
    policy = BackoffPolicy(base=0.5, cap=10.0)
    throttle = unlimited_throttle(clock, backoff=policy, rng=random.Random(3))
    reference = random.Random(3)
    for n in range(6):
        delay = throttle.on_rate_limited(None)
        assert delay == full_jitter(policy, n, reference)
        assert throttle.cooldown_remaining() >= delay * 0.999
        clock.advance(delay)


def test_success_resets_the_backoff() -> None:
    """After an accepted request the next 429's pause starts from attempt 0 again."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock, rng=TopRandom())
    assert [throttle.on_rate_limited(None) for _ in range(3)] == [0.25, 0.5, 1.0]
    throttle.on_success()
    assert throttle.on_rate_limited(None) == 0.25


def test_backoff_base_follows_a_fast_known_rate() -> None:
    """With a known rate the backoff base is one pacing interval (at least 50 ms)."""
    clock = FakeClock()
    fast = Throttle(rate_per_minute=600.0, rng=TopRandom(), clock=clock)  # 10/s
    assert fast.pause_for(None) == pytest.approx(0.1)
    very_fast = Throttle(rate_per_minute=60_000.0, rng=TopRandom(), clock=clock)
    assert very_fast.pause_for(None) == pytest.approx(0.05)
    slow = Throttle(rate_per_minute=6.0, rng=TopRandom(), clock=clock)
    assert slow.pause_for(None) == pytest.approx(0.25)


def test_pause_for_changes_no_state() -> None:
    """pause_for only computes: no cooldown starts and the backoff does not advance."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock, rng=TopRandom())
    assert throttle.pause_for(7.0) == 7.0
    assert throttle.pause_for(None) == throttle.pause_for(None) == 0.25
    assert throttle.cooldown_remaining() == 0.0
    assert throttle.consecutive_limited == 0


def test_retry_after_beyond_max_pause_parks() -> None:
    """A Retry-After longer than max_pause raises ParkedError and pauses nobody."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock, max_pause=60.0)
    with pytest.raises(ParkedError, match="3,600s") as info:
        throttle.on_rate_limited(3600.0)
    assert info.value.delay == 3600.0
    assert throttle.cooldown_remaining() == 0.0
    assert throttle.rate_limited == 1
    assert throttle.on_rate_limited(60.0) == 60.0  # exactly the maximum is still waited


def test_429_drains_the_bucket() -> None:
    """A 429 empties the token bucket: the service said it is out of tokens."""
    clock = FakeClock()
    throttle = Throttle(rate_per_minute=60.0, burst=5, clock=clock, rng=TopRandom())
    throttle.on_rate_limited(0.0)
    assert throttle.bucket.reserve() == 1.0


def test_throttle_discovers_a_rate_only_when_asked() -> None:
    """Without a configured rate, the first 429 sets one; with discover=False none is set."""
    clock = FakeClock()
    discovering = Throttle(rate_per_minute=None, clock=clock)
    fixed = Throttle(rate_per_minute=None, discover=False, clock=clock)
    for _ in range(10):
        clock.advance(0.05)
        discovering.on_success()
        fixed.on_success()
    assert discovering.rate_per_minute is None
    discovering.on_rate_limited(0.0)
    fixed.on_rate_limited(0.0)
    # 10 accepts in half a second (the shortest span the first estimate divides by)
    assert discovering.rate_per_minute == pytest.approx(20 * 60)
    assert fixed.rate_per_minute is None
    assert Throttle(rate_per_minute=90.0, clock=clock).rate_per_minute == pytest.approx(90.0)


@pytest.mark.anyio
async def test_cancelled_acquire_refunds_its_token() -> None:
    """A caller cancelled while waiting for its token gives the reservation back."""
    clock = FakeClock()
    throttle = Throttle(rate_per_minute=60.0, burst=1, clock=clock)
    await throttle.acquire()  # the burst token: no wait
    async with anyio.create_task_group() as tg:
        tg.start_soon(throttle.acquire)  # reserves the next slot, sleeps one second
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert throttle.bucket.reserve() == 1.0  # not 2.0: the cancelled slot was refunded


# --- Throttle: the circuit breaker -------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_failures_stop_counting() -> None:
    """The threshold-th failure opens the breaker; failures while open do not count."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock, breaker_threshold=3, rng=random.Random(0))
    assert [throttle.on_failure() for _ in range(3)] == [True, True, True]
    assert throttle.breaker_open
    assert throttle.on_failure() is False
    assert throttle.on_failure() is False


def test_breaker_pause_grows_with_equal_jitter() -> None:
    """While open, each failure pauses for between half and all of a doubling ceiling."""
    clock = FakeClock()
    policy = BackoffPolicy(base=1.0, cap=8.0)
    throttle = unlimited_throttle(clock, breaker_backoff=policy, rng=random.Random(5))
    throttle.on_failure()
    throttle.on_failure()
    assert throttle.cooldown_remaining() == 0.0  # closed: no shared pause
    for ceiling in [1.0, 2.0, 4.0, 8.0, 8.0]:
        throttle.on_failure()
        assert ceiling / 2 <= throttle.cooldown_remaining() <= ceiling
        clock.advance(throttle.cooldown_remaining())


def test_success_closes_the_breaker_and_ends_its_pause() -> None:
    """One success resets the failure count and lifts the breaker's pause."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock)
    for _ in range(4):
        throttle.on_failure()
    was_open = throttle.breaker_open
    assert was_open
    assert throttle.cooldown_remaining() > 0
    throttle.on_success()
    assert not throttle.breaker_open
    assert throttle.consecutive_failures == 0
    assert throttle.cooldown_remaining() == 0.0
    assert throttle.on_failure() is True


def test_failures_must_be_consecutive_to_open_the_breaker() -> None:
    """A success between failures restarts the count."""
    clock = FakeClock()
    throttle = unlimited_throttle(clock, breaker_threshold=3)
    for _ in range(5):
        throttle.on_failure()
        throttle.on_failure()
        throttle.on_success()
    assert not throttle.breaker_open


def open_breaker(clock: FakeClock) -> Throttle:
    """A throttle whose breaker is open with no pause, so only the probe rule applies."""
    throttle = unlimited_throttle(clock, breaker_backoff=BackoffPolicy(base=0.0, cap=0.0))
    for _ in range(throttle.breaker_threshold):
        throttle.on_failure()
    assert throttle.breaker_open
    assert throttle.cooldown_remaining() == 0.0
    return throttle


@pytest.mark.anyio
async def test_open_breaker_lets_one_probe_through_at_a_time() -> None:
    """While open, one caller passes; the next passes only when the probe has an outcome."""
    throttle = open_breaker(FakeClock())
    passed: list[int] = []

    async def caller(i: int) -> None:
        await throttle.acquire()
        passed.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(caller, i)
        await anyio.wait_all_tasks_blocked()
        assert len(passed) == 1
        assert throttle.on_failure() is False  # the probe failed: still open
        await anyio.wait_all_tasks_blocked()
        assert len(passed) == 2
        throttle.on_success()  # the second probe worked: the breaker closes
        await anyio.wait_all_tasks_blocked()
        assert len(passed) == 4
    assert not throttle.breaker_open


@pytest.mark.anyio
async def test_abandoned_probe_lets_the_next_caller_probe() -> None:
    """on_abandoned() releases the probe slot of a caller that never learned its outcome."""
    throttle = open_breaker(FakeClock())
    await throttle.acquire()  # this caller is the probe
    second = anyio.Event()

    async def caller() -> None:
        await throttle.acquire()
        second.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert not second.is_set()
        throttle.on_abandoned()
        await anyio.wait_all_tasks_blocked()
        assert second.is_set()
    assert throttle.breaker_open  # abandoning proves nothing about the service


def test_estimator_probes_upward_from_an_initial_rate() -> None:
    """With initial_rate, the rate starts there and doubles each window that used it."""
    clock = FakeClock()
    estimator = RateEstimator(clock=clock, initial_rate=10.0, min_window=2.0)
    assert estimator.rate == 10.0
    rates = []
    while clock.now < 8.0:
        rate = estimator.rate
        assert rate is not None
        clock.advance(1.0 / rate)
        estimator.on_accepted()
        rates.append(estimator.rate)
    assert rates[-1] is not None
    assert rates[-1] >= 40.0
    assert sorted(r for r in rates if r is not None) == [r for r in rates if r is not None]


def test_throttle_paces_from_probe_from_when_discovering() -> None:
    """probe_from sets the bucket's first rate; without it discovery starts unlimited."""
    clock = FakeClock()
    assert Throttle(rate_per_minute=None, probe_from=10.0, clock=clock).rate_per_minute == 600.0
    assert Throttle(rate_per_minute=None, clock=clock).rate_per_minute is None
