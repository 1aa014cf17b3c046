"""Unit tests for batchgen.runner.window: the client-side mirror of the gateway's sliding log.

Every window runs on a :class:`~tests.test_throttle.FakeClock`, so when a slot frees is
checked by arithmetic; the async tests coordinate tasks with ``wait_all_tasks_blocked``
and only ever wait on events (slots in flight), never on time.
"""

from __future__ import annotations

import math

import anyio
import pytest

from batchgen.errors import (
    Accepted,
    APIError,
    BusinessError,
    ConnectError,
    ConnectionLostError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TaskNotFoundError,
    UpstreamError,
)
from batchgen.runner.window import (
    MARGIN,
    REFUSED,
    SUCCESS,
    UNKNOWN,
    Permit,
    SlidingWindow,
    outcome_of,
)
from tests.test_throttle import FakeClock


def take(window: SlidingWindow) -> Permit:
    """A permit that must be available now."""
    permit = window.try_take()
    assert permit is not None
    return permit


def schedule(window: SlidingWindow, clock: FakeClock) -> list[float]:
    """When each slot frees, found by taking them all in order (uses the window up and
    moves the clock to the last of them); ``-inf`` for slots free from the start."""
    times: list[float] = []
    for _ in range(window.count):
        at = window.next_free()
        assert at != math.inf, "a slot is in flight"
        clock.now = max(clock.now, at)
        take(window)
        times.append(at)
    return times


# --- permits ---------------------------------------------------------------------------------


def test_fresh_window_gives_count_permits_at_once() -> None:
    """A fresh window accepts ``count`` requests at once, then none while they are in flight."""
    clock = FakeClock(100.0)
    window = SlidingWindow(3, 60.0, clock=clock)
    permits = [window.try_take() for _ in range(3)]
    assert all(p is not None for p in permits)
    assert window.try_take() is None
    assert window.in_flight() == 3
    assert window.next_free() == math.inf


def test_count_is_at_least_one() -> None:
    """A window of zero (or fewer) requests still has one slot."""
    window = SlidingWindow(0, 60.0, clock=FakeClock())
    assert window.count == 1
    take(window)
    assert window.try_take() is None


def test_answered_slot_frees_a_window_and_the_margin_after_its_answer() -> None:
    """After answers at 10, 12, 14 nothing goes until 10 + window + MARGIN, then one at a time."""
    clock = FakeClock()
    window = SlidingWindow(3, 60.0, clock=clock)
    permits = [take(window) for _ in range(3)]
    for at, permit in zip((10.0, 12.0, 14.0), permits, strict=True):
        clock.now = at
        permit.settle(SUCCESS)
    assert window.next_free() == 10.0 + 60.0 + MARGIN
    clock.now = 10.0 + 60.0 + MARGIN - 0.001
    assert window.try_take() is None
    clock.now = 10.0 + 60.0 + MARGIN
    assert window.try_take() is not None
    assert window.try_take() is None  # the next one frees at 12 + 60 + MARGIN
    clock.now = 12.0 + 60.0 + MARGIN
    assert window.try_take() is not None


def test_settle_takes_an_explicit_answer_time() -> None:
    """``settle(outcome, at)`` stamps the slot at ``at``, not at the clock's now."""
    clock = FakeClock(50.0)
    window = SlidingWindow(1, 60.0, clock=clock)
    take(window).settle(SUCCESS, at=20.0)
    assert window.next_free() == 20.0 + 60.0 + MARGIN


def test_refused_permit_gives_its_slot_back() -> None:
    """A refusal (not recorded by the gateway) frees the slot at once, as it was before."""
    clock = FakeClock()
    window = SlidingWindow(2, 60.0, clock=clock)
    first, second = take(window), take(window)
    clock.now = 5.0
    first.settle(REFUSED)
    assert window.try_take() is not None  # the refused one's slot, free again
    assert window.try_take() is None
    second.settle(SUCCESS)
    assert window.in_flight() == 1  # the retaken slot
    assert window.next_free() == 5.0 + 60.0 + MARGIN


def test_refused_permit_restores_the_slot_it_took() -> None:
    """A slot that had freed at 70.05 and was refused later is free since 70.05 again."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    take(window).settle(SUCCESS, at=10.0)
    clock.now = 75.0
    permit = take(window)
    clock.now = 76.0
    permit.settle(REFUSED)
    assert window.next_free() == 10.0 + 60.0 + MARGIN


def test_unknown_outcome_counts_as_a_success() -> None:
    """A request whose answer never came holds its slot a full window (the safe side)."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    permit = take(window)
    clock.now = 5.0
    permit.settle(UNKNOWN)
    assert window.next_free() == 5.0 + 60.0 + MARGIN
    assert window.in_flight() == 0


def test_settle_is_idempotent() -> None:
    """Settling a permit twice settles one slot once."""
    clock = FakeClock()
    window = SlidingWindow(2, 60.0, clock=clock)
    first, second = take(window), take(window)
    first.settle(REFUSED)
    first.settle(SUCCESS)
    assert first.settled
    assert window.in_flight() == 1
    assert window.next_free() == -math.inf
    second.settle(SUCCESS)
    assert window.in_flight() == 0


def test_settle_after_the_window_shrank_counts_a_success() -> None:
    """A permit settled after a rebuild left it no slot in flight still records its success."""
    clock = FakeClock(10.0)
    window = SlidingWindow(2, 60.0, clock=clock)
    first, second = take(window), take(window)
    window.rebuild(1, 60.0, [])  # one slot left: in flight (for either permit)
    first.settle(SUCCESS)
    assert window.next_free() == 10.0 + 60.0 + MARGIN
    clock.now = 20.0
    second.settle(SUCCESS)  # no slot in flight is left: observed instead
    assert window.next_free() == 20.0 + 60.0 + MARGIN


# --- observe and occupy_until ------------------------------------------------------------------


def test_observe_takes_the_first_slot() -> None:
    """A success that held no permit takes the slot that frees first (the oldest entry)."""
    clock = FakeClock()
    window = SlidingWindow(2, 60.0, clock=clock)
    window.observe(10.0)
    assert schedule(window, clock) == [-math.inf, 10.0 + 60.0 + MARGIN]


def test_observe_never_shortens_a_slot() -> None:
    """An observed answer older than every slot's entry changes nothing."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    take(window).settle(SUCCESS, at=50.0)
    window.observe(10.0)
    assert window.next_free() == 50.0 + 60.0 + MARGIN


def test_observe_leaves_slots_in_flight_alone() -> None:
    """While every slot is in flight an observed answer has no slot to take."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    permit = take(window)
    window.observe(10.0)
    assert window.in_flight() == 1
    permit.settle(REFUSED)
    assert window.next_free() == -math.inf


def test_occupy_until_closes_every_slot_that_frees_earlier() -> None:
    """occupy_until closes free and earlier-freeing slots, not later or in-flight ones."""
    clock = FakeClock(30.0)
    window = SlidingWindow(4, 60.0, clock=clock)
    early, late, _flying = take(window), take(window), take(window)
    early.settle(SUCCESS, at=0.0)  # frees at 60.05
    late.settle(SUCCESS, at=30.0)  # frees at 90.05
    assert window.occupy_until(80.0) == 2  # the free slot and the 60.05 one
    assert window.in_flight() == 1
    assert window.next_free() == 80.0
    clock.now = 80.0
    take(window)
    take(window)
    assert window.try_take() is None
    assert window.next_free() == 30.0 + 60.0 + MARGIN
    assert window.occupy_until(10.0) == 0


# --- rebuild -----------------------------------------------------------------------------------


def test_rebuild_fills_slots_with_the_most_recent_answers() -> None:
    """rebuild keeps the latest ``count`` answer times, each freeing a new window later."""
    clock = FakeClock(6.0)
    window = SlidingWindow(2, 60.0, clock=clock)
    window.rebuild(3, 120.0, [5.0, 1.0, 4.0, 2.0, 3.0])
    assert (window.count, window.window) == (3, 120.0)
    assert schedule(window, clock) == [3.0 + 120.0 + MARGIN, 4.0 + 120.0 + MARGIN, 125.0 + MARGIN]


def test_rebuild_leaves_unaccounted_slots_free_or_closed_until_unknown_until() -> None:
    """Slots no known answer fills are free, or closed until ``unknown_until`` when given."""
    clock = FakeClock(20.0)
    free = SlidingWindow(3, 60.0, clock=clock)
    free.rebuild(3, 60.0, [10.0])
    assert schedule(free, clock) == [-math.inf, -math.inf, 10.0 + 60.0 + MARGIN]
    clock.now = 20.0
    closed = SlidingWindow(3, 60.0, clock=clock)
    closed.rebuild(3, 60.0, [10.0], unknown_until=80.0)
    assert schedule(closed, clock) == [10.0 + 60.0 + MARGIN, 80.0, 80.0]


def test_rebuild_keeps_requests_in_flight() -> None:
    """Slots in flight stay in flight through a rebuild, in place of those freeing first."""
    clock = FakeClock(30.0)
    window = SlidingWindow(3, 60.0, clock=clock)
    permit = take(window)
    window.rebuild(3, 60.0, [10.0, 20.0])
    assert window.in_flight() == 1
    assert window.next_free() == 10.0 + 60.0 + MARGIN
    clock.now = 40.0
    permit.settle(SUCCESS)
    assert schedule(window, clock) == [70.0 + MARGIN, 80.0 + MARGIN, 100.0 + MARGIN]


def test_rebuild_to_fewer_slots_keeps_at_most_count_in_flight() -> None:
    """Shrinking below the requests in flight leaves every slot in flight."""
    clock = FakeClock()
    window = SlidingWindow(3, 60.0, clock=clock)
    for _ in range(3):
        take(window)
    window.rebuild(2, 60.0, [])
    assert window.count == 2
    assert window.in_flight() == 2


# --- outcome_of --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        pytest.param(None, SUCCESS, id="answered"),
        pytest.param(BusinessError("积分不足", status=200), SUCCESS, id="business-200"),
        pytest.param(
            TaskNotFoundError("result not exist", status=200, code="task_not_found"),
            SUCCESS,
            id="task-not-found-200",
        ),
        pytest.param(RateLimitError("slow down", status=429), REFUSED, id="429"),
        pytest.param(UpstreamError("boom", status=502), REFUSED, id="502"),
        pytest.param(TaskNotFoundError("gone", status=404), REFUSED, id="task-not-found-404"),
        pytest.param(APIError("refused", status=400), REFUSED, id="api-error"),
        pytest.param(ConnectError("cannot connect"), REFUSED, id="connect"),
        pytest.param(
            RequestTimeoutError("pool", accepted=Accepted.NO), REFUSED, id="timeout-before"
        ),
        pytest.param(ConnectionLostError("cut"), UNKNOWN, id="connection-lost"),
        pytest.param(RequestTimeoutError("read"), UNKNOWN, id="timeout-after"),
        pytest.param(ResponseFormatError("garbled"), UNKNOWN, id="unreadable-2xx"),
        pytest.param(KeyboardInterrupt(), UNKNOWN, id="interrupted"),
    ],
)
def test_outcome_of(exc: BaseException | None, outcome: str) -> None:
    """Answers below 400 count, error answers and requests never sent do not, the rest may."""
    assert outcome_of(exc) == outcome


# --- acquire -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_acquire_returns_at_once_while_a_slot_is_free() -> None:
    """acquire() takes a free slot without waiting."""
    window = SlidingWindow(1, 60.0, clock=FakeClock())
    with anyio.fail_after(1):
        permit = await window.acquire()
    assert window.in_flight() == 1
    permit.settle(REFUSED)


@pytest.mark.anyio
async def test_priority_waiter_gets_the_next_slot_first() -> None:
    """A priority waiter takes the next freed slot before a non-priority one that waited first."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    held = take(window)
    order: list[str] = []
    permits: dict[str, Permit] = {}

    async def waiter(name: str, priority: bool) -> None:
        permits[name] = await window.acquire(priority=priority)
        order.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "plain", False)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, "priority", True)
            await anyio.wait_all_tasks_blocked()
            assert order == []
            held.settle(REFUSED)  # one slot frees
            await anyio.wait_all_tasks_blocked()
            assert order == ["priority"]
            permits["priority"].settle(REFUSED)
            await anyio.wait_all_tasks_blocked()
            assert order == ["priority", "plain"]


@pytest.mark.anyio
async def test_cancelled_priority_waiter_lets_the_others_go() -> None:
    """A priority waiter cancelled while waiting no longer holds back non-priority callers."""
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    held = take(window)
    got: list[Permit] = []

    async def plain() -> None:
        got.append(await window.acquire())

    async def priority() -> None:
        await window.acquire(priority=True)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(plain)
            async with anyio.create_task_group() as inner:
                inner.start_soon(priority)
                await anyio.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
            held.settle(REFUSED)
            await anyio.wait_all_tasks_blocked()
            assert len(got) == 1
