"""A client-side mirror of the gateway's sliding log: never more than N in any window.

The gateway (new-api) keeps, per user, the times of the last N successful requests
and refuses a request while the oldest of them is younger than the window: a fresh
window takes N requests at once, then nothing until the oldest entry ages out. A
token bucket cannot pace that exactly (at N per window it either sends one at a time,
half the ideal pace, or bursts into the log), so the runner mirrors the log itself.

The mirror is N *slots*. Each holds the time it frees: when the request it last
carried was answered, plus the window (plus a small margin for clocks); while that
request is in flight, never (its answer time is not known yet). A request may go when
some slot is free; it takes the slot that frees first, exactly as the gateway's new
entry replaces its oldest. The answer settles the slot: a success (the gateway
recorded it) frees it a window after the answer; a refusal (the gateway records only
answers below 400) gives the slot back as it was; an answer that never came is
counted as a success, which is the safe side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, Protocol

import anyio

from batchgen.errors import Accepted, APIError, BatchgenError, BusinessError
from batchgen.runner.pacing import Clock

__all__ = [
    "MARGIN",
    "REFUSED",
    "SUCCESS",
    "UNKNOWN",
    "InFlightGate",
    "Permit",
    "SlidingWindow",
    "outcome_of",
]

#: Seconds added to every window: the gateway stamps an entry when its answer is
#: written, a little before ours arrives, and compares whole seconds.
MARGIN: Final = 0.05

SUCCESS, REFUSED, UNKNOWN = "success", "refused", "unknown"


def outcome_of(exc: BaseException | None) -> str:
    """How the gateway's log saw a request that ended in ``exc`` (``None``: answered).

    An answer below 400 is recorded (a business error comes as HTTP 200); an error
    answer is not; a request that may or may not have been answered counts as
    recorded, so the mirror never lets more through than the service would.
    """
    if exc is None or isinstance(exc, BusinessError):
        return SUCCESS
    if isinstance(exc, APIError):
        # HTTP 200 with an error code (-22, task not found) is an answer below 400 too.
        return SUCCESS if exc.status is not None and exc.status < 400 else REFUSED
    if isinstance(exc, BatchgenError) and exc.accepted is Accepted.NO:
        return REFUSED
    return UNKNOWN


class _Holder(Protocol):
    def settle(self, permit: Permit, outcome: str, at: float | None = None) -> None: ...


class Permit:
    """One request's place in a window (or gate), from before it is sent until its answer."""

    __slots__ = ("previous", "settled", "window")

    def __init__(self, window: _Holder, previous: float = -math.inf) -> None:
        self.window = window
        self.previous = previous  # when the slot it took would have freed
        self.settled = False

    def settle(self, outcome: str, at: float | None = None) -> None:
        """Record how the request ended (:func:`outcome_of`); idempotent."""
        if not self.settled:
            self.settled = True
            self.window.settle(self, outcome, at)


class SlidingWindow:
    """At most ``count`` successful requests in any ``window`` seconds (see module doc).

    The slots are a multiset of free times; a slot in flight is ``inf``. Which slot a
    permit holds does not matter: every slot in flight is alike until answered.
    """

    def __init__(self, count: int, window: float, *, clock: Clock, margin: float = MARGIN) -> None:
        self.count = max(1, count)
        self.window = window
        self.margin = margin
        self._clock = clock
        self._free_at = [-math.inf] * self.count
        self._changed = anyio.Event()
        self._priority_waiting = 0

    def __repr__(self) -> str:
        return f"SlidingWindow({self.count} per {self.window:g}s)"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _first(self) -> int:
        free = self._free_at
        return min(range(len(free)), key=free.__getitem__)

    def next_free(self) -> float:
        """When the first slot frees (``inf`` while every slot is in flight)."""
        return min(self._free_at)

    def in_flight(self) -> int:
        """Slots held by requests not answered yet."""
        return sum(1 for t in self._free_at if t == math.inf)

    def try_take(self) -> Permit | None:
        """A permit now, or ``None`` when no slot is free."""
        i = self._first()
        previous = self._free_at[i]
        if previous > self._clock():
            return None
        self._free_at[i] = math.inf
        return Permit(self, previous)

    async def acquire(self, *, priority: bool = False) -> Permit:
        """Wait for a free slot and take it. ``priority`` callers (polls of tasks that are
        already paid for) go before the others."""
        if priority:
            self._priority_waiting += 1
        try:
            while True:
                if priority or not self._priority_waiting:
                    permit = self.try_take()
                    if permit is not None:
                        return permit
                    wait = self.next_free() - self._clock()
                else:
                    wait = math.inf  # a priority caller takes the next slot; wait for it
                if wait == math.inf:
                    await self._changed.wait()
                else:
                    with anyio.move_on_after(max(0.0, wait)):
                        await self._changed.wait()
        finally:
            if priority:
                self._priority_waiting -= 1
                self._notify()

    def settle(self, permit: Permit, outcome: str, at: float | None = None) -> None:
        """Free a slot in flight as :meth:`Permit.settle` says (use that instead)."""
        when = self._clock() if at is None else at
        try:
            i = self._free_at.index(math.inf)
        except ValueError:
            # The window shrank under requests in flight: count the answer as seen.
            if outcome != REFUSED:
                self.observe(when)
            return
        if outcome == REFUSED:
            self._free_at[i] = min(permit.previous, when)
        else:
            self._free_at[i] = when + self.window + self.margin
        self._notify()

    def observe(self, at: float) -> None:
        """A success that held no permit (sent before the window was known): it took
        the oldest entry's place at the service, so it takes the first slot here."""
        i = self._first()
        stamp = at + self.window + self.margin
        if self._free_at[i] < stamp:
            self._free_at[i] = stamp
            self._notify()

    def occupy_until(self, until: float) -> int:
        """The service refused although a slot looked free: entries we do not know of
        (another client of the key). Keep every free slot closed until ``until``;
        return how many were closed."""
        closed = 0
        for i, free in enumerate(self._free_at):
            if free < until:
                self._free_at[i] = until
                closed += 1
        if closed:
            self._notify()
        return closed

    def rebuild(
        self,
        count: int,
        window: float,
        answered: Iterable[float],
        *,
        unknown_until: float | None = None,
    ) -> None:
        """Start over at ``count`` per ``window`` from the answer times of known successes.

        The most recent ``count`` of ``answered`` fill slots; slots left over are
        closed until ``unknown_until`` when given (the service said it is full and we
        cannot account for every entry), else free. Requests in flight keep slots in
        flight (the ones that would have freed first).
        """
        in_flight = self.in_flight()
        self.count = max(1, count)
        self.window = window
        stamps = sorted(answered)[-self.count :]
        free = [t + window + self.margin for t in stamps]
        filler = -math.inf if unknown_until is None else unknown_until
        free += [filler] * (self.count - len(free))
        free.sort()
        for i in range(min(in_flight, self.count)):
            free[i] = math.inf
        self._free_at = free
        self._notify()


class InFlightGate:
    """At most ``size`` requests unanswered at once: how the limit of a gateway is met
    before it is known. A fresh window takes N at once, so the first requests may go as
    fast as their answers come back; with at most ``size`` in flight when the first
    refusal comes, at most ``size`` are refused, however far away the service is."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.out = 0
        self._changed = anyio.Event()

    async def acquire(self) -> Permit:
        """Wait until fewer than ``size`` are unanswered; take a place."""
        while self.out >= self.size:
            await self._changed.wait()
        self.out += 1
        return Permit(self)

    def settle(self, permit: Permit, outcome: str, at: float | None = None) -> None:
        """The request was answered (or abandoned): its place is free."""
        self.out = max(0, self.out - 1)
        self._changed.set()
        self._changed = anyio.Event()
