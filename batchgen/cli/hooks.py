"""The progress hooks of ``batchgen run``: how a run reaches the user.

:func:`pick_hook` chooses one per run: tqdm bars on a terminal, a status line every
10 s in a log file, JSON lines for scripts (``--json``), or warnings only
(``--quiet``). Each receives the runner's snapshots and messages
(:class:`~batchgen.runner.progress.Snapshot`); this is the only module that knows
about tqdm, and it imports it only when bars are drawn.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from batchgen.errors import redact
from batchgen.i18n import _
from batchgen.runner.progress import ProgressHook, Snapshot


def _prefix(level: str) -> str:
    """What a message of ``level`` starts with: nothing for info, ``warning: ``..."""
    if level == "info":
        return ""
    if level == "warning":
        return _("warning: ")
    if level == "error":
        return _("error: ")
    return f"{level}: "


__all__ = ["JsonHook", "LineHook", "QuietHook", "TqdmHook", "pick_hook"]


class TqdmHook:
    """Three tqdm bars (submitted, generated, downloaded) with rate, ETA, 429s and limits."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up now, not at import
        self.bars: list[Any] = []
        self._drawn = 0.0

    def on_start(self, snapshot: Snapshot) -> None:
        from tqdm import tqdm

        total = max(0, snapshot.to_do)
        fmt = (
            "{desc:<11}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"
            " [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
        )
        self.bars = [
            tqdm(
                total=total,
                desc=name,
                unit="img",
                file=self.stream,
                position=i,
                bar_format=fmt,
                dynamic_ncols=True,
                mininterval=0.2,
                leave=True,
            )
            for i, name in enumerate(("submitted", "generated", "downloaded"))
        ]
        if snapshot.already_done:
            self.on_message("info", f"{snapshot.already_done} task(s) already done: skipped")

    def on_update(self, snapshot: Snapshot) -> None:
        if not self.bars:
            return
        rpm = f"{snapshot.rpm:.0f}" if snapshot.rpm is not None else "auto"
        postfixes = (
            f"in flight {snapshot.in_flight}/{snapshot.concurrency}, rpm {rpm},"
            f" 429s {snapshot.rate_limited}",
            f"failed {snapshot.failed}, unknown {snapshot.unknown}, retried {snapshot.retried}",
            f"spent {snapshot.spent:.3f}",
        )
        values = (snapshot.accepted, snapshot.generated, snapshot.downloaded)
        for bar, value, postfix in zip(self.bars, values, postfixes, strict=True):
            bar.set_postfix_str(postfix, refresh=False)
            if value > bar.total:  # retries and regenerations submit more than planned
                bar.total = value
            bar.n = value
        now = time.monotonic()
        if now - self._drawn >= 0.2:  # redraw all three together, five times a second
            self._drawn = now
            for bar in self.bars:
                bar.refresh()

    def on_message(self, level: str, text: str) -> None:
        from tqdm import tqdm

        prefix = _prefix(level)
        tqdm.write(redact(prefix + text), file=self.stream)

    def on_finish(self, snapshot: Snapshot) -> None:
        self.on_update(snapshot)
        for bar in self.bars:
            bar.refresh()
            bar.close()
        self.bars = []


class LineHook:
    """For a log file rather than a terminal: one status line every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def _line(self, snapshot: Snapshot) -> None:
        rpm = f"{snapshot.rpm:.0f}" if snapshot.rpm is not None else "auto"
        print(
            f"progress: {snapshot.accepted}/{snapshot.to_do} submitted,"
            f" {snapshot.generated} generated, {snapshot.downloaded} downloaded,"
            f" {snapshot.failed} failed, {snapshot.unknown} unknown; in flight"
            f" {snapshot.in_flight}/{snapshot.concurrency}, rpm {rpm},"
            f" 429s {snapshot.rate_limited}, spent {snapshot.spent:.3f}",
            file=self.stream,
            flush=True,
        )

    def on_start(self, snapshot: Snapshot) -> None:
        self._last = time.monotonic()
        self._line(snapshot)

    def on_update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(snapshot)

    def on_message(self, level: str, text: str) -> None:
        prefix = _prefix(level)
        print(redact(prefix + text), file=self.stream, flush=True)

    def on_finish(self, snapshot: Snapshot) -> None:
        self._line(snapshot)


class JsonHook:
    """JSON lines on stdout for scripts: messages, progress (at most once a second)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._last = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        self.stream.write(redact(json.dumps(event, ensure_ascii=False)) + "\n")
        self.stream.flush()

    def on_start(self, snapshot: Snapshot) -> None:
        self._emit({"event": "start", **snapshot.as_dict()})

    def on_update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            self._emit({"event": "progress", **snapshot.as_dict()})

    def on_message(self, level: str, text: str) -> None:
        self._emit({"event": "message", "level": level, "text": text})

    def on_finish(self, snapshot: Snapshot) -> None:
        self._emit({"event": "progress", **snapshot.as_dict()})


class QuietHook:
    """Only warnings and errors, one line each, on stderr."""

    def on_start(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_update(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_message(self, level: str, text: str) -> None:
        if level != "info":
            print(redact(_prefix(level) + text), file=sys.stderr)

    def on_finish(self, snapshot: Snapshot) -> None:
        """Ignore."""


def pick_hook(*, json_lines: bool, quiet: bool) -> ProgressHook:
    """The hook for ``run --json``, ``run --quiet``, a terminal, or a log file."""
    if json_lines:
        return JsonHook()
    if quiet:
        return QuietHook()
    if sys.stderr.isatty():
        return TqdmHook()
    return LineHook()
