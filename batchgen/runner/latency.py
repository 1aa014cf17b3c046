"""How long the service takes: the latencies of the tasks a run saw finishing."""

from __future__ import annotations

import collections

__all__ = ["LatencyModel"]


class LatencyModel:
    """The latencies of the last ``size`` tasks seen finishing, as best estimated."""

    def __init__(self, size: int = 200) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=size)
        self._predicted: collections.deque[float] = collections.deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, latency: float) -> None:
        """One task's latency (seconds from its submission to its end)."""
        self._recent.append(max(0.0, latency))

    def predict(self, latency: float) -> None:
        """A running task's latency as its progress predicts it (used until three tasks
        were seen finishing)."""
        self._predicted.append(max(0.0, latency))

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the recent latencies; before three tasks were seen
        finishing, the longest predicted one (the safe guess); None with neither."""
        if len(self._recent) >= 3:
            ordered = sorted(self._recent)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        if self._predicted:
            return max(self._predicted)
        return None
