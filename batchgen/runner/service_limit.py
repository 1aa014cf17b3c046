"""What a run knows of the service's own rate limit, learnt from its 429s.

The gateway (new-api) limits each user with a sliding log of N successful requests
per window of whole minutes, and says so in its 429s when it runs with Redis
(``您已达到请求数限制：1分钟内最多请求60次``). :class:`ServiceLimit` turns what the
429s say into a :class:`~batchgen.runner.window.SlidingWindow` both throttles share:

- **stated**: the message names the limit; the window is exact from then on;
- **inferred**: a gateway that answers 429s with an empty body (no Redis) states
  nothing, but its windows are whole minutes: N is what it accepted in the minute
  before the refusal, and the window one minute, grown by a minute each time the
  service refuses right at the boundary;
- **remembered**: what an earlier run of the job learnt (kept in the ledger).

A service that is not the gateway (no ``X-New-Api-Version``, or one that sends
``Retry-After``) is left to the rate discovery of :mod:`.discovery`, as before.

Polls: on the gateway's own routes polling is free; on this service nobody knows. A
poll refused with a 429 says polls count; a poll accepted while the window is full
says they do not. Until one of those is seen after the first refusal, polls go one
at a time (a probe), so a limit that counts them costs one 429, not one per poller.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import Any, Final

import anyio

from batchgen.errors import StatedLimit
from batchgen.runner.pacing import Clock, TokenBucket
from batchgen.runner.window import InFlightGate, Permit, SlidingWindow

__all__ = ["POLL", "SUBMIT", "ServiceLimit"]

SUBMIT, POLL = "submit", "poll"
#: The gateway's windows are whole minutes; an inferred window starts at one.
MINUTE: Final = 60.0
_HISTORY: Final = 8192
#: Submissions unanswered at once while a gateway's limit is being found (at most; see
#: ``_Contact``): as many may be refused when it is reached.
DISCOVERY_IN_FLIGHT: Final = 4
#: A round trip below this is "near": one submission at a time while discovering.
NEAR_RTT: Final = 0.05


class ServiceLimit:
    """The service's limit as far as this run knows it, shared by the submit and poll
    throttles (see the module docstring)."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self.window: SlidingWindow | None = None
        self.total: TokenBucket | None = None
        self.source: str | None = None  # stated, inferred or remembered
        self.polls_counted: bool | None = None  # None: not known yet
        self.gateway = False  # the service said it runs new-api
        self.notices: list[str] = []  # what the user should be told, drained by the run
        self.version = 0  # bumped whenever what is known changes (to remember it)
        self._answered: dict[str, collections.deque[float]] = {
            SUBMIT: collections.deque(maxlen=_HISTORY),
            POLL: collections.deque(maxlen=_HISTORY),
        }
        self._probing_polls = False
        self._poll_probe_out = False
        # Until the gateway's window is known, submissions go as fast as answers come
        # back, a few at a time (see InFlightGate).
        self.gate = InFlightGate(DISCOVERY_IN_FLIGHT)
        # The first submission goes alone: its answer says what the service is (a
        # new-api gateway names its version) before the others choose how to pace.
        self.contacted = False
        self._contact_out = False
        self._contact = anyio.Event()
        self._backoff = 0  # refusals in a row while the window looked open
        self._episode_start: float | None = None

    # --- what the throttles ask ----------------------------------------------------

    def saw_server(self, version: str | None) -> None:
        """An answer came (naming the gateway's version when it is new-api's)."""
        if version and not self.gateway:
            self.gateway = True
        self._contacted()

    def _contacted(self) -> None:
        if not self.contacted:
            self.contacted = True
            self._contact.set()

    async def first_contact(self) -> Permit | None:
        """Before any answer: the first caller goes (its permit, settled by the answer,
        ends the wait); the others wait for that answer. None once contacted."""
        if self.contacted or self.window is not None:
            return None
        if not self._contact_out:
            self._contact_out = True
            return Permit(_Contact(self))
        await self._contact.wait()
        return None

    def discovering(self, kind: str) -> bool:
        """Whether requests of ``kind`` meet a new-api limiter that has not said its
        limit yet (they go through :attr:`gate`)."""
        return kind == SUBMIT and self.gateway and self.window is None

    def polls_frugal(self) -> bool:
        """Whether polls should be spent sparingly: they count, or may (a new-api gateway
        that has not said), or the run is paced by the gateway's window anyway (then a
        task found done a little later costs nothing: the window sets the pace)."""
        if self.polls_counted is True:
            return True
        return self.gateway and (self.polls_counted is None or self.window is not None)

    def window_for(self, kind: str) -> SlidingWindow | None:
        """The window requests of ``kind`` must take a slot of, if any."""
        if kind == POLL and self.polls_counted is not True:
            return None
        return self.window

    def poll_may_go(self) -> bool:
        """False while a poll probe is out (one poll at a time until we know)."""
        return not (self._probing_polls and self._poll_probe_out)

    def poll_sent(self) -> None:
        """A poll leaves (after :meth:`poll_may_go`)."""
        if self._probing_polls:
            self._poll_probe_out = True

    def describe(self) -> str | None:
        """The limit in one phrase (for progress and the summary), or None."""
        if self.window is None:
            return None
        polls = {True: ", polls count", False: ", polls free", None: ""}[self.polls_counted]
        return f"{self.window.count}/{self.window.window:g}s ({self.source}{polls})"

    # --- what the answers say ------------------------------------------------------

    def record_success(self, kind: str, at: float | None = None) -> None:
        """A request of ``kind`` was answered below 400 at ``at`` (default now)."""
        when = self._clock() if at is None else at
        if self._episode_start is None:
            self._episode_start = when
        self._answered[kind].append(when)
        self._backoff = 0
        if kind == POLL and self._probing_polls:
            self._poll_probe_out = False
            window = self.window
            if window is not None and window.next_free() > when and not window.in_flight():
                # Accepted while the window is full (of answers the gateway recorded; a
                # slot in flight is not in its log yet): polls are not counted.
                self._probing_polls = False
                self._polls_count(False)

    def poll_failed(self) -> None:
        """A poll probe ended in an error other than a 429: send the next one."""
        self._poll_probe_out = False

    def learn(
        self,
        kind: str,
        *,
        limit: StatedLimit | None,
        empty: bool,
        server: str | None,
        retry_after: float | None,
        paced: bool = True,
    ) -> float | None:
        """Learn from a 429 of a request of ``kind``; ``paced`` says it held a slot of
        the window (False: it was sent before the window was known).

        Returns the pause every caller should take (0.0: none, the window paces), or
        None when the answer does not look like the gateway's limiter: the caller
        falls back to rate discovery and its cooldown.
        """
        now = self._clock()
        if server:
            self.gateway = True
        if retry_after is not None:
            return None  # the gateway never sends Retry-After: something else refused
        if limit is None and not empty:
            return None  # a 429 with a text that states no limit: an upstream busy
        polls_newly_counted = False
        if kind == POLL:
            self._poll_probe_out = False
            self._probing_polls = False
            if self.polls_counted is not True:
                self._polls_count(True)
                polls_newly_counted = True
                window = self.window
                if window is not None and limit is None:
                    count = window.count
                    if self.source == "inferred":  # what it accepted included our polls
                        count = max(count, len(self._recent(now, window.window)))
                    self._adopt(count, window.window, self.source, now)
                    return 0.0
        if limit is not None and limit.scope == "total":
            return self._adopt_total(limit, now)
        if limit is not None:
            window = self.window
            if window is None or (window.count, window.window) != (limit.count, limit.window):
                self._adopt(limit.count, limit.window, "stated", now)
                return 0.0
            if kind == POLL and (self.source != "stated" or polls_newly_counted):
                # Stated only now, or polls newly counted: rebuild with the polls answered.
                self._adopt(limit.count, limit.window, "stated", now)
                return 0.0
            return self._mirror_short(kind, now) if paced else 0.0
        if self.window is not None:
            return self._mirror_short(kind, now) if paced else 0.0
        if self.gateway:
            count = len(self._recent(now, MINUTE))
            if count:
                self._adopt(count, MINUTE, "inferred", now)
                return 0.0
        return None

    # --- keeping the mirror true -----------------------------------------------------

    def _polls_count(self, counted: bool) -> None:
        self.polls_counted = counted
        self._probing_polls = False  # known now, however it was learnt: no more probes
        self.version += 1
        self.notices.append(
            "polls count against the service's limit too"
            if counted
            else "polls do not count against the service's limit"
        )

    def _kinds(self) -> tuple[str, ...]:
        return (SUBMIT, POLL) if self.polls_counted else (SUBMIT,)

    def _recent(
        self, now: float, window: float, kinds: tuple[str, ...] | None = None
    ) -> list[float]:
        out: list[float] = []
        for kind in kinds or self._kinds():
            out += [t for t in self._answered[kind] if t > now - window]
        return out

    def _adopt(self, count: int, window: float, source: str | None, now: float) -> None:
        answered = self._recent(now, window)
        if len(answered) < count and self.polls_counted is None:
            polls = self._recent(now, window, (POLL,))
            if polls and len(answered) + len(polls) >= count:
                # The service counted more than our submissions: our polls.
                self._polls_count(True)
                answered += polls
        short = len(answered) < count
        if self.window is None:
            self.window = SlidingWindow(count, window, clock=self._clock)
        # Entries we cannot account for (another client of the key, an earlier run)
        # may free at any time in the window: the safe guess is its end.
        self.window.rebuild(count, window, answered, unknown_until=now + window if short else None)
        changed = self.source != source
        self.source = source
        self.version += 1
        if self.polls_counted is None:
            self._probing_polls = True
        if changed or source == "stated":
            how = "states" if source == "stated" else "behaves like"
            self.notices.append(
                f"the service {how} a limit of {count} requests per {window:g}s"
                f" ({self.describe()}): pacing to it"
            )

    def _adopt_total(self, limit: StatedLimit, now: float) -> float:
        rate = limit.count / limit.window
        if self.total is None or self.total.rate != rate:
            self.total = TokenBucket(rate, float(limit.count), clock=self._clock)
            self.version += 1
            self.notices.append(
                f"the service limits attempts (failures included) to {limit.count} per"
                f" {limit.window:g}s: pacing to it"
            )
        self.total.drain()
        return 1.0 / rate

    def _mirror_short(self, kind: str, now: float) -> float:
        """Refused although the mirror had room: it misses entries the service counts."""
        window = self.window
        assert window is not None
        if (
            kind == SUBMIT
            and self.polls_counted is None
            and self._recent(now, window.window, (POLL,))
        ):
            self._polls_count(True)
            self._adopt(window.count, window.window, self.source, now)
            return 0.0
        start = self._episode_start
        if self.source == "remembered" and (start is None or now - start < window.window + 15.0):
            # Refused in this run's first window (nothing accepted yet, or not long ago):
            # entries of an earlier run the mirror does not know.
            self._adopt(window.count, window.window, "remembered", now)
            return 0.0
        if (
            self.source == "inferred"
            and start is not None
            and window.window <= now - start < window.window + 15.0
        ):  # refused at the first boundary: the window is longer than a minute
            self._adopt(window.count, window.window + MINUTE, "inferred", now)
            return 0.0
        self._backoff += 1
        delay = min(window.window, 2.0 ** min(self._backoff - 1, 10))
        window.occupy_until(now + delay)
        return 0.0

    # --- across runs ---------------------------------------------------------------

    def to_meta(self) -> dict[str, Any] | None:
        """What to remember in the ledger for the next run, or None."""
        if self.window is None:
            return None
        return {
            "count": self.window.count,
            "window": self.window.window,
            "source": self.source,
            "polls_counted": self.polls_counted,
            "gateway": self.gateway,
        }

    def remember(self, meta: Mapping[str, Any]) -> None:
        """Start from what an earlier run learnt (:meth:`to_meta`)."""
        try:
            count = int(meta["count"])
            window = float(meta["window"])
        except (KeyError, TypeError, ValueError):
            return
        if count <= 0 or not math.isfinite(window) or window <= 0:
            return
        self.window = SlidingWindow(count, window, clock=self._clock)
        self.source = "remembered"
        counted = meta.get("polls_counted")
        self.polls_counted = counted if isinstance(counted, bool) else None
        self.gateway = bool(meta.get("gateway"))


class _Contact:
    """The holder of the first contact's permit: its answer (or its end) is contact,
    and its round trip sizes the discovery gate."""

    def __init__(self, limit: ServiceLimit) -> None:
        self._limit = limit
        self._sent = limit._clock()

    def settle(self, permit: Permit, outcome: str, at: float | None = None) -> None:
        rtt = self._limit._clock() - self._sent
        # Near the service, one request at a time fills a window in moments (and costs
        # one 429 when it is full); far away, a few in flight keep the window's first
        # fill from stretching over seconds, at a 429 each when it is reached.
        self._limit.gate.size = max(1, min(DISCOVERY_IN_FLIGHT, math.ceil(rtt / NEAR_RTT)))
        self._limit._contacted()
