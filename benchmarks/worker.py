"""One measured piece of work in a fresh process; prints one JSON object.

``python -m benchmarks.worker MODE '{"option": ...}'`` where MODE is:

- ``run``: :func:`batchgen.arun` on a spec against a simulator. Measures the wall
  time of the run, the CPU time the process spent inside it (``time.process_time``:
  every thread, so aiosqlite's too; the simulator is another process), the start-up
  (from the call to the pipeline's first submission opportunity, ``on_start``), the
  peak RSS, and the ledger transitions the run committed.
- ``plan``: load a spec and plan it (what ``batchgen plan`` does), timing each step.
- ``ledger``: the ledger alone: sync N tasks, then drive each through the transitions
  of a run from many concurrent writers.
- ``http``: the HTTP stack alone: N ``POST /v1/draw/result`` at concurrency C.

batchgen runs on httpx2 (the default, ``BATCHGEN_BENCH_HTTP=httpx2``).
``BATCHGEN_BENCH_HTTP=httpx`` makes ``import httpx2`` resolve to httpx before batchgen is
imported (the same API under the old name): batchgen then runs on httpx unchanged, for
the comparison. ``httpx+sniffio`` is httpx with sniffio importable (the caller puts it on
``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _select_http() -> str:
    stack = os.environ.get("BATCHGEN_BENCH_HTTP", "httpx2")
    if stack in ("httpx", "httpx+sniffio"):
        if stack == "httpx+sniffio":
            # httpcore 1.x imports sniffio inside every call and falls back when it is
            # missing: a failed import (a walk of sys.path) several times per request.
            importlib.import_module("sniffio")
        # Imported by name: httpx is only a dev dependency (the peers use it).
        sys.modules["httpx2"] = importlib.import_module("httpx")
    elif stack != "httpx2":
        raise SystemExit(f"unknown BATCHGEN_BENCH_HTTP {stack!r}")
    return stack


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_now_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _run(options: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from batchgen.api.auth import BearerAuth
    from batchgen.ledger.paths import ledger_path
    from batchgen.runner.job import RunOptions, arun
    from batchgen.runner.progress import NullHook, Snapshot
    from batchgen.spec.load import load_spec

    class Hook(NullHook):
        started: float | None = None

        def on_start(self, snapshot: Snapshot) -> None:
            self.started = time.perf_counter()

    spec = load_spec(options["spec"], base_url=options["base_url"])
    hook = Hook()
    run_options = RunOptions(
        base_url=options["base_url"],
        auth=BearerAuth(options["key"]),
        concurrency=options.get("concurrency"),
        rpm=options.get("rpm"),
        seed=0,
        argv=["benchmark"],
    )
    rss_before = _rss_now_mb()
    out: dict[str, Any] = {}

    async def main() -> None:
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        summary = await arun(spec, run_options, hook=hook)
        out["cpu"] = round(time.process_time() - cpu0, 4)
        out["wall"] = round(time.perf_counter() - wall0, 4)
        out["startup"] = None if hook.started is None else round(hook.started - wall0, 4)
        out["summary"] = {
            "tasks": summary.tasks,
            "counts": summary.counts,
            "this_run": summary.this_run,
            "exit_code": summary.exit_code,
            "stop_reason": summary.stop_reason,
            "messages": summary.messages,
            "failures_by_code": summary.failures_by_code,
        }

    anyio.run(main, backend="asyncio")
    with sqlite3.connect(ledger_path(spec)) as conn:
        run_id, events = conn.execute(
            "SELECT r.id, (SELECT COUNT(*) FROM events e WHERE e.run = r.id)"
            " FROM runs r ORDER BY r.id DESC LIMIT 1"
        ).fetchone()
    out["transitions"] = int(events)
    out["run_id"] = int(run_id)
    out["rss_before_mb"] = rss_before
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _plan(options: dict[str, Any]) -> dict[str, Any]:
    from batchgen.spec.load import load_spec
    from batchgen.spec.matrix import count_tasks, expand
    from batchgen.spec.plan import plan_summary

    out: dict[str, Any] = {"rss_after_import_mb": _rss_now_mb()}
    t0 = time.perf_counter()
    spec = load_spec(options["spec"])
    out["load_s"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    out["tasks"] = count_tasks(spec)
    out["count_s"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    n = 0
    last = ""
    for task in expand(spec):
        n += 1
        last = task.key
    out["expand_s"] = round(time.perf_counter() - t0, 4)
    out["expanded"] = n
    out["last_key"] = last
    t0 = time.perf_counter()
    summary = plan_summary(spec)
    out["plan_s"] = round(time.perf_counter() - t0, 4)
    out["planned"] = summary.total
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _ledger(options: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from batchgen.ledger.schema import NewTask, TaskState, Transition
    from batchgen.ledger.store import Ledger

    tasks = int(options["tasks"])
    writers = int(options.get("writers", 64))
    path = Path(options["path"])
    out: dict[str, Any] = {"tasks": tasks, "writers": writers}

    def new_tasks() -> Any:
        for i in range(tasks):
            key = f"{i:032x}"
            yield NewTask(
                key=key,
                seq=i,
                endpoint="generate",
                model="nano-banana-fast",
                prompt=f"benchmark image {i}",
                request={"model": "nano-banana-fast", "prompt": f"benchmark image {i}"},
                vars={"n": str(i)},
                layout_path=f"nano-banana-fast/1x1/{key}.png",
                price=0.022,
            )

    async def main() -> None:
        async with Ledger.open(path) as ledger:
            await ledger.begin_run(argv=["benchmark"], spec_digest="bench")
            t0 = time.perf_counter()
            added, _ = await ledger.sync(new_tasks())
            out["sync_s"] = round(time.perf_counter() - t0, 4)
            out["synced"] = added

            async def writer(start: int) -> None:
                for i in range(start, tasks, writers):
                    key = f"{i:032x}"
                    await ledger.write(Transition(key, TaskState.SUBMITTING, attempts=1))
                    await ledger.write(Transition(key, TaskState.RUNNING, remote_id=f"t{i}"))
                    await ledger.write(Transition(key, TaskState.DOWNLOADING, urls=["u"]))
                    await ledger.write(Transition(key, TaskState.DONE, path="p", bytes=1))

            cpu0 = time.process_time()
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for w in range(writers):
                    tg.start_soon(writer, w)
            out["transitions_s"] = round(time.perf_counter() - t0, 4)
            out["transitions_cpu"] = round(time.process_time() - cpu0, 4)
            out["transitions"] = ledger.transitions_written
            out["batches"] = ledger.batches_written

    anyio.run(main, backend="asyncio")
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _http(options: dict[str, Any]) -> dict[str, Any]:
    import anyio

    httpx = importlib.import_module("httpx2")  # httpx under BATCHGEN_BENCH_HTTP=httpx

    requests = int(options["requests"])
    concurrency = int(options["concurrency"])
    body = {"id": options["task_id"]}
    headers = {"Authorization": f"Bearer {options['key']}"}
    out: dict[str, Any] = {"requests": requests, "concurrency": concurrency}

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=options["base_url"], headers=headers, limits=limits, trust_env=False
        ) as client:
            for _ in range(min(concurrency, 32)):  # warm the pool
                (await client.post("/draw/result", json=body)).raise_for_status()
            remaining = requests
            errors = 0

            async def loop() -> None:
                nonlocal remaining, errors
                while remaining > 0:
                    remaining -= 1
                    response = await client.post("/draw/result", json=body)
                    if response.status_code != 200:
                        errors += 1
                    response.json()

            cpu0 = time.process_time()
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(loop)
            out["wall"] = round(time.perf_counter() - t0, 4)
            out["cpu"] = round(time.process_time() - cpu0, 4)
            out["errors"] = errors

    anyio.run(main, backend="asyncio")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one mode; print its JSON result on the last line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.worker run|plan|ledger|http JSON", file=sys.stderr)
        return 2
    mode, raw = args
    stack = _select_http()
    options = json.loads(raw)
    modes = {"run": _run, "plan": _plan, "ledger": _ledger, "http": _http}
    if mode not in modes:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    result = modes[mode](options)
    result["http"] = stack
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
