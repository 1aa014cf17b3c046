"""Client overhead: CPU per task with nothing to wait for, and the HTTP stack under it.

The simulator answers at once (``--latency 0``) with small images (``--image-scale
0.05``: about 51 px), no rate limit: what is left is batchgen's own work per task
(submission, polls, download and ledger). CPU is the worker process's own
``time.process_time()`` around the run (every thread, aiosqlite's included); the
simulator's CPU is another process's and is shown beside it, since both share the
machine's 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import urllib.request
from collections.abc import Sequence
from typing import Any

from benchmarks.common import SNIFFIO_PATH, Sim, run_worker, running_sim, scratch_dir, write_job
from benchmarks.report import ScenarioResult, Table, goal

__all__ = ["STACKS", "http_stack", "overhead", "overhead_run"]

SIM_FLAGS = ["--latency", "0", "--image-scale", "0.05"]
STACKS = ("httpx", "httpx2")


def _requests(stats: dict[str, Any]) -> int:
    """HTTP requests the simulator served (API routes and image downloads)."""
    routes = stats["requests_by_route"]
    api = sum(n for route, n in routes.items() if "/_sim/" not in route)
    files = sum(n for route, n in routes.items() if "/files/" in route)
    return int(api if files else api + stats["downloads"])


def overhead_run(sim: Sim, *, tasks: int, concurrency: int, http: str) -> dict[str, Any]:
    """One zero-latency run of ``tasks`` at ``concurrency`` on ``sim``; its figures."""
    with scratch_dir("overhead") as folder:
        spec = write_job(folder, name="job", tasks=tasks, concurrency=concurrency)
        before = sim.stats()
        sim_cpu = sim.cpu_seconds()
        result = run_worker(
            "run", {"spec": str(spec), "base_url": sim.base_url, "key": sim.key()}, http=http
        )
        sim_cpu = sim.cpu_seconds() - sim_cpu
        after = sim.stats()
    requests = _requests(after) - _requests(before)
    counts = result["summary"]["counts"]
    return {
        "http": http,
        "tasks": tasks,
        "concurrency": concurrency,
        "done": counts["done"],
        "wall": result["wall"],
        "cpu": result["cpu"],
        "cpu_ms_per_task": 1000 * result["cpu"] / tasks,
        "tasks_per_s": tasks / result["wall"],
        "requests": requests,
        "cpu_ms_per_request": 1000 * result["cpu"] / requests if requests else None,
        "peak_rss_mb": result["peak_rss_mb"],
        "startup": result["startup"],
        "transitions": result["transitions"],
        "sim_cpu": round(sim_cpu, 3),
        "raw": result,
    }


def overhead(*, quick: bool, http: str = "httpx2") -> ScenarioResult:
    """Scenario 3: 5,000 tasks, zero latency, no limit, small images."""
    tasks = 1000 if quick else 5000
    concurrency = 64
    result = ScenarioResult("overhead", "3. Client overhead (zero latency, no limit)")
    with running_sim(SIM_FLAGS) as sim:
        row = overhead_run(sim, tasks=tasks, concurrency=concurrency, http=http)
    ok_cpu = row["cpu_ms_per_task"] <= 2.0
    ok_rate = row["tasks_per_s"] >= 200
    result.goals["≤ 2 ms client CPU per task"] = ok_cpu
    result.goals["≥ 200 tasks per second"] = ok_rate
    table = Table(
        f"{tasks:,} tasks, concurrency {concurrency}, HTTP stack {http}",
        [
            "done",
            "wall s",
            "tasks/s",
            "goal",
            "client CPU s",
            "CPU ms/task",
            "goal",
            "requests",
            "CPU ms/request",
            "peak RSS MB",
            "simulator CPU s",
        ],
    )
    table.add(
        row["done"],
        row["wall"],
        row["tasks_per_s"],
        goal(ok_rate),
        row["cpu"],
        row["cpu_ms_per_task"],
        goal(ok_cpu),
        row["requests"],
        row["cpu_ms_per_request"],
        row["peak_rss_mb"],
        row["sim_cpu"],
    )
    result.tables.append(table)
    result.raw.append(row)
    result.notes.append(
        "`batchgen sim --latency 0 --image-scale 0.05`; each task is one submission, its"
        " polls and one download, verified with Pillow and fsynced, and 4 ledger"
        " transitions (each a committed UPDATE plus an event row)."
    )
    return result


def _finished_task(sim: Sim, key: str) -> str:
    body = {"model": "nano-banana-fast", "prompt": "http stack", "replyType": "async"}
    request = urllib.request.Request(  # noqa: S310 - loopback simulator
        sim.base_url + "/api/generate",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        task_id: str = json.loads(response.read())["id"]
    return task_id


def _available(stack: str) -> bool:
    """Whether a worker can run on ``stack`` here."""
    if stack == "httpx2":
        return True  # batchgen's own stack
    has_httpx = importlib.util.find_spec("httpx") is not None
    if stack == "httpx+sniffio":
        return has_httpx and (bool(SNIFFIO_PATH) or importlib.util.find_spec("sniffio") is not None)
    return stack == "httpx" and has_httpx


def http_stack(
    *,
    quick: bool,
    stacks: Sequence[str] = STACKS,
    levels: Sequence[int] = (1, 64, 256),
    reps: int | None = None,
) -> ScenarioResult:
    """Scenario 6: the overhead run and a bare request loop on each HTTP stack."""
    reps = reps or (1 if quick else 2)
    result = ScenarioResult("http", "6. HTTP stack: httpx vs httpx2")
    missing = [s for s in stacks if not _available(s)]
    stacks = [s for s in stacks if s not in missing]
    if missing:
        result.notes.append(
            f"Not measured (not importable here): {', '.join(missing)}. `pip install httpx2`;"
            " for httpx+sniffio, `pip install --target DIR sniffio` and `--sniffio-path DIR`."
        )
    runs: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    with running_sim(SIM_FLAGS, keys=4 + reps * len(stacks) * len(levels)) as sim:
        loop_key = sim.key()
        task_id = _finished_task(sim, loop_key)
        for _ in range(reps):
            for level in levels:
                for stack in stacks:  # alternate stacks so drift hits both alike
                    tasks = (200 if quick else 300) if level == 1 else (1000 if quick else 3000)
                    runs.append(overhead_run(sim, tasks=tasks, concurrency=level, http=stack))
                    n = 2000 if quick else 5000
                    loop = run_worker(
                        "http",
                        {
                            "requests": n,
                            "concurrency": level,
                            "task_id": task_id,
                            "key": loop_key,
                            "base_url": sim.base_url,
                        },
                        http=stack,
                    )
                    loop["cpu_ms_per_request"] = 1000 * loop["cpu"] / n
                    loop["requests_per_s"] = n / loop["wall"]
                    loops.append(loop)
    table = Table(
        f"Client CPU per request (median of {reps} run{'s' if reps > 1 else ''}; ms)",
        [
            "concurrency",
            "stack",
            "batchgen run: CPU ms/request",
            "CPU ms/task",
            "tasks/s",
            "bare loop: CPU ms/request",
            "requests/s",
        ],
    )
    medians: dict[tuple[int, str], float] = {}
    for level in levels:
        for stack in stacks:
            mine = [r for r in runs if r["concurrency"] == level and r["http"] == stack]
            bare = [r for r in loops if r["concurrency"] == level and r["http"] == stack]
            per_req = statistics.median(r["cpu_ms_per_request"] for r in mine)
            medians[(level, stack)] = per_req
            table.add(
                level,
                stack,
                f"{per_req:.3f}",
                f"{statistics.median(r['cpu_ms_per_task'] for r in mine):.2f}",
                f"{statistics.median(r['tasks_per_s'] for r in mine):.0f}",
                f"{statistics.median(r['cpu_ms_per_request'] for r in bare):.3f}",
                f"{statistics.median(r['requests_per_s'] for r in bare):.0f}",
            )
    result.tables.append(table)
    if len(stacks) > 1:
        gains = Table(
            f"Against {stacks[0]} (batchgen run, CPU per request)",
            ["concurrency", *(f"{s} ÷ {stacks[0]}" for s in stacks[1:])],
        )
        for level in levels:
            base = medians[(level, stacks[0])]
            ratios = [medians[(level, s)] / base for s in stacks[1:]]
            gains.add(level, *(f"{r:.2f} ({100 * (1 - r):.0f}% less)" for r in ratios))
        result.tables.append(gains)
    result.raw = [*runs, *loops]
    result.notes += [
        "batchgen run: the overhead run (`--latency 0 --image-scale 0.05`, no limit;"
        f" {'200' if quick else '300'} tasks at concurrency 1,"
        f" {'1,000' if quick else '3,000'} otherwise) with `import httpx` resolving to the"
        " stack named (httpx2's own `alias_httpx()`, called before batchgen is imported);"
        " requests are the simulator's count (submissions, polls, downloads).",
        "bare loop: `AsyncClient.post('/draw/result')` for one finished task from C"
        " concurrent tasks, no batchgen: the stack's own cost per request.",
    ]
    return result
