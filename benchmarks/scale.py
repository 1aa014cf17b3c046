"""Scale: planning a million tasks, and a 100,000-task ledger through a run and a resume.

- Planning: a spec of three 100-value axes (1,000,000 tasks) loaded, counted,
  expanded (every task built, its key computed) and planned (``batchgen plan``'s
  summary), in a fresh process: times and peak RSS.
- Ledger capacity: the ledger alone, 100,000 tasks synced, then each driven through
  four transitions by 64 concurrent writers (each awaiting its commit).
- A run: 100,000 tasks against the simulator (latency 0, small images, no limit):
  transitions per second over the run and peak RSS; then the same job again (every
  task done): the resume's start-up time (from the call to the pipeline's start,
  recovering, syncing, checking 100,000 files) and what it charged.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import run_worker, running_sim, scratch_dir, write_job
from benchmarks.overhead import SIM_FLAGS
from benchmarks.report import ScenarioResult, Table, goal

__all__ = ["scale"]


def scale(*, quick: bool, http: str = "httpx2") -> ScenarioResult:
    """Scenario 4."""
    result = ScenarioResult("scale", "4. Scale: planning and a large ledger")
    side = 40 if quick else 100
    with scratch_dir("plan") as folder:
        axes = {name: list(range(side)) for name in ("subject", "style", "light")}
        spec = write_job(folder, name="plan", tasks=side**3, concurrency=8, axes=axes)
        plan = run_worker("plan", {"spec": str(spec)}, http=http)
    ok_plan = plan["peak_rss_mb"] < 150 and plan["planned"] == side**3
    if not quick:
        result.goals["planning 1,000,000 tasks in < 150 MB"] = ok_plan
    t_plan = Table(
        f"Planning {side**3:,} tasks",
        [
            "load s",
            "count s",
            "expand s",
            "plan summary s",
            "tasks/s (expand)",
            "RSS after imports MB",
            "peak RSS MB",
            "goal",
        ],
    )
    t_plan.add(
        f"{plan['load_s']:.3f}",
        f"{plan['count_s']:.4f}",
        f"{plan['expand_s']:.2f}",
        f"{plan['plan_s']:.2f}",
        plan["expanded"] / plan["expand_s"] if plan["expand_s"] else None,
        plan["rss_after_import_mb"],
        plan["peak_rss_mb"],
        goal(ok_plan),
    )
    result.tables.append(t_plan)
    result.raw.append({"plan": plan})

    n_ledger = 20_000 if quick else 100_000
    with scratch_dir("ledger") as folder:
        ledger = run_worker(
            "ledger", {"tasks": n_ledger, "writers": 64, "path": str(folder / "l.sqlite")}
        )
    t_ledger = Table(
        f"Ledger alone: {n_ledger:,} tasks, 64 concurrent writers",
        ["sync s", "rows/s", "transitions", "commits", "s", "transitions/s", "CPU ms/transition"],
    )
    t_ledger.add(
        ledger["sync_s"],
        n_ledger / ledger["sync_s"],
        ledger["transitions"],
        ledger["batches"],
        ledger["transitions_s"],
        ledger["transitions"] / ledger["transitions_s"],
        1000 * ledger["transitions_cpu"] / ledger["transitions"],
    )
    result.tables.append(t_ledger)
    result.raw.append({"ledger": ledger})

    n_run = 10_000 if quick else 100_000
    with running_sim(SIM_FLAGS) as sim, scratch_dir("scale") as folder:
        spec = write_job(folder, name="job", tasks=n_run, concurrency=64)
        key = sim.key()
        options: dict[str, Any] = {"spec": str(spec), "base_url": sim.base_url, "key": key}
        first = run_worker("run", options, http=http)
        charged_before = sim.stats()["submissions_charged"]
        again = run_worker("run", options, http=http)
        charged_again = sim.stats()["submissions_charged"] - charged_before
    ok_resume = again["startup"] is not None and again["startup"] < 2.0 and charged_again == 0
    if not quick:
        result.goals["resume start-up < 2 s for 100,000 tasks"] = ok_resume
    t_run = Table(
        f"A {n_run:,}-task job (latency 0, concurrency 64), then the same job again",
        [
            "run",
            "done",
            "wall s",
            "start-up s",
            "transitions",
            "transitions/s",
            "CPU ms/task",
            "peak RSS MB",
            "charged",
            "goal",
        ],
    )
    done = first["summary"]["counts"]["done"]
    t_run.add(
        "first run",
        done,
        first["wall"],
        first["startup"],
        first["transitions"],
        first["transitions"] / first["wall"],
        1000 * first["cpu"] / n_run,
        first["peak_rss_mb"],
        charged_before,
        "-",
    )
    t_run.add(
        "resume (all done)",
        again["summary"]["counts"]["done"],
        again["wall"],
        again["startup"],
        again["transitions"],
        "-",
        "-",
        again["peak_rss_mb"],
        charged_again,
        goal(ok_resume),
    )
    result.tables.append(t_run)
    result.raw.append({"run": first, "resume": again, "charged_again": charged_again})
    result.notes += [
        "Planning spec: `prompt: benchmark image {subject} {style} {light}` over three"
        f" axes of {side} values; `expand` builds every task (prompt, request, key);"
        " `plan summary` is what `batchgen plan` computes. Peak RSS is the whole worker"
        " process (interpreter, pydantic and the rest included).",
        "Start-up = from the call to `arun` to the pipeline's start (`on_start`):"
        " opening the ledger, recovery, the spec sync (skipped when the spec did not"
        " change), checking every done task's file, cleaning partial files.",
    ]
    return result
