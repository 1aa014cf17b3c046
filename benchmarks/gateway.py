"""Runs under the real gateway's limiter: a sliding log of N successes per window.

The simulator runs with ``--profile gateway`` (new-api's limiter and error bodies, no
Retry-After) and the spec states no rate: batchgen finds the limit from the service's
429s. Figures of a run of ``T`` images under ``N`` per window ``W`` with mean latency
``L``:

- makespan ÷ ideal. Under a sliding log a fresh window takes N requests at once, so the
  ideal is whole windows, then one task latency: ``(ceil(R / N) - 1) * W + L`` where R
  is the requests the images need: one each (polls free, or streamed), two each when
  polls count and the runner polls (one poll per image, the least possible);
- 429s per charged image, from the simulator's own counters;
- requests per saved image: submissions plus polls the simulator answered, over the
  images saved (downloads are not counted: they do not touch the limiter).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Sim, run_worker, running_sim, scratch_dir, write_job
from benchmarks.report import ScenarioResult, Table, goal

__all__ = ["GatewayCase", "gateway"]

LATENCY = 2.0
CONCURRENCY = 64
IMAGE_SCALE = "0.25"
GENERATE = "POST /v1/api/generate"
RESULT = "POST /v1/draw/result"
#: The issue's goals.
MAX_VS_IDEAL = 1.05
MAX_429_PER_IMAGE = 0.02
MAX_REQUESTS = {"stream": 1.3, "async": 2.3}


@dataclass(frozen=True)
class GatewayCase:
    """One run: ``tasks`` images under ``limit`` per ``window`` seconds."""

    label: str
    tasks: int
    limit: int
    window: float = 60.0
    polls_counted: bool = False
    empty_429: bool = False
    reply: str = "auto"

    def sim_flags(self) -> list[str]:
        """The simulator's options for this case."""
        flags = ["--profile", "gateway", "--gateway-limit", str(self.limit)]
        flags += ["--gateway-window", f"{self.window:g}", "--latency", f"{LATENCY:g}"]
        flags += ["--image-scale", IMAGE_SCALE]
        if self.polls_counted:
            flags.append("--gateway-polls")
        if self.empty_429:
            flags.append("--empty-429")
        return flags

    def requests_per_image(self) -> int:
        """What the ideal counts: a poll per image when polls count and tasks are polled."""
        return 2 if self.polls_counted and self.reply == "async" else 1

    def ideal(self) -> float:
        """Whole windows of N requests, then one task latency."""
        windows = math.ceil(self.tasks * self.requests_per_image() / self.limit)
        return (windows - 1) * self.window + LATENCY


def measure(sim: Sim, case: GatewayCase, folder: Path) -> dict[str, Any]:
    """Run ``case`` on ``sim`` with a fresh key; its figures."""
    key = sim.key()
    before = sim.stats()
    extra = [f"api: {{reply: {case.reply}}}"] if case.reply != "auto" else []
    spec = write_job(folder, name="job", tasks=case.tasks, concurrency=CONCURRENCY, extra=extra)
    result = run_worker("run", {"spec": str(spec), "base_url": sim.base_url, "key": key})
    after = sim.stats()

    def delta(name: str) -> int:
        return int(after.get(name, 0)) - int(before.get(name, 0))

    def route(name: str, route_name: str) -> int:
        return int(after.get(name, {}).get(route_name, 0)) - int(
            before.get(name, {}).get(route_name, 0)
        )

    summary = result["summary"]
    done = summary["counts"]["done"]
    charged = delta("submissions_charged")
    limited = delta("rate_limited")
    requests = route("requests_by_route", GENERATE) + route("requests_by_route", RESULT)
    makespan = float(result["wall"])
    ideal = case.ideal()
    return {
        "label": case.label,
        "tasks": case.tasks,
        "limit": case.limit,
        "window": case.window,
        "polls_counted": case.polls_counted,
        "empty_429": case.empty_429,
        "reply": case.reply,
        "done": done,
        "charged": charged,
        "rate_limited": limited,
        "limited_polls": route("rate_limited_by_route", RESULT),
        "limited_per_charged": limited / charged if charged else None,
        "requests": requests,
        "requests_per_image": requests / done if done else None,
        "makespan": makespan,
        "ideal": ideal,
        "vs_ideal": makespan / ideal,
        "service_limit": summary["this_run"].get("service_limit"),
        "messages": summary["messages"],
        "raw": result,
    }


def _ok(row: dict[str, Any]) -> bool:
    mode = "stream" if row["reply"] == "stream" else "async"
    return bool(
        row["done"] == row["tasks"]
        and row["vs_ideal"] <= MAX_VS_IDEAL
        and row["limited_per_charged"] is not None
        and row["limited_per_charged"] <= MAX_429_PER_IMAGE
        and row["requests_per_image"] is not None
        and row["requests_per_image"] <= MAX_REQUESTS[mode]
    )


def cases(*, quick: bool) -> list[GatewayCase]:
    """The issue's scenarios (fewer images with ``quick``)."""
    big = 90 if quick else 120
    return [
        GatewayCase(f"60/min, {big} images, message 429s", big, 60),
        GatewayCase(f"60/min, {big} images, message 429s, async", big, 60, reply="async"),
        GatewayCase("6/min, 18 images, message 429s", 18, 6),
        GatewayCase(
            f"60/min, {big} images, polls counted, empty 429s, async",
            big,
            60,
            polls_counted=True,
            empty_429=True,
            reply="async",
        ),
        GatewayCase(
            f"60/min, {big} images, polls counted, empty 429s, stream",
            big,
            60,
            polls_counted=True,
            empty_429=True,
            reply="stream",
        ),
        GatewayCase(
            f"60/min, {big} images, polls counted, empty 429s, auto",
            big,
            60,
            polls_counted=True,
            empty_429=True,
        ),
    ]


def gateway(*, quick: bool) -> ScenarioResult:
    """Scenario 7: the real gateway's limiter, no rate in the spec, side by side."""
    result = ScenarioResult("gateway", "7. Under the gateway's limiter (sliding log, no rate)")

    def alone(case: GatewayCase) -> dict[str, Any]:
        with running_sim(case.sim_flags(), keys=2) as sim, scratch_dir("gateway") as folder:
            return measure(sim, case, folder)

    chosen = cases(quick=quick)
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        rows = list(pool.map(alone, chosen))
    table = Table(
        f"latency {LATENCY:g} s, concurrency {CONCURRENCY}, `--profile gateway`",
        [
            "run",
            "reply",
            "done",
            "charged",
            "429s",
            "of which polls",
            "429/charged",
            "requests/image",
            "makespan s",
            "ideal s",
            "÷ ideal",
            "limit found",
            "goal",
        ],
    )
    for row in rows:
        table.add(
            row["label"],
            row["reply"],
            row["done"],
            row["charged"],
            row["rate_limited"],
            row["limited_polls"],
            "-" if row["limited_per_charged"] is None else f"{row['limited_per_charged']:.3f}",
            "-" if row["requests_per_image"] is None else f"{row['requests_per_image']:.2f}",
            row["makespan"],
            row["ideal"],
            f"{row['vs_ideal']:.3f}",
            row["service_limit"] or "-",
            goal(_ok(row)),
        )
    result.tables.append(table)
    result.raw = rows
    for row in rows:
        result.goals[
            f"≤ {MAX_VS_IDEAL} x ideal, ≤ {MAX_429_PER_IMAGE} 429s/image: {row['label']}"
        ] = _ok(row)
    result.notes += [
        "Simulator: `batchgen sim --profile gateway --gateway-limit N --gateway-window 60"
        f" --latency {LATENCY:g} --image-scale {IMAGE_SCALE} [--gateway-polls] [--empty-429]`;"
        f" job: one prompt per task, `limits.concurrency: {CONCURRENCY}`, no rate in the spec;"
        " `api.reply` as in the table (auto: async until the service shows polls count).",
        "ideal = (ceil(R ÷ N) - 1) x window + latency, R = one request per image, two when"
        " polls count and the run polls (async). requests/image = submissions + polls ÷"
        " images saved. Goals: ≤ 1.05 x ideal, ≤ 0.02 429s per charged image, ≤ 1.3"
        " requests/image streamed, ≤ 2.3 polled.",
        "Every run has its own simulator; they run side by side (each uses well under 1% of"
        " a core between windows).",
    ]
    return result
