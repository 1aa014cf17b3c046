"""Helpers for the runner's end-to-end tests: specs, a hook that records and triggers, runs.

Every run goes through the real runner (:func:`batchgen.runner.arun`) against the
simulator over loopback HTTP. Tests wait on what the runner reports (hook triggers),
never on the clock.
"""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from batchgen.api.auth import BearerAuth
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.schema import TaskRow
from batchgen.ledger.store import Ledger
from batchgen.runner.job import RunHandle, RunOptions, arun
from batchgen.runner.progress import Snapshot
from batchgen.runner.summary import RunSummary
from batchgen.sim import SimConfig, SimServer, running_simulator
from batchgen.sim.wire import Request
from batchgen.spec.load import load_spec

SIM_KEY = "sk-sim"

#: A small grid: 2 models x 2 ratios x 3 subjects = 12 tasks.
GRID = """
    name: grid
    output: out
    prompt: "a photo of {subject}"
    matrix:
      model: [nano-banana-fast, gpt-image-2]
      aspect_ratio: ["1:1", "3:2"]
      subject: [cat, dog, owl]
    """


def sim_config(**changes: Any) -> SimConfig:
    """A fast, seeded simulator config: 0.05 s tasks, tiny images, key ``sk-sim``."""
    base: dict[str, Any] = {"latency": 0.05, "image_scale": 0.05, "seed": 0}
    base.update(changes)
    return SimConfig(**base)


def write_spec(folder: Path, body: str, *, name: str = "job.yaml") -> Path:
    """Write ``version: 1`` plus the dedented YAML ``body`` to ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("version: 1\n" + textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def subjects_spec(
    folder: Path,
    subjects: list[str],
    *,
    model: str = "nano-banana-fast",
    limits: str = "",
    extra: str = "",
    name: str = "job.yaml",
) -> Path:
    """A one-axis job: one task per subject (subjects are written as JSON strings)."""
    import json

    values = ", ".join(json.dumps(s, ensure_ascii=False) for s in subjects)
    text = (
        "name: job\n"
        "output: out\n"
        f"model: {model}\n"
        'prompt: "a photo of {subject}"\n'
        f"matrix:\n  subject: [{values}]\n"
    )
    if limits:
        text += "limits:\n" + textwrap.indent(textwrap.dedent(limits).strip("\n"), "  ") + "\n"
    if extra:
        text += textwrap.dedent(extra).strip("\n") + "\n"
    return write_spec(folder, text, name=name)


def options(sim: SimServer, **changes: Any) -> RunOptions:
    """Run options for ``sim``: its URL, key ``sk-sim``, seed 0, a fast first poll."""
    base = RunOptions(
        base_url=sim.base_url,
        auth=BearerAuth(SIM_KEY),
        seed=0,
        first_poll=0.02,
        stop_grace=10.0,
        argv=["batchgen", "run", "(test)"],
    )
    return replace(base, **changes)


@dataclass
class _Trigger:
    when: Callable[[Snapshot], bool]
    action: Callable[[], None]
    fired: anyio.Event = field(default_factory=anyio.Event)


class RecordingHook:
    """A progress hook that keeps every message and the last snapshot, and fires triggers.

    ``on(pred, action)`` runs ``action`` once, at the first update whose snapshot
    satisfies ``pred``; the returned event is set when it has run.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.started: Snapshot | None = None
        self.last: Snapshot | None = None
        self.updates = 0
        self.finished = False
        self._triggers: list[_Trigger] = []

    def on(self, when: Callable[[Snapshot], bool], action: Callable[[], None]) -> anyio.Event:
        """Run ``action`` once, at the first update that satisfies ``when``."""
        trigger = _Trigger(when, action)
        self._triggers.append(trigger)
        return trigger.fired

    def on_start(self, snapshot: Snapshot) -> None:
        """Remember the starting totals."""
        self.started = replace(snapshot)

    def on_update(self, snapshot: Snapshot) -> None:
        """Count, remember, fire due triggers."""
        self.updates += 1
        self.last = snapshot
        for trigger in self._triggers:
            if not trigger.fired.is_set() and trigger.when(snapshot):
                trigger.fired.set()
                trigger.action()

    def on_message(self, level: str, text: str) -> None:
        """Keep the message."""
        self.messages.append((level, text))

    def on_finish(self, snapshot: Snapshot) -> None:
        """Note the end."""
        self.last = snapshot
        self.finished = True

    def texts(self, level: str | None = None) -> list[str]:
        """Messages (of ``level``) as text."""
        return [t for lv, t in self.messages if level is None or lv == level]


async def run_job(
    spec: Path,
    sim: SimServer,
    *,
    hook: RecordingHook | None = None,
    handle: RunHandle | None = None,
    **changes: Any,
) -> RunSummary:
    """Run (or resume) the job at ``spec`` against ``sim`` and return its summary."""
    return await arun(spec, options(sim, **changes), hook=hook, handle=handle)


@asynccontextmanager
async def open_ledger(spec: Path) -> AsyncIterator[Ledger]:
    """The job's ledger, opened outside a run."""
    async with Ledger.open(ledger_path(load_spec(spec)), create=False) as ledger:
        yield ledger


async def ledger_rows(spec: Path) -> list[TaskRow]:
    """Every task row of the job's ledger, in plan order."""
    async with open_ledger(spec) as ledger:
        return [row async for row in ledger.iter_rows()]


def output_dir(spec: Path) -> Path:
    """The job's output folder."""
    return load_spec(spec).output_dir


def stats(sim: SimServer) -> dict[str, Any]:
    """``/_sim/stats`` with loose value types (tests compare numbers)."""
    return dict(sim.stats())


def listing(root: Path) -> set[str]:
    """Every file and folder under ``root``, as POSIX paths relative to it."""
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            out.add(Path(dirpath, name).relative_to(root).as_posix())
    return out


def files_under(root: Path, suffix: str = "") -> list[Path]:
    """Every regular file under ``root`` whose name ends with ``suffix``."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffix))


def truncate_first_downloads(sim: SimServer, count: int) -> None:
    """Cut the first ``count`` image downloads at half, then serve the rest whole.

    Flips ``truncate_rate`` between exactly 1 and 0 per request (no random draw), so
    which downloads fail does not depend on how requests interleave.
    """
    files = sim.app.files
    original = files.download
    seen = 0

    async def download(req: Request) -> None:
        nonlocal seen
        seen += 1
        sim.config.truncate_rate = 1.0 if seen <= count else 0.0
        await original(req)

    files.download = download  # type: ignore[method-assign]


@contextmanager
def threaded_simulator(config: SimConfig) -> Iterator[SimServer]:
    """A simulator served from its own thread and event loop, for sync CLI tests.

    ``main()`` runs its own event loop with ``anyio.run``, so the simulator must live in
    another one. The config stays live; ``stats()`` may be read from the test thread.
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = anyio.Event()
        box["stop"] = stop
        box["token"] = anyio.lowlevel.current_token()
        async with running_simulator(config) as server:
            box["server"] = server
            ready.set()
            await stop.wait()

    def target() -> None:
        try:
            anyio.run(serve, backend="asyncio")
        except BaseException as exc:  # surfaced in the test thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, name="sim", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    try:
        yield box["server"]
    finally:
        anyio.from_thread.run_sync(box["stop"].set, token=box["token"])
        thread.join(30)
