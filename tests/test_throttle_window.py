"""Unit tests for batchgen.runner.throttle under the gateway's window (``limit=``, ``kind=``).

Each throttle shares a :class:`~batchgen.runner.service_limit.ServiceLimit` and runs on a
:class:`~tests.test_throttle.FakeClock` the test advances. ``acquire()`` would sleep real
time for a slot that frees later on the fake clock, so every test moves the clock first
(the slots are free when it asks) or waits only on slots in flight and on poll probes,
which are events. A caller waiting for the total limit's token is cancelled, or its
``anyio.sleep`` is gated by the test. Tasks are coordinated with
``wait_all_tasks_blocked``; nothing sleeps.
"""

from __future__ import annotations

import random

import anyio
import pytest

from batchgen.errors import StatedLimit
from batchgen.runner.pacing import ParkedError
from batchgen.runner.service_limit import POLL, SUBMIT, ServiceLimit
from batchgen.runner.throttle import Throttle
from batchgen.runner.window import MARGIN, REFUSED, SUCCESS, UNKNOWN, Permit, SlidingWindow
from tests.test_throttle import FakeClock, TopRandom

VERSION = "v0.9.1"
LIMIT = StatedLimit(3, 60.0)


def throttles(clock: FakeClock) -> tuple[ServiceLimit, Throttle, Throttle]:
    """A run's shared limit with its submit throttle (discovering, as the runner builds it)
    and its poll throttle (no discovery)."""
    limit = ServiceLimit(clock=clock)
    submit = Throttle(
        rate_per_minute=None,
        probe_from=10.0,
        rng=random.Random(0),
        clock=clock,
        limit=limit,
        kind=SUBMIT,
    )
    poll = Throttle(
        rate_per_minute=None,
        discover=False,
        rng=random.Random(0),
        clock=clock,
        limit=limit,
        kind=POLL,
    )
    return limit, submit, poll


def stated_at_one(clock: FakeClock) -> tuple[ServiceLimit, Throttle, Throttle]:
    """Throttles whose submissions met the stated limit of 3/60 s at t=1, after three
    accepted at t=0: the window is full until 60.05, polls not known to count."""
    limit, submit, poll = throttles(clock)
    for _ in range(3):
        submit.on_success(0.0)
    clock.now = 1.0
    assert submit.on_rate_limited(None, 0.5, limit=LIMIT, server=VERSION) == 0.0
    return limit, submit, poll


def window_of(limit: ServiceLimit) -> SlidingWindow:
    """The window ``limit`` has adopted (it must have one)."""
    assert limit.window is not None
    return limit.window


async def permit_now(throttle: Throttle) -> Permit:
    """A permit ``throttle`` must hand out without waiting."""
    with anyio.fail_after(1):
        permit = await throttle.acquire()
    assert permit is not None
    return permit


# --- before the service's limit is known ---------------------------------------------------


@pytest.mark.anyio
async def test_before_any_429_acquire_gives_no_permit_and_discovery_runs() -> None:
    """Until a 429 says what the gateway's limit is, acquire() returns None (after the
    first submission, which goes alone to see what the service is) and the rate is
    discovered as before."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    throttle = Throttle(rate_per_minute=None, rng=TopRandom(), clock=clock, limit=limit)
    with anyio.fail_after(1):
        first = await throttle.acquire()
        assert first is not None  # the first contact
        throttle.on_success(permit=first)
        assert limit.contacted
        assert await throttle.acquire() is None
    assert not throttle.windowed
    for _ in range(9):  # with the first contact's: ten successes in 0.45 s
        clock.advance(0.05)
        throttle.on_success()
    clock.advance(0.05)
    throttle.on_rate_limited(None)  # a 429 that says nothing of a limit: an upstream busy
    assert throttle.rate_per_minute == pytest.approx(20 * 60)
    assert throttle.estimator is not None
    assert limit.window is None
    assert not throttle.windowed


@pytest.mark.anyio
async def test_empty_429_from_elsewhere_is_left_to_discovery() -> None:
    """An empty 429 without the gateway's version header goes to rate discovery."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    throttle = Throttle(rate_per_minute=None, rng=TopRandom(), clock=clock, limit=limit)
    limit.saw_server(None)  # an answer came, naming no gateway
    for _ in range(10):
        clock.advance(0.05)
        throttle.on_success()
    throttle.on_rate_limited(None, empty=True)
    assert throttle.rate_per_minute == pytest.approx(20 * 60)
    assert limit.window is None
    with anyio.fail_after(1):
        clock.advance(10.0)
        assert await throttle.acquire() is None


# --- the stated window paces submissions ---------------------------------------------------


@pytest.mark.anyio
async def test_stated_429_hands_pacing_to_the_window() -> None:
    """After a stated 429 the throttle is windowed: its bucket is unlimited, its estimator
    gone, nobody is paused, and acquire() hands out the window's permits."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    assert submit.windowed
    assert submit.bucket.rate is None
    assert submit.estimator is None
    assert submit.cooldown_remaining() == 0.0
    assert limit.source == "stated"
    clock.now = 61.0  # the three answers at 0 aged out of the window
    permits = [await permit_now(submit) for _ in range(3)]
    assert window_of(limit).in_flight() == 3
    got: list[Permit | None] = []

    async def fourth() -> None:
        got.append(await submit.acquire())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fourth)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # every slot is in flight
            submit.on_abandoned(permits[0])  # refused: its slot is free again
            await anyio.wait_all_tasks_blocked()
            assert len(got) == 1
            assert isinstance(got[0], Permit)


@pytest.mark.anyio
async def test_on_success_settles_the_permit() -> None:
    """on_success(permit=...) frees the slot a window and the margin after the answer."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    clock.now = 61.0
    permit = await permit_now(submit)
    clock.now = 62.0
    submit.on_success(61.0, permit)
    assert permit.settled
    window = window_of(limit)
    assert window.in_flight() == 0
    assert window.next_free() == 0.0 + 60.0 + MARGIN  # the two slots not taken
    for _ in range(2):
        await permit_now(submit)  # the two other slots
    assert window.next_free() == 62.0 + 60.0 + MARGIN


@pytest.mark.anyio
async def test_held_stream_keeps_its_slot_until_it_ends() -> None:
    """on_success(hold=True) leaves the slot in flight; on_stream_end settles it then."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    clock.now = 61.0
    permit = await permit_now(submit)
    submit.on_success(61.0, permit, hold=True)
    window = window_of(limit)
    assert window.in_flight() == 1  # still held
    clock.now = 90.0
    submit.on_stream_end(permit)
    assert permit.settled
    assert window.in_flight() == 0
    for _ in range(2):
        await permit_now(submit)
    assert window.next_free() == 90.0 + 60.0 + MARGIN


@pytest.mark.anyio
async def test_abandoned_permit_is_settled_as_its_outcome() -> None:
    """on_abandoned gives a refused slot back and holds an unknown one a full window."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    clock.now = 61.0
    refused, unknown, _third = [await permit_now(submit) for _ in range(3)]
    submit.on_abandoned(refused, REFUSED)
    submit.on_abandoned(unknown, UNKNOWN)
    window = window_of(limit)
    assert window.in_flight() == 1
    await permit_now(submit)  # the refused one's slot
    assert window.next_free() == 61.0 + 60.0 + MARGIN


@pytest.mark.anyio
async def test_429_with_a_permit_gives_the_slot_back_and_backs_off() -> None:
    """A permit refused by a 429 under the known limit is settled refused, and the free
    slots close for the first backoff step (a second)."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    clock.now = 61.0
    permit = await permit_now(submit)
    assert submit.on_rate_limited(None, 61.0, limit=LIMIT, server=VERSION, permit=permit) == 0.0
    assert permit.settled
    window = window_of(limit)
    assert window.in_flight() == 0
    assert window.next_free() == pytest.approx(62.0)
    assert submit.rate_limited == 2  # the 429 that stated the limit, and this one


def test_success_sent_before_the_window_is_observed() -> None:
    """A success that held no permit (sent before the 429) takes the window's first slot."""
    clock = FakeClock()
    limit, submit, _poll = throttles(clock)
    clock.now = 1.0
    submit.on_rate_limited(None, limit=StatedLimit(2, 60.0), server=VERSION)
    window = window_of(limit)
    assert window.next_free() == 61.0  # nothing known: closed a window
    clock.now = 2.0
    submit.on_success(1.5)  # its answer arrives after the 429
    assert window.next_free() == 61.0
    clock.now = 61.0
    assert window.try_take() is not None
    assert window.next_free() == 2.0 + 60.0 + MARGIN


def test_total_limit_slower_than_max_pause_parks() -> None:
    """A total limit whose one-token pause exceeds max_pause raises ParkedError."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    throttle = Throttle(rate_per_minute=None, max_pause=60.0, clock=clock, limit=limit)
    with pytest.raises(ParkedError):
        throttle.on_rate_limited(None, limit=StatedLimit(1, 120.0, "total"), server=VERSION)
    assert throttle.cooldown_remaining() == 0.0


def test_total_limit_pauses_every_caller_one_token() -> None:
    """The total limit's 429 pauses the throttle for one token's interval, without a window."""
    clock = FakeClock()
    limit = ServiceLimit(clock=clock)
    throttle = Throttle(rate_per_minute=None, clock=clock, limit=limit)
    pause = throttle.on_rate_limited(None, limit=StatedLimit(100, 120.0, "total"), server=VERSION)
    assert pause == pytest.approx(1.2)
    assert throttle.cooldown_remaining() == pytest.approx(1.2)
    assert not throttle.windowed


@pytest.mark.anyio
async def test_cancelled_while_waiting_for_the_total_token_gives_the_slot_back() -> None:
    """A caller cancelled after taking a window slot, while it waits for the total limit's
    token, settles its slot as refused and refunds the token."""
    clock = FakeClock()
    limit, submit, _poll = stated_at_one(clock)
    submit.on_rate_limited(None, limit=StatedLimit(60, 60.0, "total"), server=VERSION)
    total = limit.total
    assert total is not None
    clock.now = 61.0
    total.drain()
    total.reserve()
    total.reserve()  # the bucket owes two tokens: the next caller waits three seconds
    window = window_of(limit)
    async with anyio.create_task_group() as tg:
        tg.start_soon(submit.acquire)
        await anyio.wait_all_tasks_blocked()
        assert window.in_flight() == 1
        tg.cancel_scope.cancel()
    assert window.in_flight() == 0
    assert window.next_free() <= 61.0
    assert total.reserve() == pytest.approx(3.0)  # its reservation was given back


# --- polls -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_poll_throttle_takes_slots_only_once_polls_count() -> None:
    """Polls take no slot while they are not known to count; after a poll's 429 they do."""
    clock = FakeClock()
    limit, submit, poll = stated_at_one(clock)
    assert submit.windowed
    polls_windowed_before = poll.windowed
    clock.now = 61.0
    first = await poll.acquire()
    assert first is None
    assert poll.on_rate_limited(None, limit=LIMIT, server=VERSION) == 0.0
    assert limit.polls_counted is True
    assert not polls_windowed_before
    assert poll.windowed
    assert poll.bucket.rate is None
    clock.now = window_of(limit).next_free()
    assert isinstance(await permit_now(poll), Permit)


@pytest.mark.anyio
async def test_polls_free_take_no_slot() -> None:
    """A poll probe answered while the window is full makes polls free: they take no slot."""
    clock = FakeClock()
    limit, _submit, poll = stated_at_one(clock)
    clock.now = 2.0
    assert await poll.acquire() is None
    poll.on_success()
    assert limit.polls_counted is False
    assert not poll.windowed
    with anyio.fail_after(1):
        for _ in range(5):
            assert await poll.acquire() is None  # no probe and no slot: all at once


@pytest.mark.anyio
@pytest.mark.parametrize("answer", ["success", "error"])
async def test_second_poll_waits_for_the_probe(answer: str) -> None:
    """While a poll probe is out (polls unknown after a submit's 429) the next poll waits
    until the probe has an answer, a success or another error."""
    clock = FakeClock()
    limit, _submit, poll = stated_at_one(clock)
    clock.now = 61.0  # the window has room: the probe's success proves nothing
    assert await poll.acquire() is None
    assert not limit.poll_may_go()
    passed: list[Permit | None] = []

    async def second() -> None:
        passed.append(await poll.acquire())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert passed == []
            if answer == "success":
                poll.on_success()
            else:
                poll.on_abandoned(None, REFUSED)
            await anyio.wait_all_tasks_blocked()
            assert passed == [None]
    assert limit.polls_counted is None
    assert not limit.poll_may_go()  # the second poll is the probe now


@pytest.mark.anyio
async def test_polls_go_before_waiting_submissions() -> None:
    """Once polls count, a poll waiting for a slot takes the next one before a submission
    that waited first (the poll's task is already paid for)."""
    clock = FakeClock()
    limit, submit, poll = stated_at_one(clock)
    clock.now = 61.0
    await poll.acquire()
    poll.on_rate_limited(None, empty=True, server=VERSION)
    assert limit.polls_counted is True
    clock.now = 1000.0
    window = window_of(limit)
    held = [window.try_take() for _ in range(window.count)]  # every slot in flight
    order: list[str] = []

    async def caller(name: str, throttle: Throttle) -> None:
        await throttle.acquire()
        order.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "submit", submit)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(caller, "poll", poll)
            await anyio.wait_all_tasks_blocked()
            assert order == []
            assert held[0] is not None
            held[0].settle(REFUSED)  # one slot frees
            await anyio.wait_all_tasks_blocked()
            assert order == ["poll"]
            assert held[1] is not None
            held[1].settle(REFUSED)
            await anyio.wait_all_tasks_blocked()
            assert order == ["poll", "submit"]


def test_error_answered_below_400_without_a_permit_takes_a_slot() -> None:
    """A request sent before the window was known and answered with an HTTP 200 error (or
    never answered) takes the window's first slot, as a success without a permit does."""
    clock = FakeClock()
    limit, submit, _poll = throttles(clock)
    clock.now = 1.0
    submit.on_rate_limited(None, limit=StatedLimit(3, 60.0), server=VERSION)
    window = window_of(limit)
    clock.now = 61.0
    window.rebuild(3, 60.0, [])  # all free: only what follows fills slots
    clock.now = 62.0
    submit.on_abandoned(None, SUCCESS)  # e.g. HTTP 200 with code != 0
    submit.on_abandoned(None, UNKNOWN)  # e.g. the connection died after sending
    submit.on_abandoned(None, REFUSED)  # e.g. a 5xx: not in the gateway's log
    assert window.try_take() is not None
    assert window.try_take() is None
    assert window.next_free() == 62.0 + 60.0 + MARGIN


@pytest.mark.anyio
async def test_poll_probe_is_claimed_before_waiting_for_the_total_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two polls waiting for the total limit's tokens while polls are probed: only one goes
    until the probe has an answer."""
    clock = FakeClock()
    limit, submit, poll = stated_at_one(clock)
    submit.on_rate_limited(None, limit=StatedLimit(60, 60.0, "total"), server=VERSION)
    total = limit.total
    assert total is not None
    clock.now = 61.0
    total.drain()  # every poll must wait for its token
    gate = anyio.Event()

    async def gated_sleep(seconds: float) -> None:
        await gate.wait()  # the test, not real time, says when sleepers wake

    monkeypatch.setattr(anyio, "sleep", gated_sleep)
    passed: list[int] = []

    async def poller(i: int) -> None:
        await poll.acquire()
        passed.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller, 0)
            tg.start_soon(poller, 1)
            await anyio.wait_all_tasks_blocked()
            gate.set()
            await anyio.wait_all_tasks_blocked()
            assert len(passed) == 1  # the probe; the other waits for its answer
            poll.on_success()
            await anyio.wait_all_tasks_blocked()
            assert len(passed) == 2
    monkeypatch.undo()


@pytest.mark.anyio
async def test_poll_cancelled_before_it_is_sent_gives_the_probe_back() -> None:
    """A poll probe cancelled while it waits for its token leaves the next poll free to go."""
    clock = FakeClock()
    limit, submit, poll = stated_at_one(clock)
    submit.on_rate_limited(None, limit=StatedLimit(60, 60.0, "total"), server=VERSION)
    assert limit.total is not None
    clock.now = 61.0
    limit.total.drain()
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll.acquire)
        await anyio.wait_all_tasks_blocked()
        assert not limit.poll_may_go()  # claimed while it waits
        tg.cancel_scope.cancel()
    assert limit.poll_may_go()
