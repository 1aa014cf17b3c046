"""Crash loop: a 1,000-task job SIGKILLed at random moments 30+ times, restarted until done."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.harness import (
    Processes,
    RunProcess,
    charges_by_key,
    check_outputs,
    figure,
    integrity_check,
    keys_ever_in,
    ledger_counts,
    ledger_rows,
    leftover_files,
    median_max,
    png_files,
    run_cli,
    start_sim,
    write_spec,
)

# Overridable for a quick local try (the documented figures use the defaults).
TASKS = int(os.environ.get("RELIABILITY_CRASH_TASKS", "1000"))
KILLS = int(os.environ.get("RELIABILITY_CRASH_KILLS", "30"))
CONCURRENCY = 32
SEED = 20260611
#: Kill delays, seconds after the process is spawned: from "still importing" to "deep in
#: the pipeline".
KILL_DELAY = (0.3, 8.0)
_RECOVERED = re.compile(r"(\d+) task\(s\) were being submitted when the last run stopped")


@pytest.mark.reliability
def test_crash_loop(tmp_path: Path, procs: Processes) -> None:
    """SIGKILL at 30+ random moments loses no image, leaves no partial file, pays once per task."""
    began = time.monotonic()
    logs = tmp_path / "logs"
    sim = start_sim(
        procs, logs, "--latency", "1", "--busy-rate", "0.1", "--error-rate", "0.02",
        "--seed", str(SEED), "--image-scale", "0.1",
    )  # fmt: skip
    job = tmp_path / "job"
    spec = write_spec(job, name="crash", tasks=TASKS, concurrency=CONCURRENCY)
    out = job / "out"
    db = out / "batchgen.sqlite"
    args = ["run", str(spec), "--base-url", sim.base_url, "--json"]
    rng = random.Random(SEED)

    kills = 0
    startups: list[float] = []
    recovered: list[int] = []
    kill_log: list[tuple[float, bool]] = []  # (delay, had the run reached "start")
    ended_by_itself: int | None = None
    spawned = 0
    while kills < KILLS:
        run = RunProcess(procs, args, cwd=job, logdir=logs)
        spawned += 1
        delay = rng.uniform(*KILL_DELAY)
        try:
            ended_by_itself = run.wait(delay)
        except subprocess.TimeoutExpired:
            os.kill(run.proc.pid, signal.SIGKILL)
            run.wait(30)
            kills += 1
        _collect(run, startups if spawned > 1 else [], recovered)
        kill_log.append((delay, run.start_time() is not None))
        if ended_by_itself is not None:
            break  # every task is done or unknown: nothing left to interrupt
        if db.exists():
            assert integrity_check(db) == "ok", f"ledger damaged after kill {kills}"

    assert kills >= KILLS, f"the job ended after only {kills} kills (ran out of work)"
    # Restart until the job ends by itself: every task done, or unknown (never resubmitted).
    final = run_cli(procs, args, cwd=job, logdir=logs, timeout=1800)
    _collect_text(final.stdout, recovered)
    if final.start is not None:
        startups.append(final.start)
    assert final.rc in (0, 1), final.stderr[-2000:]
    counts = ledger_counts(db)
    unknown = counts.get("unknown", 0)
    assert counts.get("done", 0) + unknown == TASKS, dict(counts)
    bound = CONCURRENCY * kills
    assert unknown <= bound
    assert unknown == sum(recovered), (unknown, recovered)

    rows = ledger_rows(db)
    sim_tasks = sim.tasks()
    charges = charges_by_key(rows, sim_tasks)
    ever_unknown = keys_ever_in(db, "unknown")
    doubled = {key for key, n in charges.items() if n > 1}
    assert doubled <= ever_unknown, f"charged twice without being unknown: {doubled - ever_unknown}"
    assert all(n == 1 for key, n in charges.items() if key not in ever_unknown)
    charged_before_retry = sum(charges.values())

    # Finish the unknown ones explicitly, as a user would.
    retry = run_cli(procs, ["retry", str(spec), "--unknown"], cwd=job, logdir=logs, timeout=120)
    assert retry.rc == 0, retry.stderr
    last = run_cli(procs, args, cwd=job, logdir=logs, timeout=1800)
    assert last.rc == 0, last.stderr[-2000:]

    rows = ledger_rows(db)
    sim_tasks = sim.tasks()
    charges = charges_by_key(rows, sim_tasks)
    extra = sum(charges.values()) - charged_before_retry
    assert extra <= unknown
    assert all(n <= 2 for n in charges.values())
    assert all(n == 1 for key, n in charges.items() if key not in ever_unknown)
    assert len(charges) == TASKS
    assert all(row.state == "done" for row in rows)
    check = check_outputs(out, rows, sim_tasks)
    assert not check.problems, check.problems[:10]
    assert check.verified == TASKS
    assert len(png_files(out)) == TASKS, "an image file that no task owns"
    assert leftover_files(out) == []
    assert integrity_check(db) == "ok"
    with (out / "metadata.jsonl").open(encoding="utf-8") as fh:
        manifest = [json.loads(line) for line in fh]
    assert len(manifest) == TASKS
    assert {m["sha256"] for m in manifest} == {r.files[0]["sha256"] for r in rows}
    stats = sim.stats()
    assert stats["downloads_with_credentials"] == 0

    before_start = sum(1 for _, started in kill_log if not started)
    figure(
        "crash-loop",
        f"{TASKS} tasks, {kills} kills ({before_start} before the run started), {unknown}"
        f" unknown (bound {kills}*{CONCURRENCY}={bound}), resume start-up"
        f" {median_max(startups)} (n={len(startups)})",
    )
    figure(
        "crash-loop charges",
        f"{charged_before_retry} charges before `retry --unknown` ({len(doubled)} tasks"
        f" charged twice, all among the {unknown} unknown), {extra} extra after it (<="
        f" {unknown}); {stats['rate_limited']} 429s and {stats['errors_injected']} 5xx"
        f" injected; largest stranding per kill {max(recovered, default=0)}",
    )
    figure(
        "crash-loop files",
        f"{check.verified}/{TASKS} images byte-identical to the simulator's (sha256),"
        f" 0 temporary/partial files, integrity_check ok, {len(manifest)} manifest rows,"
        f" total {time.monotonic() - began:.0f} s",
    )


def _collect(run: RunProcess, startups: list[float], recovered: list[int]) -> None:
    """Record a run's start-up time and how many submissions its start found stranded."""
    started = run.start_time()
    if started is not None:
        startups.append(started)
    for text in run.messages():
        match = _RECOVERED.search(text)
        if match:
            recovered.append(int(match.group(1)))


def _collect_text(stdout: str, recovered: list[int]) -> None:
    """Add the stranded counts that a finished run's JSON messages report."""
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "message":
            match = _RECOVERED.search(str(event.get("text")))
            if match:
                recovered.append(int(match.group(1)))
