"""Many writers: runs of one job started together, killed, and sharded jobs killed mid-way.

Two cases, each with real ``batchgen`` subprocesses against a ``batchgen sim`` process:

- **Concurrent writers**: rounds of four runs of the same job started at the same
  moment, the one that holds the ledger then SIGKILLed, a dozen times over. In every
  round exactly one run may work; the others must be refused (exit 4) before they
  start, and no task may be charged twice unless a kill left it ``unknown``.
- **Sharded crash loop**: four shard processes of one job, shards SIGKILLed at random
  and restarted (a preempted pod, a requeued array task), a duplicate of a live shard
  started now and then; at the end ``batchgen merge`` makes one dataset whose every
  image is byte-identical to what the simulator served.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.harness import (
    LedgerRow,
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

SEED = 20261201
TASKS = int(os.environ.get("RELIABILITY_WRITERS_TASKS", "400"))
ROUNDS = int(os.environ.get("RELIABILITY_WRITERS_ROUNDS", "12"))
WRITERS = 4
CONCURRENCY = 16
SHARDS = 4
SHARD_TASKS = int(os.environ.get("RELIABILITY_SHARD_TASKS", "600"))
SHARD_KILLS = int(os.environ.get("RELIABILITY_SHARD_KILLS", "24"))


def _settle(runs: list[RunProcess], timeout: float) -> None:
    """Wait until at most one of ``runs`` is alive (the others refused), or time out."""
    deadline = time.monotonic() + timeout
    while sum(r.proc.poll() is None for r in runs) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)


def _started(run: RunProcess) -> bool:
    return any(e.get("event") == "start" for _, e in run.json_events())


@pytest.mark.reliability
def test_concurrent_writers(tmp_path: Path, procs: Processes) -> None:
    """Four runs of one job at once, a dozen times: one works, the rest exit 4 unchanged."""
    began = time.monotonic()
    logs = tmp_path / "logs"
    sim = start_sim(
        procs, logs, "--latency", "1", "--seed", str(SEED), "--image-scale", "0.1",
    )  # fmt: skip
    job = tmp_path / "job"
    spec = write_spec(job, name="writers", tasks=TASKS, concurrency=CONCURRENCY)
    out = job / "out"
    db = out / "batchgen.sqlite"
    args = ["run", str(spec), "--base-url", sim.base_url, "--json"]
    rng = random.Random(SEED)

    refusals: list[float] = []
    kills = 0
    working_rounds = 0
    for _ in range(ROUNDS):
        runs = [RunProcess(procs, args, cwd=job, logdir=logs) for _ in range(WRITERS)]
        _settle(runs, timeout=60)
        alive = [r for r in runs if r.proc.poll() is None]
        assert len(alive) <= 1, "two runs of one job writing at once"
        for run in runs:
            if run in alive:
                continue
            rc = run.wait(10)
            if rc == 4:
                assert "is held by batchgen run" in run.stderr(), run.stderr()[-500:]
                assert not _started(run), "a refused run started the pipeline"
                refusals.append(time.monotonic() - run.started)
            else:
                assert rc in (0, 1), run.stderr()[-2000:]  # the job had ended: nothing to do
        if not alive:
            break
        working_rounds += 1
        try:
            alive[0].wait(rng.uniform(1.0, 5.0))
        except subprocess.TimeoutExpired:
            os.kill(alive[0].proc.pid, signal.SIGKILL)
            alive[0].wait(30)
            kills += 1
        if db.exists():
            assert integrity_check(db) == "ok"

    assert refusals, "no run was ever refused"
    final = run_cli(procs, args, cwd=job, logdir=logs, timeout=900)
    assert final.rc in (0, 1), final.stderr[-2000:]
    counts = ledger_counts(db)
    unknown = counts.get("unknown", 0)
    assert counts.get("done", 0) + unknown == TASKS, dict(counts)
    assert unknown <= kills * CONCURRENCY
    rows = ledger_rows(db)
    charges = charges_by_key(rows, sim.tasks())
    ever_unknown = keys_ever_in(db, "unknown")
    doubled = {key for key, n in charges.items() if n > 1}
    assert doubled <= ever_unknown, f"charged twice without being unknown: {doubled}"
    check = check_outputs(out, rows, sim.tasks())
    assert not check.problems, check.problems[:10]
    assert leftover_files(out) == []
    figure(
        "concurrent writers",
        f"{working_rounds} rounds of {WRITERS} runs started at once over {TASKS} tasks,"
        f" {kills} holders SIGKILLed: {len(refusals)} runs refused (exit 4, none started),"
        f" refusal {median_max(refusals)}; never two writers; {len(doubled)} tasks charged"
        f" twice (all among {unknown} unknown left by kills); {check.verified} images"
        f" verified; total {time.monotonic() - began:.0f} s",
    )


def _shard_args(spec: Path, base_url: str, index: int) -> list[str]:
    return ["run", str(spec), "--base-url", base_url, "--json", "--shard", f"{index}/{SHARDS}"]


def _shard_rows(out: Path) -> list[LedgerRow]:
    rows: list[LedgerRow] = []
    for index in range(SHARDS):
        rows += ledger_rows(out / "shards" / f"{index}-of-{SHARDS}" / "batchgen.sqlite")
    return rows


@pytest.mark.reliability
def test_sharded_crash_loop(tmp_path: Path, procs: Processes) -> None:
    """Four shards, SIGKILLed and restarted at random, duplicates refused; one dataset."""
    began = time.monotonic()
    logs = tmp_path / "logs"
    sim = start_sim(
        procs, logs, "--latency", "1", "--busy-rate", "0.05", "--seed", str(SEED),
        "--image-scale", "0.1",
    )  # fmt: skip
    job = tmp_path / "job"
    spec = write_spec(job, name="shards", tasks=SHARD_TASKS, concurrency=CONCURRENCY)
    out = job / "out"
    rng = random.Random(SEED)
    runs = {
        i: RunProcess(procs, _shard_args(spec, sim.base_url, i), cwd=job, logdir=logs)
        for i in range(SHARDS)
    }
    kills = 0
    duplicates = 0
    ended: set[int] = set()
    while kills < SHARD_KILLS and len(ended) < SHARDS:
        time.sleep(rng.uniform(0.5, 3.0))  # the moment of the next fault, not a wait on work
        victim = rng.randrange(SHARDS)
        run = runs[victim]
        if run.proc.poll() is not None:
            if run.wait(5) in (0, 1):
                ended.add(victim)
            continue
        if rng.random() < 0.25:  # a duplicate of a live shard (a retried CI job)
            twin = RunProcess(procs, _shard_args(spec, sim.base_url, victim), cwd=job, logdir=logs)
            assert twin.wait(60) == 4, twin.stderr()[-1000:]
            assert not _started(twin)
            duplicates += 1
            continue
        os.kill(run.proc.pid, signal.SIGKILL)
        run.wait(30)
        kills += 1
        runs[victim] = RunProcess(
            procs, _shard_args(spec, sim.base_url, victim), cwd=job, logdir=logs
        )
    for run in runs.values():
        if run.proc.poll() is None:
            assert run.wait(900) in (0, 1), run.stderr()[-2000:]
    for index in range(SHARDS):  # a shard that ended at a kill's moment: finish it
        again = run_cli(procs, _shard_args(spec, sim.base_url, index), cwd=job, logdir=logs)
        assert again.rc in (0, 1), again.stderr[-2000:]

    rows = _shard_rows(out)
    states = Counter(row.state for row in rows)
    unknown = states.get("unknown", 0)
    assert len(rows) == SHARD_TASKS
    assert states.get("done", 0) + unknown == SHARD_TASKS, dict(states)
    charges = charges_by_key(rows, sim.tasks())
    ever_unknown: set[str] = set()
    for index in range(SHARDS):
        ever_unknown |= keys_ever_in(
            out / "shards" / f"{index}-of-{SHARDS}" / "batchgen.sqlite", "unknown"
        )
    doubled = {key for key, n in charges.items() if n > 1}
    assert doubled <= ever_unknown, f"charged twice without being unknown: {doubled}"

    retry = run_cli(procs, ["retry", str(spec), "--unknown"], cwd=job, logdir=logs, timeout=120)
    assert retry.rc == 0, retry.stderr
    for index in range(SHARDS):
        last = run_cli(procs, _shard_args(spec, sim.base_url, index), cwd=job, logdir=logs)
        assert last.rc == 0, last.stderr[-2000:]
    merged = run_cli(procs, ["merge", str(spec), "--json"], cwd=job, logdir=logs, timeout=300)
    assert merged.rc == 0, merged.stderr
    result = json.loads(merged.stdout)
    rows = _shard_rows(out)
    sim_tasks = sim.tasks()
    charges = charges_by_key(rows, sim_tasks)
    assert all(n == 1 for key, n in charges.items() if key not in ever_unknown)
    assert len(charges) == SHARD_TASKS
    check = check_outputs(out, rows, sim_tasks)
    assert not check.problems, check.problems[:10]
    assert check.verified == SHARD_TASKS
    assert len(png_files(out)) == SHARD_TASKS
    assert leftover_files(out) == []
    for index in range(SHARDS):
        assert integrity_check(out / "shards" / f"{index}-of-{SHARDS}" / "batchgen.sqlite") == "ok"
    with (out / "metadata.jsonl").open(encoding="utf-8") as fh:
        manifest = [json.loads(line) for line in fh]
    assert result["images"] == SHARD_TASKS
    assert len({m["key"] for m in manifest}) == SHARD_TASKS
    assert {m["sha256"] for m in manifest} == {r.files[0]["sha256"] for r in rows}
    figure(
        "sharded crash loop",
        f"{SHARDS} shards of a {SHARD_TASKS}-task job, {kills} shard kills, {duplicates}"
        f" duplicate shard runs refused (exit 4): {unknown} unknown after the kills,"
        f" {len(doubled)} charged twice (all among them); after `retry --unknown`"
        f" {check.verified}/{SHARD_TASKS} images byte-identical, `merge` wrote"
        f" {len(manifest)} manifest rows; total {time.monotonic() - began:.0f} s",
    )
