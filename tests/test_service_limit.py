"""Unit tests for batchgen.runner.service_limit: what a run learns of the gateway's limit.

A :class:`~batchgen.runner.service_limit.ServiceLimit` on a
:class:`~tests.test_throttle.FakeClock` is fed answers (``record_success``) and 429s
(``learn``) the way the throttles feed it; the window it builds is read back by taking
its slots in order (:func:`tests.test_window.schedule`). Nothing sleeps.
"""

from __future__ import annotations

import math

import pytest

from batchgen.errors import StatedLimit
from batchgen.runner.service_limit import POLL, SUBMIT, ServiceLimit
from batchgen.runner.window import MARGIN, REFUSED, SUCCESS, SlidingWindow
from tests.test_throttle import FakeClock
from tests.test_window import schedule, take

VERSION = "v0.9.1"


def refused(
    limit: ServiceLimit,
    kind: str = SUBMIT,
    *,
    stated: StatedLimit | None = None,
    empty: bool = False,
    server: str | None = VERSION,
    retry_after: float | None = None,
) -> float | None:
    """Tell ``limit`` of a 429 to a request of ``kind``; return what learn() returns."""
    return limit.learn(kind, limit=stated, empty=empty, server=server, retry_after=retry_after)


def window_of(limit: ServiceLimit) -> SlidingWindow:
    """The window ``limit`` has adopted (it must have one)."""
    assert limit.window is not None
    return limit.window


def answered(limit: ServiceLimit, kind: str, *times: float) -> None:
    """Record successes of ``kind`` answered at ``times``."""
    for at in times:
        limit.record_success(kind, at)


def full_after_submits(clock: FakeClock, count: int = 3) -> ServiceLimit:
    """A limit stated as ``count``/60 s at t=1 after ``count`` submissions answered at t=0:
    the window is full until 60.05, and polls are not known to count or not."""
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, *[0.0] * count)
    clock.now = 1.0
    assert refused(limit, stated=StatedLimit(count, 60.0)) == 0.0
    assert limit.polls_counted is None
    return limit


# --- before anything is learnt -----------------------------------------------------------------


def test_nothing_known_at_first() -> None:
    """A fresh limit has no window for either kind, nothing to remember and no description."""
    limit = ServiceLimit(clock=FakeClock())
    assert limit.window_for(SUBMIT) is None
    assert limit.window_for(POLL) is None
    assert limit.to_meta() is None
    assert limit.describe() is None
    assert limit.poll_may_go()
    assert limit.version == 0
    assert limit.notices == []


# --- stated limits ---------------------------------------------------------------------------


def test_stated_limit_adopts_a_window_filled_from_the_answers() -> None:
    """A stated limit becomes a window whose slots free a window after the recorded answers."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0, 2.0, 3.0)
    clock.now = 5.0
    assert refused(limit, stated=StatedLimit(3, 60.0)) == 0.0
    window = window_of(limit)
    assert (window.count, window.window) == (3, 60.0)
    assert limit.source == "stated"
    assert limit.window_for(SUBMIT) is window
    assert limit.window_for(POLL) is None  # polls are not known to count
    assert schedule(window, clock) == [t + 60.0 + MARGIN for t in (1.0, 2.0, 3.0)]


def test_stated_limit_closes_unknown_entries_until_a_window_from_now() -> None:
    """With fewer known successes than the limit, the other slots stay closed a full window."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 10.0)
    clock.now = 20.0
    refused(limit, stated=StatedLimit(3, 60.0))
    assert schedule(window_of(limit), clock) == [10.0 + 60.0 + MARGIN, 80.0, 80.0]


def test_stated_limit_ignores_answers_older_than_the_window() -> None:
    """Answers a window old are out of the gateway's log and fill no slot."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 50.0, 100.0)
    clock.now = 110.0
    refused(limit, stated=StatedLimit(3, 60.0))
    assert schedule(window_of(limit), clock) == [100.0 + 60.0 + MARGIN, 170.0, 170.0]


def test_changed_stated_limit_rebuilds_the_window() -> None:
    """A 429 stating another limit rebuilds the same window at the new count and length."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0, 2.0, 3.0)
    clock.now = 5.0
    refused(limit, stated=StatedLimit(3, 60.0))
    window = window_of(limit)
    clock.now = 10.0
    assert refused(limit, stated=StatedLimit(5, 120.0)) == 0.0
    assert limit.window is window
    assert (window.count, window.window) == (5, 120.0)
    assert limit.source == "stated"
    assert schedule(window, clock) == [
        1.0 + 120.0 + MARGIN,
        2.0 + 120.0 + MARGIN,
        3.0 + 120.0 + MARGIN,
        130.0,
        130.0,
    ]


def test_same_stated_limit_while_the_mirror_had_room_backs_off() -> None:
    """Refused under the known limit although a slot was free: free slots close for a
    doubling delay (an unknown client of the key), reset by the next success."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    window = window_of(limit)
    delays = []
    for _ in range(3):
        clock.now = window.next_free()
        permit = take(window)  # sent into a free slot ...
        permit.settle(REFUSED)  # ... and refused
        assert refused(limit, stated=StatedLimit(3, 60.0)) == 0.0
        delays.append(window.next_free() - clock.now)
    assert delays == pytest.approx([1.0, 2.0, 4.0])
    limit.record_success(SUBMIT)
    clock.now = window.next_free()
    take(window).settle(REFUSED)
    refused(limit, stated=StatedLimit(3, 60.0))
    assert window.next_free() - clock.now == pytest.approx(1.0)


# --- inferred limits -------------------------------------------------------------------------


def test_empty_429_from_the_gateway_infers_a_one_minute_window() -> None:
    """An empty 429 from new-api infers N = successes in the last 60 s over a 60 s window."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 50.0, 70.0, 80.0, 90.0)
    clock.now = 100.0
    assert refused(limit, empty=True) == 0.0
    window = window_of(limit)
    assert (window.count, window.window) == (4, 60.0)
    assert limit.source == "inferred"
    assert limit.gateway
    assert schedule(window, clock) == [t + 60.0 + MARGIN for t in (50.0, 70.0, 80.0, 90.0)]


def test_empty_429_without_server_is_left_to_rate_discovery() -> None:
    """An empty 429 from a service that did not say it is new-api gives None, no window."""
    clock = FakeClock(10.0)
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0, 2.0)
    assert refused(limit, empty=True, server=None) is None
    assert limit.window is None
    assert not limit.gateway


def test_empty_429_with_nothing_answered_in_the_last_minute() -> None:
    """The gateway's empty 429 with no success in the last minute infers nothing."""
    clock = FakeClock(100.0)
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 10.0)
    assert refused(limit, empty=True) is None
    assert limit.window is None
    assert limit.gateway


def test_429_with_retry_after_is_not_the_gateways() -> None:
    """A 429 with Retry-After (which the gateway never sends) gives None, even stating a limit."""
    clock = FakeClock(10.0)
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0)
    assert refused(limit, stated=StatedLimit(3, 60.0), retry_after=5.0) is None
    assert refused(limit, empty=True, retry_after=5.0) is None
    assert limit.window is None


def test_429_whose_text_states_no_limit_is_an_upstream_busy() -> None:
    """A 429 with a text that states no limit (upstream busy) gives None and learns nothing."""
    clock = FakeClock(10.0)
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0)
    assert refused(limit) is None
    assert limit.window is None
    assert limit.version == 0


def test_inferred_window_refused_at_its_first_boundary_grows_by_a_minute() -> None:
    """Refused when the inferred window's first entries aged out: the window is 60 s longer."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 1.0, 2.0)
    clock.now = 5.0
    refused(limit, empty=True)
    window = window_of(limit)
    assert (window.count, window.window) == (3, 60.0)
    clock.now = window.next_free()  # 60.05: the first slot frees ...
    take(window).settle(REFUSED)  # ... and the service refuses it
    assert refused(limit, empty=True) == 0.0
    assert (window.count, window.window) == (3, 120.0)
    assert limit.source == "inferred"
    assert schedule(window, clock) == [t + 120.0 + MARGIN for t in (0.0, 1.0, 2.0)]


def test_inferred_window_does_not_grow_on_429s_already_in_flight() -> None:
    """429s answering requests sent before the window was inferred say nothing of its length."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 1.0, 2.0)
    clock.now = 5.0
    refused(limit, empty=True)
    for _ in range(3):  # the other requests of the first burst, held no slot
        clock.now += 0.1
        assert refused(limit, empty=True) == 0.0
    window = window_of(limit)
    assert (window.count, window.window) == (3, 60.0)
    assert schedule(window, clock) == [t + 60.0 + MARGIN for t in (0.0, 1.0, 2.0)]


def test_inferred_window_grows_once_per_boundary() -> None:
    """Several requests refused at the same boundary grow the window by one minute, not each."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 0.0, 0.0)
    clock.now = 5.0
    refused(limit, empty=True)
    window = window_of(limit)
    clock.now = window.next_free()
    permits = [take(window) for _ in range(3)]  # all three slots free at 60.05
    for permit in permits:
        permit.settle(REFUSED)
        refused(limit, empty=True)
    assert window.window == 120.0


def test_remembered_window_refused_in_its_first_minute_closes_its_slots() -> None:
    """A remembered window refused early (entries of an earlier run) closes its unknown slots."""
    clock = FakeClock(1000.0)
    limit = ServiceLimit(clock=clock)
    limit.remember({"count": 2, "window": 60.0, "source": "stated", "gateway": True})
    window = window_of(limit)
    first = take(window)
    clock.now = 1001.0
    first.settle(REFUSED)
    limit.record_success(SUBMIT, 1000.5)  # the other one went through
    assert refused(limit, empty=True) == 0.0
    assert limit.source == "remembered"
    assert (window.count, window.window) == (2, 60.0)
    assert schedule(window, clock) == [1000.5 + 60.0 + MARGIN, 1061.0]


def test_remembered_window_refused_before_any_success_closes_its_slots() -> None:
    """A remembered window whose first requests are all refused (the earlier run's entries
    still fill the gateway's log) closes every slot a window, not for a short backoff."""
    clock = FakeClock(1000.0)
    limit = ServiceLimit(clock=clock)
    limit.remember({"count": 3, "window": 60.0, "source": "stated", "gateway": True})
    window = window_of(limit)
    permits = [take(window) for _ in range(3)]
    clock.now = 1001.0
    for permit in permits:
        permit.settle(REFUSED)
        assert refused(limit, empty=True) == 0.0
    assert limit.source == "remembered"
    assert schedule(window, clock) == [1061.0, 1061.0, 1061.0]


# --- polls ---------------------------------------------------------------------------------


def test_poll_429_says_polls_count() -> None:
    """A poll refused with a 429 makes polls count: they take slots of the same window."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    clock.now = 2.0
    assert refused(limit, POLL, empty=True) == 0.0
    assert limit.polls_counted is True
    assert limit.window_for(POLL) is limit.window
    assert "polls count against the service's limit too" in limit.notices


def test_poll_429_before_any_window_infers_with_the_polls() -> None:
    """The first empty 429 a poll meets infers N from submissions and polls answered."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 10.0, 20.0)
    answered(limit, POLL, 30.0)
    clock.now = 40.0
    assert refused(limit, POLL, empty=True) == 0.0
    assert limit.polls_counted is True
    assert window_of(limit).count == 3


def test_stated_poll_429_rebuilds_the_window_with_the_polls() -> None:
    """A poll refused under the known stated limit puts the polls answered into the mirror."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 0.0, 0.0)
    answered(limit, POLL, 10.0, 20.0)
    clock.now = 30.0
    refused(limit, stated=StatedLimit(3, 60.0))  # three submissions explain it
    assert limit.describe() == "3/60s (stated)"  # polls not known to count or not
    clock.now = 31.0
    assert refused(limit, POLL, stated=StatedLimit(3, 60.0)) == 0.0
    assert limit.polls_counted is True
    # The gateway's log holds the last three: the submission at 0 and the polls at 10, 20.
    assert schedule(window_of(limit), clock) == [t + 60.0 + MARGIN for t in (0.0, 10.0, 20.0)]


def test_poll_answered_while_the_window_is_full_says_polls_are_free() -> None:
    """A poll probe accepted while every slot holds a recorded answer means polls do not count."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    clock.now = 2.0
    assert limit.poll_may_go()
    limit.poll_sent()
    assert not limit.poll_may_go()  # one probe at a time
    limit.record_success(POLL)
    assert limit.polls_counted is False
    assert limit.window_for(POLL) is None
    assert limit.poll_may_go()
    assert "polls do not count against the service's limit" in limit.notices


def test_poll_answered_while_the_window_has_room_says_nothing() -> None:
    """A poll probe accepted while a slot is free proves nothing: the next probe may go."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    clock.now = 61.0
    limit.poll_sent()
    limit.record_success(POLL)
    assert limit.polls_counted is None
    assert limit.poll_may_go()
    limit.poll_sent()
    assert not limit.poll_may_go()


def test_poll_answered_while_slots_are_in_flight_says_nothing() -> None:
    """Slots in flight are not entries of the gateway's log yet: a poll accepted then proves
    nothing about polls."""
    clock = FakeClock()
    limit = full_after_submits(clock, count=2)
    window = window_of(limit)
    clock.now = 61.0
    take(window)
    take(window)  # both submissions in flight: the mirror has no free slot
    limit.poll_sent()
    limit.record_success(POLL)
    assert limit.polls_counted is None


def test_failed_poll_probe_lets_the_next_probe_go() -> None:
    """A probe that ended in another error (poll_failed) releases the probe slot."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    limit.poll_sent()
    assert not limit.poll_may_go()
    limit.poll_failed()
    assert limit.poll_may_go()


def test_polls_are_not_probed_before_the_first_refusal() -> None:
    """Before a window is adopted polls go freely: poll_sent holds nothing back."""
    limit = ServiceLimit(clock=FakeClock())
    limit.poll_sent()
    assert limit.poll_may_go()


def polls_shown_by_a_submit_refusal(clock: FakeClock) -> ServiceLimit:
    """Three submissions at 0 and polls at 10 and 20 (counted by the gateway, whose log then
    holds 0, 10, 20): the stated 429 at 21 is explained by the submissions alone. At the
    mirror's boundary (60.05) two go; the gateway takes one and refuses the other."""
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 0.0, 0.0, 0.0)
    answered(limit, POLL, 10.0, 20.0)
    clock.now = 21.0
    refused(limit, stated=StatedLimit(3, 60.0))
    assert limit.polls_counted is None
    window = window_of(limit)
    clock.now = window.next_free()
    accepted, rejected = take(window), take(window)
    clock.now = 60.3
    accepted.settle(SUCCESS)
    limit.record_success(SUBMIT)
    rejected.settle(REFUSED)
    assert refused(limit, stated=StatedLimit(3, 60.0)) == 0.0
    return limit


def test_submit_refused_while_the_mirror_had_room_and_polls_were_answered() -> None:
    """A submission refused with a free slot while polls were answered: polls count, and the
    window is rebuilt with them."""
    clock = FakeClock()
    limit = polls_shown_by_a_submit_refusal(clock)
    assert limit.polls_counted is True
    window = window_of(limit)
    assert limit.window_for(POLL) is window
    assert schedule(window, clock) == [t + 60.0 + MARGIN for t in (10.0, 20.0, 60.3)]


def test_polls_known_to_count_are_no_longer_probed() -> None:
    """Once a submit refusal shows polls count, polls stop going one at a time, and a poll
    answered while the window is full does not make them free again."""
    clock = FakeClock()
    limit = polls_shown_by_a_submit_refusal(clock)
    window = window_of(limit)
    clock.now = window.next_free()  # 70.05
    permit = take(window)  # a poll, which now takes a slot of the window
    limit.poll_sent()
    assert limit.poll_may_go()  # no probe: the next poll need not wait for this one
    permit.settle(SUCCESS)
    limit.record_success(POLL)  # answered while every slot holds a recorded answer
    assert limit.polls_counted is True
    assert limit.window_for(POLL) is window


def test_poll_adopted_window_counts_polls_when_submissions_do_not_explain_it() -> None:
    """A stated limit that the recorded submissions cannot fill but polls can: polls count."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0, 2.0)
    answered(limit, POLL, 3.0)
    clock.now = 4.0
    refused(limit, stated=StatedLimit(3, 60.0))
    assert limit.polls_counted is True
    assert schedule(window_of(limit), clock) == [t + 60.0 + MARGIN for t in (1.0, 2.0, 3.0)]


# --- the total limit ---------------------------------------------------------------------------


def test_total_limit_is_a_token_bucket_and_a_pause_of_one_token() -> None:
    """The total limit (failures included) becomes a drained token bucket; the pause is one
    token's interval, and no window is adopted."""
    clock = FakeClock(10.0)
    limit = ServiceLimit(clock=clock)
    pause = refused(limit, stated=StatedLimit(100, 120.0, "total"))
    assert pause == pytest.approx(1.2)
    assert limit.total is not None
    assert limit.total.rate == pytest.approx(100 / 120)
    assert limit.total.burst == 100.0
    assert limit.total.reserve() == pytest.approx(1.2)  # drained: the next token is 1.2 s off
    assert limit.window is None
    notices = len(limit.notices)
    assert refused(limit, stated=StatedLimit(100, 120.0, "total")) == pytest.approx(1.2)
    assert len(limit.notices) == notices  # the same limit again: nothing new to say


# --- across runs, notices, version -----------------------------------------------------------


def test_to_meta_and_remember_round_trip() -> None:
    """What one run keeps (to_meta) starts the next as a remembered window of the same shape."""
    clock = FakeClock()
    first = full_after_submits(clock)
    refused(first, POLL, empty=True)
    meta = first.to_meta()
    assert meta == {
        "count": 3,
        "window": 60.0,
        "source": "stated",
        "polls_counted": True,
        "gateway": True,
    }
    later = FakeClock(5000.0)
    second = ServiceLimit(clock=later)
    second.remember(meta)
    window = window_of(second)
    assert (window.count, window.window) == (3, 60.0)
    assert second.source == "remembered"
    assert second.polls_counted is True
    assert second.gateway
    assert second.window_for(POLL) is window
    assert second.to_meta() == {**meta, "source": "remembered"}
    assert schedule(window, later) == [-math.inf] * 3  # a fresh window: all free at once


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"count": 0, "window": 60.0},
        {"count": 3, "window": 0.0},
        {"count": 3, "window": float("inf")},
        {"count": 3, "window": float("nan")},
        {"count": "x", "window": 60.0},
        {"count": 3, "window": None},
    ],
)
def test_remember_ignores_what_it_cannot_use(meta: dict[str, object]) -> None:
    """A missing or unusable remembered limit leaves the run knowing nothing."""
    limit = ServiceLimit(clock=FakeClock())
    limit.remember(meta)
    assert limit.window is None
    assert limit.source is None


def test_remember_takes_only_a_boolean_polls_counted() -> None:
    """polls_counted that is not a boolean is not known."""
    limit = ServiceLimit(clock=FakeClock())
    limit.remember({"count": 2, "window": 60, "polls_counted": "yes"})
    assert limit.polls_counted is None
    assert limit.window_for(POLL) is None


def test_notices_say_what_was_learnt() -> None:
    """Each thing learnt leaves one notice: the stated or inferred limit, polls, the total."""
    clock = FakeClock()
    stated = full_after_submits(clock)
    assert stated.notices == [
        "the service states a limit of 3 requests per 60s (3/60s (stated)): pacing to it"
    ]
    inferred = ServiceLimit(clock=clock)
    answered(inferred, SUBMIT, 0.5)
    refused(inferred, empty=True)
    assert inferred.notices == [
        "the service behaves like a limit of 1 requests per 60s (1/60s (inferred)): pacing to it"
    ]
    refused(inferred, POLL, empty=True)
    assert inferred.notices[1:] == ["polls count against the service's limit too"]
    total = ServiceLimit(clock=clock)
    refused(total, stated=StatedLimit(100, 120.0, "total"))
    assert total.notices == [
        "the service limits attempts (failures included) to 100 per 120s: pacing to it"
    ]


def test_describe() -> None:
    """describe() gives count/window, the source and what is known of polls."""
    clock = FakeClock()
    limit = full_after_submits(clock)
    assert limit.describe() == "3/60s (stated)"
    refused(limit, POLL, empty=True)
    assert limit.describe() == "3/60s (stated, polls count)"


def test_version_changes_when_something_is_learnt() -> None:
    """version moves on each thing learnt (a window, polls, the total) and not on 429s ignored."""
    clock = FakeClock(10.0)
    limit = ServiceLimit(clock=clock)
    answered(limit, SUBMIT, 1.0, 2.0)
    refused(limit, server=None)  # upstream busy
    refused(limit, empty=True, server=None)  # not the gateway
    assert limit.version == 0
    refused(limit, stated=StatedLimit(2, 60.0))
    after_window = limit.version
    assert after_window > 0
    refused(limit, POLL, empty=True)
    after_polls = limit.version
    assert after_polls > after_window
    refused(limit, stated=StatedLimit(10, 60.0, "total"))
    assert limit.version > after_polls
