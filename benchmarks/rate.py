"""Rate-bound and latency-bound runs: goodput, the runner issue's figure, latency, peers.

Every run gets a fresh key (the simulator's token buckets are per key, so a fresh key
starts with a full bucket) and the simulator's counters are read before and after,
so several runs can share one simulator one after another. Runs that must overlap in
time (the 60 rpm ones, ~17 min each) get one simulator each instead: they use well
under 1% of a core, so running them side by side changes nothing they measure.

Figures of a rate-bound run (rate ``r`` per second, server burst ``b``, latency ``L``):

- goodput: charged submissions per minute ÷ allowed per minute, over the submission
  window ``T`` (first to last charged submission). It can pass 1.0 thanks to the
  server's burst. ``of bucket`` is stricter: charged ÷ all the server's bucket could
  accept in ``T`` (``b + r·T``), so a client that does not use the burst loses
  ``b`` tokens (2% of 1,000 tasks, 20% of 100).
- 429s per charged submission, from the simulator's own counters.
- makespan ÷ ideal, ideal = ``(tasks - b) ÷ r + L``: the burst goes out at once, the
  rest at the rate, and the last task still takes its latency. ``÷ plain`` uses the
  plain ``tasks ÷ r``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    Sim,
    plan_json,
    run_json,
    run_worker,
    running_sim,
    scratch_dir,
    start_sim,
    write_job,
)
from benchmarks.report import ScenarioResult, Table, goal

__all__ = ["RateCase", "goodput", "latency", "peers", "runner_issue"]

BURST = 20
LATENCY = 2.0
CONCURRENCY = 50
#: Rate-bound runs use 256 px images: the figures are about pacing, not rendering.
IMAGE_SCALE = "0.25"

#: A client: (simulator, key, folder) -> the run's raw result with ``makespan``.
Client = Callable[[Sim, str, Path], dict[str, Any]]


@dataclass(frozen=True)
class RateCase:
    """One run of one client against a simulator config."""

    label: str
    client: Client
    tasks: int
    rpm: float
    retry_after: bool = True
    burst: int = BURST
    latency: float = LATENCY

    def sim_flags(self) -> list[str]:
        """The simulator options of this case."""
        flags = ["--rpm", f"{self.rpm:g}", "--burst", str(self.burst)]
        flags += ["--latency", f"{self.latency:g}", "--image-scale", IMAGE_SCALE]
        return flags + ([] if self.retry_after else ["--no-retry-after"])


def batchgen_client(
    tasks: int, *, spec_rate: float | None, concurrency: int = CONCURRENCY, http: str = "httpx2"
) -> Client:
    """batchgen in a worker process; ``spec_rate`` goes into ``limits`` when given."""

    def run(sim: Sim, key: str, folder: Path) -> dict[str, Any]:
        spec = write_job(folder, name="job", tasks=tasks, concurrency=concurrency, rpm=spec_rate)
        result = run_worker(
            "run", {"spec": str(spec), "base_url": sim.base_url, "key": key}, http=http
        )
        summary = result["summary"]
        result["makespan"] = result["wall"]
        result["done"] = summary["counts"]["done"]
        result["failed"] = summary["counts"]["failed"] + summary["counts"]["unknown"]
        result["spec"] = str(spec)
        return result

    return run


def peer_client(script: str, tasks: int, *, concurrency: int = CONCURRENCY) -> Client:
    """A peer script of ``benchmarks/peers/`` on the same job (``plan --json``)."""

    def run(sim: Sim, key: str, folder: Path) -> dict[str, Any]:
        spec = write_job(folder, name="job", tasks=tasks, concurrency=concurrency)
        jobs = plan_json(spec, folder / "tasks.jsonl")
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "peers" / script),
            "--base-url",
            sim.base_url,
            "--key",
            key,
            "--tasks",
            str(jobs),
            "--out",
            str(folder / "images"),
            "--concurrency",
            str(concurrency),
        ]
        result = run_json(command)
        result["cpu"] = result["cpu_children"]
        return result

    return run


def measure(sim: Sim, case: RateCase, folder: Path) -> dict[str, Any]:
    """Run ``case`` on ``sim`` with a fresh key; its figures."""
    key = sim.key()
    before = sim.stats()
    ids_before = {t["id"] for t in sim.tasks()}
    result = case.client(sim, key, folder)
    after = sim.stats()
    created = sorted(float(t["created"]) for t in sim.tasks() if t["id"] not in ids_before)
    charged = after["submissions_charged"] - before["submissions_charged"]
    limited = after["rate_limited"] - before["rate_limited"]
    rate = case.rpm / 60.0
    window = created[-1] - created[0] if len(created) > 1 else 0.0
    makespan = float(result["makespan"])
    ideal = max(0, case.tasks - case.burst) / rate + case.latency if rate else None
    plain = case.tasks / rate if rate else None
    return {
        "label": case.label,
        "tasks": case.tasks,
        "rpm": case.rpm,
        "burst": case.burst,
        "latency": case.latency,
        "retry_after": case.retry_after,
        "done": result.get("done"),
        "failed": result.get("failed"),
        "charged": charged,
        "rate_limited": limited,
        "limited_per_charged": limited / charged if charged else None,
        "window": round(window, 3),
        "goodput": (charged / window) / rate if rate and window else None,
        "of_bucket": charged / (case.burst + rate * window) if rate and window else None,
        "makespan": makespan,
        "ideal": ideal,
        "plain_ideal": plain,
        "vs_ideal": makespan / ideal if ideal else None,
        "vs_plain": makespan / plain if plain else None,
        "client_cpu": result.get("cpu"),
        "raw": result,
    }


def run_cases(cases: Sequence[RateCase], *, parallel: bool, prefix: str) -> list[dict[str, Any]]:
    """Run the cases: one after another on one simulator per config, or all at once."""

    def alone(case: RateCase) -> dict[str, Any]:
        with running_sim(case.sim_flags()) as sim, scratch_dir(prefix) as folder:
            return measure(sim, case, folder)

    if parallel:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            return list(pool.map(alone, cases))
    out: list[dict[str, Any]] = []
    sims: dict[tuple[str, ...], Sim] = {}
    try:
        for case in cases:
            flags = tuple(case.sim_flags())
            if flags not in sims:
                sims[flags] = start_sim(list(flags), keys=16)
            with scratch_dir(prefix) as folder:
                out.append(measure(sims[flags], case, folder))
    finally:
        for sim in sims.values():
            sim.stop()
    return out


def _rate_table(title: str, rows: Sequence[dict[str, Any]], *, with_goal: bool) -> Table:
    table = Table(
        title,
        [
            "run",
            "rpm",
            "Retry-After",
            "tasks",
            "done",
            "charged",
            "429s",
            "429/charged",
            "goodput",
            "of bucket",
            "makespan s",
            "ideal s",
            "÷ ideal",
            "÷ plain",
            "goal",
        ],
    )
    for r in rows:
        ok = None
        if with_goal:
            ok = _rate_ok(r)
        table.add(
            r["label"],
            r["rpm"],
            "on" if r["retry_after"] else "off",
            r["tasks"],
            r["done"],
            r["charged"],
            r["rate_limited"],
            _f3(r["limited_per_charged"]),
            _f3(r["goodput"]),
            _f3(r["of_bucket"]),
            r["makespan"],
            r["ideal"],
            _f3(r["vs_ideal"]),
            _f3(r["vs_plain"]),
            goal(ok),
        )
    return table


def _f3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rate_ok(r: dict[str, Any]) -> bool:
    return bool(
        r["done"] == r["tasks"]
        and r["goodput"] is not None
        and r["goodput"] >= 0.95
        and r["limited_per_charged"] is not None
        and r["limited_per_charged"] <= 0.05
        and r["vs_ideal"] is not None
        and r["vs_ideal"] <= 1.10
    )


def goodput(*, quick: bool, parallel_slow: bool = True, http: str = "httpx2") -> ScenarioResult:
    """Scenario 1: 600 and 60 rpm, Retry-After on/off, rate in the spec or not."""
    result = ScenarioResult("goodput", "1. Goodput under a rate limit (burst 20, latency 2 s)")
    all_rows: list[dict[str, Any]] = []
    for rpm, tasks, parallel in ((600.0, 300 if quick else 1000, False),
                                 (60.0, 100 if quick else 1000, parallel_slow)):  # fmt: skip
        cases = [
            RateCase(
                f"batchgen, {'rate in spec' if spec_rate else 'rate discovered'}",
                batchgen_client(tasks, spec_rate=rpm if spec_rate else None, http=http),
                tasks,
                rpm,
                retry_after=ra,
            )
            for ra in (True, False)
            for spec_rate in (True, False)
        ]
        rows = run_cases(cases, parallel=parallel, prefix=f"goodput{rpm:g}")
        all_rows += rows
        result.tables.append(_rate_table(f"{rpm:g} rpm, {tasks:,} tasks", rows, with_goal=True))
    result.raw = all_rows
    for rpm in (600.0, 60.0):
        for mode in ("rate in spec", "rate discovered"):
            rows = [r for r in all_rows if r["rpm"] == rpm and mode in r["label"]]
            name = f"goodput ≥ 0.95, ≤ 0.05 429s/charged, ≤ 1.10 x ideal: {rpm:g} rpm, {mode}"
            result.goals[name] = all(_rate_ok(r) for r in rows)
    result.notes += [
        f"Simulator: `batchgen sim --rpm R --burst {BURST} --latency {LATENCY:g}"
        f" --image-scale {IMAGE_SCALE} [--no-retry-after]`; job: one prompt per task,"
        f" `limits.concurrency: {CONCURRENCY}`, `requests_per_minute: R` in the spec or"
        " unset (no `burst` in the spec: batchgen does not use the server's burst).",
        "goodput = charged submissions per minute ÷ allowed per minute over the window"
        " (first to last charged submission); of bucket = charged ÷ (burst + rate x"
        " window), what the server's bucket could have accepted; ideal = (tasks - burst)"
        " ÷ rate + latency (the goal's reference); ÷ plain: ÷ (tasks ÷ rate).",
        "The 60 rpm runs run side by side, each on its own simulator (they use well under"
        " 1% of a core); the 600 rpm runs run one after another on one simulator, each"
        " with a fresh key.",
    ]
    return result


def runner_issue(*, quick: bool, http: str = "httpx2") -> ScenarioResult:
    """The runner issue's figure: 300 tasks at 600 rpm, then a re-run that charges 0."""
    del quick  # the figure is defined at 300 tasks; it takes a minute either way
    result = ScenarioResult("runner", "Runner issue: 300 tasks at 600 rpm (burst 20, latency 2 s)")
    table = Table(
        "300 tasks, `batchgen sim --rpm 600 --burst 20 --latency 2`",
        [
            "spec",
            "makespan s",
            "÷ (tasks ÷ rate)",
            "target",
            "429/charged",
            "target",
            "re-run charged",
            "re-run s",
            "goal",
        ],
    )
    flags = RateCase("", batchgen_client(1, spec_rate=None), 300, 600.0).sim_flags()
    with running_sim(flags, keys=4) as sim:
        for spec_rate, t_ratio, t_429 in ((600.0, 1.10, 0.01), (None, 1.20, 0.10)):
            with scratch_dir("runner") as folder:
                client = batchgen_client(300, spec_rate=spec_rate, http=http)
                case = RateCase("", client, 300, 600.0)
                row = measure(sim, case, folder)
                # The same job again, same key and output: everything is done already.
                key = sim.keys[sim._next_key - 1]
                before = sim.stats()["submissions_charged"]
                again = run_worker(
                    "run",
                    {"spec": row["raw"]["spec"], "base_url": sim.base_url, "key": key},
                    http=http,
                )
                row["rerun_charged"] = sim.stats()["submissions_charged"] - before
                row["rerun_wall"] = again["wall"]
                row["spec_rate"] = spec_rate
                ok = bool(
                    row["done"] == 300
                    and row["vs_plain"] <= t_ratio
                    and row["limited_per_charged"] <= t_429
                    and row["rerun_charged"] == 0
                )
                name = "requests_per_minute: 600" if spec_rate else "no rate (discovered)"
                result.goals[f"runner issue, {name}"] = ok
                table.add(
                    name,
                    row["makespan"],
                    _f3(row["vs_plain"]),
                    f"≤ {t_ratio:.2f}",
                    _f3(row["limited_per_charged"]),
                    f"≤ {t_429:.2f}",
                    row["rerun_charged"],
                    row["rerun_wall"],
                    goal(ok),
                )
                result.raw.append(row)
    result.tables.append(table)
    result.notes.append(
        "ideal = tasks ÷ allowed rate = 30 s, as the runner issue defines it; `limits."
        f"concurrency: {CONCURRENCY}`. The re-run uses the same spec, output and key."
    )
    return result


def latency(*, quick: bool, http: str = "httpx2") -> ScenarioResult:
    """Scenario 2: no rate limit, latency 5 s, concurrency 50."""
    tasks = 200 if quick else 1000
    lat = 5.0
    result = ScenarioResult("latency", "2. Latency-bound (no rate limit, latency 5 s)")
    flags = ["--latency", f"{lat:g}", "--image-scale", IMAGE_SCALE]
    with running_sim(flags) as sim, scratch_dir("latency") as folder:
        client = batchgen_client(tasks, spec_rate=None, http=http)
        row = measure(sim, RateCase("batchgen", client, tasks, 0.0, latency=lat), folder)
    ideal = tasks * lat / CONCURRENCY
    row["ideal"] = ideal
    row["vs_ideal"] = row["makespan"] / ideal
    ok = row["done"] == tasks and row["vs_ideal"] <= 1.10
    result.goals["latency-bound makespan ≤ 1.10 x ideal"] = ok
    table = Table(
        f"{tasks:,} tasks, concurrency {CONCURRENCY}",
        ["tasks", "done", "makespan s", "ideal s", "÷ ideal", "429s", "client CPU s", "goal"],
    )
    table.add(
        tasks,
        row["done"],
        row["makespan"],
        ideal,
        _f3(row["vs_ideal"]),
        row["rate_limited"],
        row["client_cpu"],
        goal(ok),
    )
    result.tables.append(table)
    result.raw.append(row)
    result.notes.append(
        f"ideal = tasks x latency ÷ concurrency; `batchgen sim --latency {lat:g}"
        f" --image-scale {IMAGE_SCALE}` (each task takes 5 s x uniform(0.75, 1.25))."
    )
    return result


def peers(
    *, quick: bool, rates: Sequence[float] = (600.0,), http: str = "httpx2"
) -> ScenarioResult:
    """Scenario 5: batchgen beside the hand-written scripts, same job, same simulator."""
    result = ScenarioResult("peers", "5. Peers: batchgen beside hand-written scripts")
    for rpm in rates:
        tasks = (300 if rpm >= 300 else 100) if quick else 1000
        cases = [
            RateCase(
                "batchgen (rate discovered)",
                batchgen_client(tasks, spec_rate=None, http=http),
                tasks,
                rpm,
            ),
            RateCase(
                "batchgen (rate in spec)",
                batchgen_client(tasks, spec_rate=rpm, http=http),
                tasks,
                rpm,
            ),
            RateCase("a. gather + tenacity", peer_client("gather_tenacity.py", tasks), tasks, rpm),
            RateCase("b. fixed 15 s pause", peer_client("fixed_pause.py", tasks), tasks, rpm),
        ]
        rows = run_cases(cases, parallel=rpm < 300, prefix=f"peers{rpm:g}")
        base = rows[0]
        table = Table(
            f"{rpm:g} rpm, burst {BURST}, latency {LATENCY:g} s, {tasks:,} tasks,"
            f" concurrency {CONCURRENCY}",
            [
                "client",
                "done",
                "makespan s",
                "÷ batchgen",
                "÷ ideal",
                "429s",
                "429s ÷ batchgen",
                "429/charged",
                "goodput",
                "client CPU s",
            ],
        )
        for r in rows:
            table.add(
                r["label"],
                r["done"],
                r["makespan"],
                _f3(r["makespan"] / base["makespan"]),
                _f3(r["vs_ideal"]),
                r["rate_limited"],
                _f3(r["rate_limited"] / base["rate_limited"]) if base["rate_limited"] else "-",
                _f3(r["limited_per_charged"]),
                _f3(r["goodput"]),
                r["client_cpu"],
            )
        result.tables.append(table)
        result.raw += rows
    result.notes += [
        "Same simulator process for all four runs of a rate (one after another, a fresh"
        " key each) at 600 rpm; side by side on identical simulators at lower rates."
        " Ratios are against batchgen with the rate discovered (the peers do not know"
        " it either).",
        "Peer a (`benchmarks/peers/gather_tenacity.py`): asyncio.gather over a"
        " semaphore of 50, tenacity `wait_random_exponential(min=1, max=60)` on 429 (up"
        " to 20 attempts), poll once a second, download. Peer b"
        " (`benchmarks/peers/fixed_pause.py`): the same, but every worker pauses until"
        " 15 s after the last 429. Neither reads Retry-After. Client CPU of the peers"
        " includes interpreter start-up; batchgen's is the run alone.",
    ]
    return result
