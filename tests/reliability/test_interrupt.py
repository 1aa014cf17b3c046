"""Graceful interruption: SIGINT (and SIGTERM) at random moments, then resume to the end."""

from __future__ import annotations

import random
import signal
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
    run_cli,
    start_sim,
    write_spec,
)

TASKS = 300
CONCURRENCY = 16
INTERRUPTS = 12
SEED = 424242
#: Seconds after the run announced its start (its ``start`` JSON event).
DELAYS = (0.0, 6.0)


@pytest.mark.reliability
def test_sigint_at_random_moments(tmp_path: Path, procs: Processes) -> None:
    """Every SIGINT/SIGTERM ends the run with 130, no task unknown, no task charged twice."""
    logs = tmp_path / "logs"
    sim = start_sim(
        procs, logs, "--latency", "1", "--busy-rate", "0.1", "--error-rate", "0.02",
        "--seed", str(SEED), "--image-scale", "0.1",
    )  # fmt: skip
    job = tmp_path / "job"
    spec = write_spec(job, name="sigint", tasks=TASKS, concurrency=CONCURRENCY)
    db = job / "out" / "batchgen.sqlite"
    args = ["run", str(spec), "--base-url", sim.base_url, "--json"]
    rng = random.Random(SEED)
    stops: list[float] = []
    for i in range(INTERRUPTS):
        run = RunProcess(procs, args, cwd=job, logdir=logs)
        _wait_for_start(run)
        delay = rng.uniform(*DELAYS)
        time.sleep(delay)
        signum = signal.SIGTERM if i % 4 == 3 else signal.SIGINT
        sent = time.monotonic()
        run.signal(signum)
        rc = run.wait(90)
        stops.append(time.monotonic() - sent)
        assert "Traceback" not in run.stderr(), run.stderr()[-3000:]
        assert rc == 130, f"interrupt {i} ({signum.name} after {delay:.2f}s): exit {rc}"
        counts = ledger_counts(db) if db.exists() else {}
        assert counts.get("unknown", 0) == 0, f"interrupt {i}: {dict(counts)}"
        assert counts.get("submitting", 0) == 0, f"interrupt {i}: {dict(counts)}"
        if db.exists():
            assert integrity_check(db) == "ok"
    done_before = ledger_counts(db).get("done", 0)
    final = run_cli(procs, args, cwd=job, logdir=logs, timeout=1200)
    assert final.rc == 0, final.stderr[-2000:]
    rows = ledger_rows(db)
    sim_tasks = sim.tasks()
    charges = charges_by_key(rows, sim_tasks)
    assert keys_ever_in(db, "unknown") == set()
    assert sorted(set(charges.values())) == [1], "a task was charged twice"
    assert len(charges) == TASKS
    check = check_outputs(job / "out", rows, sim_tasks)
    assert not check.problems, check.problems[:10]
    assert leftover_files(job / "out") == []
    figure(
        "sigint",
        f"{INTERRUPTS} interrupts ({INTERRUPTS // 4} SIGTERM) at random moments of a"
        f" {TASKS}-task job: exit 130 every time, 0 unknown, 0 duplicate charges"
        f" ({sum(charges.values())} charges for {TASKS} tasks); signal-to-exit"
        f" {median_max(stops)}; {done_before} done before the final run",
    )


@pytest.mark.reliability
def test_second_sigint_quits_at_once(tmp_path: Path, procs: Processes) -> None:
    """A second SIGINT quits at once (130) even with answers in flight; the next run resumes."""
    logs = tmp_path / "logs"
    # The images route answers only when the image is made: submissions stay in flight.
    sim = start_sim(procs, logs, "--latency", "20", "--seed", "5", "--image-scale", "0.1")
    job = tmp_path / "job"
    spec = write_spec(
        job, name="twice", tasks=40, concurrency=8, model="gpt-image-2",
        extra={"api": {"endpoint": "images"}},
    )  # fmt: skip
    db = job / "out" / "batchgen.sqlite"
    args = ["run", str(spec), "--base-url", sim.base_url, "--json"]
    run = RunProcess(procs, args, cwd=job, logdir=logs)
    _wait_for_start(run)
    time.sleep(1.5)
    run.signal(signal.SIGINT)
    time.sleep(1.0)
    assert run.proc.poll() is None, "the first SIGINT should wait for the answers in flight"
    sent = time.monotonic()
    run.signal(signal.SIGINT)
    rc = run.wait(60)
    quit_after = time.monotonic() - sent
    assert rc == 130
    assert "Traceback" not in run.stderr()
    assert integrity_check(db) == "ok"
    stranded = ledger_counts(db).get("unknown", 0)
    assert 0 < stranded <= 8
    sim.configure(latency=0.3)
    final = run_cli(procs, args, cwd=job, logdir=logs, timeout=600)
    assert final.rc == 1, final.stderr[-2000:]  # the unknown ones wait for a decision
    counts = ledger_counts(db)
    assert counts.get("done", 0) + counts.get("unknown", 0) == 40, dict(counts)
    assert counts.get("unknown", 0) == stranded
    rows = ledger_rows(db)
    charges = charges_by_key(rows, sim.tasks())
    assert {k for k, n in charges.items() if n > 1} == set()
    figure(
        "sigint-twice",
        f"second SIGINT with {stranded} synchronous submissions in flight: exit 130 after"
        f" {quit_after:.2f} s; those {stranded} recorded unknown (<= concurrency 8), the"
        f" resumed run finished the other {counts.get('done', 0)} without resubmitting them",
    )


@pytest.mark.reliability
def test_sigint_during_imports(tmp_path: Path, procs: Processes) -> None:
    """Ctrl-C right after launch, while Python imports batchgen, is still a clean 130."""
    job = tmp_path / "job"
    spec = write_spec(job, name="early", tasks=3)
    run = RunProcess(
        procs,
        ["run", str(spec), "--base-url", "http://127.0.0.1:9/v1"],
        cwd=job,
        logdir=tmp_path / "logs",
    )
    time.sleep(0.1)
    run.signal(signal.SIGINT)
    rc = run.wait(30)
    figure(
        "sigint-imports",
        f"SIGINT 0.1 s after launch: exit {rc}, traceback: {'Traceback' in run.stderr()}",
    )
    assert rc == 130
    assert "Traceback" not in run.stderr()


def _wait_for_start(run: RunProcess, timeout: float = 60) -> None:
    """Block until the run printed its ``start`` event."""
    deadline = time.monotonic() + timeout
    while run.start_time() is None:
        assert run.proc.poll() is None, f"run exited early: {run.stderr()[-2000:]}"
        assert time.monotonic() < deadline, "run did not start"
        time.sleep(0.02)
