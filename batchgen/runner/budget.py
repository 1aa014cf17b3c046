"""A budget the service's own usage counter enforces, not only our estimate.

The runner estimates what each submission costs (its planned price). The service
counts what it really charged the key (``/v1/dashboard/billing/usage``). When the two
differ (a price table out of date, a spec price below the live one), the service's
word wins: :class:`Budget` reads the counter every few submissions (and more often
near the limit), and holds every submission against whichever is higher, the
estimate or the measurement plus the estimate of what was sent since it was read,
scaled by how much the service has charged over our estimate so far.

Two ceilings apply to the job's total spend: ``limits.budget``, and what the key can
still pay (spent so far plus the balance the preflight found), so a run stops before
it overdraws. A service without the usage route leaves the estimate alone, and the
run says so once.
"""

from __future__ import annotations

import math
from typing import Final

import anyio

from batchgen.errors import BatchgenError
from batchgen.preflight.before_run import Meter
from batchgen.runner.pacing import Clock, TokenBucket

__all__ = ["Budget"]
#: Read the counter after this many accepted submissions...
READ_EVERY: Final = 5
#: ... at most this often (seconds), and at most ``READ_BURST`` reads at once refilled at
#: ``READ_RATE`` a second: the gateway limits its dashboard routes per IP (180 requests
#: per 180 s by default), and other processes of the same machine share that.
MIN_INTERVAL: Final = 0.2
READ_BURST: Final = 30.0
READ_RATE: Final = 0.5
#: Within this share of a ceiling, read before every submission (at that pace).
NEAR: Final = 0.8


class Budget:
    """The job's spending limits, held against the estimate and the measurement."""

    def __init__(
        self,
        *,
        limit: float | None,
        spent_before: float,
        measured_before: float | None = None,
        balance: float | None = None,
        meter: Meter | None = None,
        clock: Clock,
    ) -> None:
        self.limit = limit
        self._meter = meter
        self._clock = clock
        # The job's measured spend before this run: what earlier runs measured, else
        # their estimate (the best there is).
        self.measured_before = measured_before if measured_before is not None else spent_before
        self.cap = None if balance is None else self.measured_before + balance
        self.measured: float | None = None  # the job's measured total at the last read
        self.usage_start: float | None = None
        self._estimate_start = spent_before
        self._estimate_at_read = spent_before
        self.ratio = 1.0  # what the service charged over what we estimated, this run
        self.since_read = 0
        self._last_read = -math.inf
        self.failure: str | None = None  # why the counter cannot be read
        self._lock = anyio.Lock()
        # Until a read after this run's first charge, what the service charges per image
        # is not known: with a ceiling, that read comes before any other submission.
        self.calibrated = False
        self._reads = TokenBucket(READ_RATE, READ_BURST, clock=clock)

    @property
    def metered(self) -> bool:
        """Whether the service's usage counter is being read."""
        return self._meter is not None and self.failure is None

    @property
    def ceiling(self) -> float | None:
        """The lower of the budget and what the key can still pay (job totals)."""
        bounds = [b for b in (self.limit, self.cap) if b is not None]
        return min(bounds) if bounds else None

    @property
    def measured_run(self) -> float | None:
        """What the service charged this run so far, as last read."""
        return None if self.measured is None else self.measured - self.measured_before

    def committed(self, spent: float, reserved: float) -> float:
        """The job's spend to count on: the estimate (``spent`` plus ``reserved``, in
        flight), or the measurement plus what was sent since, whichever is higher."""
        estimate = spent + reserved
        if self.measured is None:
            return estimate
        since = max(0.0, spent - self._estimate_at_read) + reserved
        return max(estimate, self.measured + since * self.ratio)

    def would_pass(self, spent: float, reserved: float, price: float) -> bool:
        """Whether one more submission at ``price`` could take the job past a ceiling."""
        ceiling = self.ceiling
        if ceiling is None:
            return False
        return self.committed(spent, reserved) + price * self.ratio > ceiling + 1e-9

    def due(self, spent: float, reserved: float, price: float) -> bool:
        """Whether to read the counter before the next submission."""
        if not self.metered:
            return False
        ceiling = self.ceiling
        if ceiling is not None and not self.calibrated and spent > self._estimate_start + 1e-12:
            return True  # the first charge of the run says what an image really costs
        if self._clock() - self._last_read < MIN_INTERVAL:
            return False
        if self.measured is None or self.since_read >= READ_EVERY:
            return self._reads.peek()
        near = self.committed(spent, reserved) + price * self.ratio
        return ceiling is not None and near > NEAR * ceiling and self._reads.peek()

    async def read(self, spent: float, *, force: bool = False) -> str | None:
        """Read the counter (``spent`` is the estimate now); a warning the first time it
        cannot be read, else None. ``force``: even if it was read a moment ago."""
        meter = self._meter
        if meter is None or self.failure is not None:
            return None
        async with self._lock:
            if not force and not self.due_after_lock(spent):
                return None  # another submitter read it meanwhile
            self._reads.reserve()
            try:
                usage = await meter()
            except BatchgenError as exc:
                self.failure = str(exc).splitlines()[0][:200]
                return (
                    f"the service's usage counter cannot be read ({self.failure}): the budget"
                    " is held against batchgen's estimate only"
                )
            self._record(usage, spent)
        return None

    def due_after_lock(self, spent: float) -> bool:
        """Whether a read is still wanted once the lock is held (one may just have been)."""
        if not self.calibrated and spent > self._estimate_start + 1e-12:
            return True
        return self._clock() - self._last_read >= MIN_INTERVAL or self.measured is None

    def start(self, usage: float, spent: float) -> None:
        """The counter before the run's first submission (from the preflight)."""
        self._record(usage, spent)

    def _record(self, usage: float, spent: float) -> None:
        self._last_read = self._clock()
        if self.usage_start is None:
            self.usage_start = usage
            self._estimate_start = spent
        measured_run = usage - self.usage_start
        estimated_run = spent - self._estimate_start
        if estimated_run > 1e-9:
            self.calibrated = True
            if measured_run > estimated_run:
                self.ratio = measured_run / estimated_run
        self.measured = self.measured_before + measured_run
        self._estimate_at_read = spent
        self.since_read = 0
