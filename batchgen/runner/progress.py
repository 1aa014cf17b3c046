"""How a run reports what it is doing: one small hook interface.

The runner never prints. It calls a :class:`ProgressHook` with snapshots of its
counters and with one-line messages; the CLI renders them as tqdm bars (or JSON lines,
or nothing), and a library user can pass their own hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchgen.errors import redact

__all__ = ["LoggingHook", "NullHook", "ProgressHook", "Snapshot"]


@dataclass(slots=True)
class Snapshot:
    """The run's counters at one moment. ``total`` counts the tasks of the spec."""

    total: int = 0
    already_done: int = 0
    to_do: int = 0
    submitted: int = 0
    accepted: int = 0
    generated: int = 0
    downloaded: int = 0
    failed: int = 0
    unknown: int = 0
    retried: int = 0
    regenerated: int = 0
    rate_limited: int = 0
    poll_rate_limited: int = 0
    in_flight: int = 0
    concurrency: int = 0
    rpm: float | None = None
    service_limit: str | None = None  # the service's own limit, once it says (or shows) it
    spent: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "total": self.total,
            "already_done": self.already_done,
            "to_do": self.to_do,
            "submitted": self.submitted,
            "accepted": self.accepted,
            "generated": self.generated,
            "downloaded": self.downloaded,
            "failed": self.failed,
            "unknown": self.unknown,
            "retried": self.retried,
            "regenerated": self.regenerated,
            "rate_limited": self.rate_limited,
            "poll_rate_limited": self.poll_rate_limited,
            "in_flight": self.in_flight,
            "concurrency": self.concurrency,
            "rpm": None if self.rpm is None else round(self.rpm, 1),
            "service_limit": self.service_limit,
            "spent": round(self.spent, 6),
        }


class ProgressHook(Protocol):
    """What the runner tells its caller. Every method must return quickly."""

    def on_start(self, snapshot: Snapshot) -> None:
        """The run is about to submit: totals are known."""

    def on_update(self, snapshot: Snapshot) -> None:
        """A counter changed (called often: throttle rendering yourself)."""

    def on_message(self, level: str, text: str) -> None:
        """A one-line message; ``level`` is ``info``, ``warning`` or ``error``."""

    def on_finish(self, snapshot: Snapshot) -> None:
        """The run ended (the summary follows as the run's return value)."""


class NullHook:
    """A hook that reports nothing."""

    def on_start(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_update(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_message(self, level: str, text: str) -> None:
        """Ignore."""

    def on_finish(self, snapshot: Snapshot) -> None:
        """Ignore."""


class LoggingHook(NullHook):
    """A hook that sends messages to the ``batchgen`` logger (redacted)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("batchgen")

    def on_message(self, level: str, text: str) -> None:
        """Log the message at its level."""
        self.logger.log(logging.getLevelName(level.upper()), "%s", redact(text))
