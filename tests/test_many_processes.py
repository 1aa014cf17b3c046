"""Many processes, many machines: one writer per ledger, shards, one merged dataset.

Runs go through the real runner against the simulator over loopback HTTP: in-process
where two runs must race inside one test, as ``python -m batchgen`` subprocesses where
a process must be killed (SIGKILL) the way a scheduler or a crash would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.errors import ConfigError, LeaseHeldError, UsageError
from batchgen.ledger.paths import Shard, job_ledgers, parse_shard, shard_from_env
from batchgen.ledger.report import job_status
from batchgen.output.merge import merge
from batchgen.sim import SimConfig, SimServer
from batchgen.spec.load import load_spec
from tests.conftest import SimFactory
from tests.runner_helpers import (
    RecordingHook,
    output_dir,
    run_job,
    sim_config,
    stats,
    subjects_spec,
    threaded_simulator,
)

ROOT = Path(__file__).resolve().parent.parent


def subjects(n: int) -> list[str]:
    """``n`` distinct subjects (one task each)."""
    return [f"subject {i}" for i in range(n)]


def charges_per_prompt(sim: SimServer) -> Counter[str]:
    """How often the simulator charged each prompt."""
    return Counter(str(row["prompt"]) for row in sim.state.task_rows())


# --- shards: parsing and the scheduler's variables ----------------------------------------


def test_a_shard_is_parsed_and_its_tasks_are_a_stable_slice() -> None:
    """``I/N`` parses; each key belongs to exactly one shard, by its own hash only."""
    assert parse_shard("2/4") == Shard(2, 4)
    with pytest.raises(UsageError):
        parse_shard("4/4")
    with pytest.raises(UsageError):
        parse_shard("two of four")
    keys = [f"{n:032x}" for n in range(1000)]
    owners = [[s for s in range(4) if Shard(s, 4).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    assert min(Counter(o[0] for o in owners).values()) > 200


@pytest.mark.parametrize(
    ("env", "shards", "expected"),
    [
        ({"BATCHGEN_SHARD": "1/3"}, None, Shard(1, 3)),
        ({"JOB_COMPLETION_INDEX": "2"}, 4, Shard(2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, None, Shard(0, 2)),
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            None,
            Shard(2, 3),
        ),
        ({}, None, None),
    ],
)
def test_the_shard_comes_from_the_schedulers_variables(
    env: dict[str, str], shards: int | None, expected: Shard | None
) -> None:
    """BATCHGEN_SHARD, JOB_COMPLETION_INDEX with --shards, and Slurm's array variables."""
    assert shard_from_env(env, shards=shards) == expected


def test_shards_without_an_index_is_a_usage_error() -> None:
    """``--shards N`` outside a Kubernetes Indexed Job says what is missing."""
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        shard_from_env({}, shards=4)


# --- one writer per ledger ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_second_run_of_the_job_is_refused_and_nothing_is_paid_twice(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """While a run holds the job's ledger, a second run is refused at once (naming the
    holder), changes nothing, and the service charges exactly one submission per task;
    status reads the job meanwhile and names who is running it."""
    spec = subjects_spec(tmp_path, subjects(12), limits="concurrency: 2")
    refused: list[LeaseHeldError] = []
    during: list[dict[str, Any]] = []
    async with sim_factory(sim_config(latency=0.3)) as sim:
        started = anyio.Event()
        hook = RecordingHook()
        hook.on(lambda s: s.accepted >= 2, started.set)

        async def second() -> None:
            await started.wait()
            with anyio.fail_after(5):
                try:
                    await run_job(spec, sim)
                except LeaseHeldError as exc:
                    refused.append(exc)
            during.append(await job_status(load_spec(spec)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            summary = await run_job(spec, sim, hook=hook)
        per_prompt = charges_per_prompt(sim)
        routes = stats(sim)["requests_by_route"]
    assert summary.counts["done"] == 12
    assert len(refused) == 1
    # Refused before its preflight: the service saw one run's questions only.
    assert routes.get("GET /v1/models") == 1, routes
    assert "held by batchgen run" in str(refused[0])
    assert refused[0].exit_code == 4
    assert set(per_prompt.values()) == {1}
    assert len(per_prompt) == 12
    assert during[0]["running"]
    assert "batchgen run" in during[0]["running"][0]


def _spawn(
    spec: Path, sim: SimServer, key: str, *extra: str, quiet: bool = True
) -> subprocess.Popen[str]:
    env = {**os.environ, "COBABA_API_KEY": key, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "batchgen", "run", "--base-url", sim.base_url]
    return subprocess.Popen(
        [*command, *(["--quiet"] if quiet else []), *extra, str(spec)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    """Wait until ``predicate()`` holds (the simulator's counters, across processes)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_a_killed_holders_lease_is_taken_over_and_nothing_is_paid_twice(tmp_path: Path) -> None:
    """SIGKILL of the run holding the job, then a new run: it takes the lease over (and
    says so) and finishes, with no task charged twice."""
    key = "sk-sim-kill-0123456789abcdef"
    spec = subjects_spec(tmp_path, subjects(10), limits="concurrency: 10")
    config = SimConfig(latency=1.0, image_scale=0.05, seed=0, keys=[key])
    with threaded_simulator(config) as sim:
        first = _spawn(spec, sim, key)
        # All at the service, and every answer in the ledger (a kill between the two
        # leaves an `unknown` task: right, but not what this test is about).
        _wait_for(lambda: stats(sim)["submissions_charged"] >= 10 and _all_submitted(spec, None))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        second = _spawn(spec, sim, key, quiet=False)
        _, err = second.communicate(timeout=120)
        per_prompt = charges_per_prompt(sim)
    assert second.returncode == 0, err
    assert "took over the lease left by batchgen run" in err
    assert set(per_prompt.values()) == {1}
    assert len(per_prompt) == 10


# --- shards end to end --------------------------------------------------------------------


def test_four_shards_two_killed_and_restarted_make_one_dataset(tmp_path: Path) -> None:
    """Four shard processes of a 200-task job, each with its own key; two are killed once
    their tasks are all at the service and started again: 200 images, 200 charges, and
    `merge` writes one metadata.jsonl of 200 rows."""
    keys = [f"sk-sim-shard{i}-0123456789abcdef" for i in range(4)]
    spec = subjects_spec(tmp_path, subjects(200), limits="concurrency: 64\nmax_tasks: 1000")
    config = SimConfig(latency=1.0, image_scale=0.05, seed=0, keys=keys)
    with threaded_simulator(config) as sim:
        procs = [_spawn(spec, sim, keys[i], "--shard", f"{i}/4") for i in range(4)]
        for victim in (1, 2):
            label, owed = f"key#{victim + 1}", _tasks_of(spec, victim)

            def submitted(label: str = label, owed: int = owed, victim: int = victim) -> bool:
                # Charged at the service and every answer committed to the shard's ledger
                # (a kill between the two leaves an `unknown` task, which is right but
                # is not what this test is about).
                charges: dict[str, int] = stats(sim)["charges_by_key"]
                return charges.get(label, 0) >= owed and _all_submitted(spec, victim)

            _wait_for(submitted)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(timeout=30)
            procs[victim] = _spawn(spec, sim, keys[victim], "--shard", f"{victim}/4")
        results = [p.communicate(timeout=180) for p in procs]
        per_prompt = charges_per_prompt(sim)
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    assert len(per_prompt) == 200
    assert set(per_prompt.values()) == {1}
    assert [s for s, _ in job_ledgers(load_spec(spec))] == [Shard(i, 4) for i in range(4)]
    assert not (tmp_path / "out" / "metadata.jsonl").exists()  # shards write none alone
    result = anyio.run(lambda: merge(load_spec(spec)), backend="asyncio")
    rows = (tmp_path / "out" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert result.images == 200
    assert len(rows) == 200
    assert len({json.loads(r)["key"] for r in rows}) == 200
    for row in rows:
        assert (tmp_path / "out" / json.loads(row)["file_name"]).is_file()


def _all_submitted(spec: Path, index: int | None) -> bool:
    """No task of the ledger (shard ``index`` of 4, or the job's) is still pending or
    being submitted."""
    import sqlite3

    from batchgen.ledger.paths import ledger_path

    path = ledger_path(load_spec(spec), None if index is None else Shard(index, 4))
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        (left,) = conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE state IN ('pending', 'submitting')"
        ).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return False
    finally:
        conn.close()
    return int(left) == 0


def _tasks_of(spec: Path, index: int) -> int:
    from batchgen.spec.matrix import expand

    return sum(1 for t in expand(load_spec(spec)) if Shard(index, 4).owns(t.key))


@pytest.mark.anyio
async def test_a_changed_shard_count_is_refused_with_the_way_out(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Once shards of 2 have started, a run as 3 shards, or unsharded, is refused (before
    anything is paid) and says how to go on."""
    spec = subjects_spec(tmp_path, subjects(4))
    async with sim_factory(sim_config()) as sim:
        await run_job(spec, sim, shard=Shard(0, 2))
        before = stats(sim)["submissions_charged"]
        with pytest.raises(UsageError, match="runs as 2 shards"):
            await run_job(spec, sim, shard=Shard(0, 3))
        with pytest.raises(UsageError, match="--shard I/2"):
            await run_job(spec, sim)
        after = stats(sim)["submissions_charged"]
    assert before == after


@pytest.mark.anyio
async def test_merge_gathers_shards_run_in_other_trees_and_checks_every_image(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Shards run on machines with their own output folder are gathered with `merge
    --from`: ledgers and images copied in, each image checked by its sha256; a damaged
    image, a missing one and another job's ledger are each refused by name."""
    spec_a = subjects_spec(tmp_path / "a", subjects(6))
    spec_b = tmp_path / "b" / spec_a.name  # machine B: a clone of the job repository
    spec_b.parent.mkdir()
    shutil.copy(spec_a, spec_b)
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_a, sim, shard=Shard(0, 2))
        await run_job(spec_b, sim, shard=Shard(1, 2))
    out_a, out_b = output_dir(spec_a), output_dir(spec_b)
    theirs = sorted(p for p in out_b.rglob("*.png"))
    assert theirs
    # Shard 1's ledger alone, its images still on B: refused, naming what is missing.
    shutil.copytree(out_b / "shards" / "1-of-2", out_a / "shards" / "1-of-2")
    with pytest.raises(ConfigError, match="not in"):
        await merge(load_spec(spec_a))
    shutil.rmtree(out_a / "shards" / "1-of-2")

    result = await merge(load_spec(spec_a), sources=[out_b])
    rows = (out_a / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert result.ledgers == 2
    assert result.images == 6
    assert len(rows) == 6
    assert result.copied_images == len(theirs)
    assert result.copied_ledgers == ["shards/1-of-2"]
    for image in theirs:
        copy = out_a / image.relative_to(out_b)
        assert copy.read_bytes() == image.read_bytes()
    again = await merge(load_spec(spec_a), sources=[out_b])  # idempotent: nothing to copy
    assert again.copied_images == 0
    assert again.copied_ledgers == []

    # A damaged image in a source is named, not copied.
    (out_a / theirs[0].relative_to(out_b)).unlink()
    theirs[0].write_bytes(b"not the image")
    with pytest.raises(ConfigError, match="sha256"):
        await merge(load_spec(spec_a), sources=[out_b])
    assert not (out_a / theirs[0].relative_to(out_b)).exists()

    # Another job's shards are refused.
    other = subjects_spec(tmp_path / "c", ["something else"])
    async with sim_factory(sim_config()) as sim:
        await run_job(other, sim, shard=Shard(1, 2))
    with pytest.raises(ConfigError, match="not a ledger of this job"):
        await merge(load_spec(spec_a), sources=[output_dir(other)])


@pytest.mark.anyio
async def test_each_shard_holds_its_share_of_the_budget(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """limits.budget is the job's: each of N shards holds 1/N of it (shards may not see
    one another), so all shards together never pass it; each says its share."""
    price = DEFAULT_PRICES["nano-banana-fast"]
    budget = 6.5 * price  # the job's; a shard of 2 may spend 3.25 prices: three images
    spec = subjects_spec(tmp_path, subjects(24), limits=f"budget: {budget}\nconcurrency: 4")
    summaries = []
    async with sim_factory(sim_config()) as sim:
        for index in range(2):
            hook = RecordingHook()
            summaries.append(await run_job(spec, sim, hook=hook, shard=Shard(index, 2)))
            assert any("its share of limits.budget" in t for t in hook.texts("info"))
        charged = stats(sim)["charged_total"]
    assert [s.counts["done"] for s in summaries] == [3, 3]
    assert [s.stop_reason for s in summaries] == ["budget", "budget"]
    assert charged <= budget + 1e-9


# --- deploy examples ----------------------------------------------------------------------


def test_the_deploy_examples_set_the_variables_batchgen_reads() -> None:
    """The Kubernetes Indexed Job, the Slurm array and the GitHub Actions matrix each set
    the shard variables batchgen reads, with the key from a secret."""
    import yaml

    deploy = ROOT / "examples" / "deploy"
    job = yaml.safe_load((deploy / "kubernetes-indexed-job.yaml").read_text(encoding="utf-8"))
    spec = job["spec"]
    assert job["kind"] == "Job"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    container = spec["template"]["spec"]["containers"][0]
    command = " ".join(container["command"] + container.get("args", []))
    assert f"--shards {spec['completions']}" in command
    env = {e["name"]: e for e in container["env"]}
    assert env["COBABA_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert any(m["mountPath"] for m in container["volumeMounts"])
    # Kubernetes sets JOB_COMPLETION_INDEX itself in an Indexed Job.
    assert shard_from_env({"JOB_COMPLETION_INDEX": "0"}, shards=spec["completions"])

    slurm = (deploy / "slurm-array.sh").read_text(encoding="utf-8")
    assert "#SBATCH --array=" in slurm
    assert "batchgen run" in slurm
    assert "--shard" not in slurm  # the array variables say it
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"})

    workflow = yaml.safe_load((deploy / "github-actions.yml").read_text(encoding="utf-8"))
    jobs = workflow["jobs"]
    shards = jobs["shard"]["strategy"]["matrix"]["shard"]
    run_steps = " ".join(str(step.get("run", "")) for step in jobs["shard"]["steps"])
    env = dict(jobs["shard"].get("env", {}))
    for step in jobs["shard"]["steps"]:
        if "batchgen run" in str(step.get("run")):
            env.update(step.get("env", {}))
    assert "BATCHGEN_SHARD" in env
    assert f"/{len(shards)}" in str(env["BATCHGEN_SHARD"])
    assert "secrets." in str(env.get("COBABA_API_KEY", ""))
    assert "batchgen run" in run_steps
    merge_steps = " ".join(str(step.get("run", "")) for step in jobs["merge"]["steps"])
    assert "batchgen merge" in merge_steps
    assert "--from" in merge_steps
    assert jobs["merge"]["needs"] == "shard"


@pytest.mark.anyio
async def test_read_only_commands_work_while_a_run_writes(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """status, export and plan's done count read the ledger while a run holds it."""
    from batchgen.ledger.report import export_rows

    spec = subjects_spec(tmp_path, subjects(6), limits="concurrency: 1")
    seen: list[int] = []
    async with sim_factory(sim_config(latency=0.2)) as sim:
        started = anyio.Event()
        hook = RecordingHook()
        hook.on(lambda s: s.downloaded >= 1, started.set)

        async def reader() -> None:
            await started.wait()
            rows = await export_rows(load_spec(spec))
            status = await job_status(load_spec(spec))
            seen.append(len(rows))
            seen.append(status["counts"]["done"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await run_job(spec, sim, hook=hook)
    assert seen[0] == 6
    assert seen[1] >= 1


@pytest.mark.anyio
async def test_the_early_refusal_creates_nothing_and_sees_a_live_lease(tmp_path: Path) -> None:
    """Before the preflight a run asks whether the job is held: for a job that never ran
    the answer creates no file; for a held one it is LeaseHeldError, naming the holder."""
    from batchgen.ledger.lease import hold, refuse_if_held
    from batchgen.ledger.store import Ledger

    path = tmp_path / "out" / "batchgen.sqlite"
    await refuse_if_held(path)
    assert not (tmp_path / "out").exists()
    async with Ledger.open(path) as ledger, hold(ledger, command="batchgen run"):
        with pytest.raises(LeaseHeldError, match="held by batchgen run"):
            await refuse_if_held(path)
    await refuse_if_held(path)  # released: free again


def test_a_shard_removes_its_own_partial_files_at_start(tmp_path: Path) -> None:
    """A shard killed mid-download leaves a partial file named after it: its next
    start-up removes it at once; another shard's fresh one stays (it may be
    downloading now), a stale one of any shard goes."""
    import time as clock

    from batchgen.output.fetch import part_path
    from batchgen.runner.startup import STALE_PARTIAL, _clean_partials

    folder = tmp_path / "out" / "m"
    folder.mkdir(parents=True)
    mine = part_path(folder / "a.png", Shard(1, 4).name)
    theirs = part_path(folder / "b.png", Shard(2, 4).name)
    stale = part_path(folder / "c.png", Shard(3, 4).name)
    for path in (mine, theirs, stale):
        path.write_bytes(b"partial")
    old = clock.time() - STALE_PARTIAL - 5
    os.utime(stale, (old, old))
    assert mine.name.startswith(".bg-1-of-4-")
    _clean_partials(tmp_path / "out", shard=Shard(1, 4))
    assert (mine.exists(), theirs.exists(), stale.exists()) == (False, True, False)
    _clean_partials(tmp_path / "out")  # unsharded: the only writer, all go
    assert not theirs.exists()
