"""Fault matrix: each fault of the simulator against a real ``batchgen run``, with its figure."""

from __future__ import annotations

import contextlib
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchgen.api.auth import BearerAuth
from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.ledger.schema import Transition
from batchgen.ledger.store import Ledger
from batchgen.runner.job import RunHandle, RunOptions, arun
from batchgen.runner.progress import NullHook, Snapshot
from batchgen.sim import SimConfig, running_simulator
from tests.reliability.harness import (
    CANARY,
    CANARY_SCAN,
    CliResult,
    Processes,
    RunProcess,
    Sim,
    charges_by_key,
    check_outputs,
    figure,
    integrity_check,
    keys_ever_in,
    ledger_counts,
    ledger_rows,
    leftover_files,
    png_files,
    run_cli,
    start_sim,
    write_spec,
)


@dataclass
class Job:
    """A simulator, a spec and the paths of one fault test."""

    sim: Sim
    spec: Path
    folder: Path
    logs: Path
    tasks: int

    @property
    def out(self) -> Path:
        """The output folder."""
        return self.folder / "out"

    @property
    def db(self) -> Path:
        """The ledger."""
        return self.out / "batchgen.sqlite"

    def args(self, *extra: str) -> list[str]:
        """``run SPEC --base-url URL`` plus ``extra`` (default ``--quiet``)."""
        return ["run", str(self.spec), "--base-url", self.sim.base_url, *(extra or ("--quiet",))]

    def run(self, procs: Processes, *extra: str, timeout: float = 600) -> CliResult:
        """Run the job to its end."""
        return run_cli(procs, self.args(*extra), cwd=self.folder, logdir=self.logs, timeout=timeout)

    def spawn(self, procs: Processes, *extra: str) -> RunProcess:
        """Start the job without waiting for it."""
        return RunProcess(procs, self.args(*extra), cwd=self.folder, logdir=self.logs)

    def charges(self) -> dict[str, int]:
        """Charges per task key, from the simulator's records."""
        return dict(charges_by_key(ledger_rows(self.db), self.sim.tasks()))

    def assert_all_done_once(self) -> None:
        """Every task done, its image the one served, charged exactly once, nothing left over."""
        rows = ledger_rows(self.db)
        assert [r.state for r in rows].count("done") == self.tasks, dict(ledger_counts(self.db))
        charges = self.charges()
        assert len(charges) == self.tasks
        assert set(charges.values()) == {1}, "a task was charged twice"
        check = check_outputs(self.out, rows, self.sim.tasks())
        assert not check.problems, check.problems[:5]
        assert leftover_files(self.out) == []
        assert integrity_check(self.db) == "ok"


def make_job(
    tmp_path: Path,
    procs: Processes,
    sim_args: tuple[str, ...],
    *,
    name: str,
    tasks: int,
    concurrency: int = 8,
    limits: Mapping[str, object] | None = None,
    extra: Mapping[str, object] | None = None,
    scale: str = "0.1",
    out_setup: Callable[[Path], None] | None = None,
) -> Job:
    """Start a simulator with ``sim_args`` and write a ``tasks``-task spec for it."""
    logs = tmp_path / "logs"
    sim = start_sim(procs, logs, "--seed", "7", "--image-scale", scale, *sim_args)
    folder = tmp_path / "job"
    spec = write_spec(
        folder, name=name, tasks=tasks, concurrency=concurrency, limits=limits, extra=extra
    )
    if out_setup is not None:
        out_setup(folder / "out")
    return Job(sim, spec, folder, logs, tasks)


def no_traceback(result: CliResult) -> None:
    """The command failed (or not) with messages, never with a Python traceback."""
    assert "Traceback" not in result.output, result.output[-3000:]


# --- rate limits ---------------------------------------------------------------------------


@pytest.mark.reliability
def test_429_without_retry_after(tmp_path: Path, procs: Processes) -> None:
    """30% of submissions answered 429 with no Retry-After: every task done once, none failed."""
    job = make_job(
        tmp_path, procs, ("--latency", "0.3", "--busy-rate", "0.3", "--no-retry-after"),
        name="busy30", tasks=100,
    )  # fmt: skip
    result = job.run(procs)
    no_traceback(result)
    assert result.rc == 0, result.stderr
    job.assert_all_done_once()
    stats = job.sim.stats()
    submits = stats["requests_by_route"]["POST /v1/api/generate"]
    assert stats["busy_injected"] > 0
    figure(
        "429-no-retry-after",
        f"{job.tasks}/{job.tasks} done in {result.elapsed:.1f} s; {stats['rate_limited']} 429s"
        f" of {submits} submissions ({stats['rate_limited'] / submits:.0%}), 0 failed,"
        " 0 duplicate charges",
    )


@pytest.mark.reliability
@pytest.mark.parametrize("fmt", ["seconds", "date"])
def test_token_bucket_with_retry_after(tmp_path: Path, procs: Processes, fmt: str) -> None:
    """A 240 rpm bucket sending Retry-After (seconds or HTTP date): limit found, 429s rare."""
    rpm = 240
    job = make_job(
        tmp_path, procs,
        ("--latency", "0.3", "--rpm", str(rpm), "--burst", "4", "--retry-after-format", fmt),
        name=f"bucket-{fmt}", tasks=80,
    )  # fmt: skip
    result = job.run(procs)
    no_traceback(result)
    assert result.rc == 0, result.stderr
    job.assert_all_done_once()
    stats = job.sim.stats()
    ideal = (job.tasks - 4) / (rpm / 60)
    limited = stats["rate_limited"]
    assert limited < job.tasks, "429s should become rare once the limit is found"
    figure(
        f"retry-after-{fmt}",
        f"{rpm} rpm bucket, Retry-After as {fmt}: {job.tasks}/{job.tasks} done in"
        f" {result.elapsed:.1f} s (bucket allows {ideal:.1f} s), {limited} 429s for"
        f" {job.tasks} tasks ({limited / job.tasks:.2f} per task), 0 duplicate charges",
    )


@pytest.mark.reliability
def test_huge_retry_after_parks(tmp_path: Path, procs: Processes) -> None:
    """A Retry-After of a day parks the waiting tasks and says so; the run ends, not hangs."""
    job = make_job(
        tmp_path, procs,
        ("--latency", "0.5", "--busy-rate", "0.15", "--retry-after-value", "86400"),
        name="parked", tasks=60,
    )  # fmt: skip
    run = job.spawn(procs)
    try:
        rc = run.wait(30)
    except subprocess.TimeoutExpired:
        said = [line for line in run.stderr().splitlines() if "parked" in line]
        ended = _end_hung_run(run)
        figure(
            "retry-after-1-day",
            f"said {said[0].strip()[:60] if said else 'nothing'!r}... then hung: still running"
            f" 30 s later; {ended}; ledger {dict(ledger_counts(job.db))}",
        )
        raise AssertionError("the run hung after parking its tasks") from None
    result = CliResult(rc, run.stdout(), run.stderr(), time.monotonic() - run.started)
    no_traceback(result)
    assert result.rc == 1, result.output
    assert "parked" in result.stderr, result.stderr
    assert "86,400" in result.stderr, result.stderr
    counts = ledger_counts(job.db)
    parked = [r for r in ledger_rows(job.db) if r.error_code == "parked"]
    assert parked
    assert all(r.state == "pending" for r in parked)
    assert counts.get("unknown", 0) == 0
    assert counts.get("failed", 0) == 0
    assert counts.get("running", 0) == 0, "tasks at the service should be drained"
    assert all(r.next_at is not None and r.next_at > time.time() + 80000 for r in parked)
    warning = next(line for line in result.stderr.splitlines() if "parked" in line)
    job.sim.configure(busy_rate=0.0)  # later, the service is fine again
    again = job.run(procs)
    assert again.rc == 0, again.stderr
    job.assert_all_done_once()
    figure(
        "retry-after-1-day",
        f"run ended by itself after {result.elapsed:.1f} s (exit 1): {len(parked)} parked,"
        f" {counts.get('done', 0)} done, 0 unknown; says: {warning.strip()[:100]!r}",
    )


@pytest.mark.reliability
def test_budget_stop_ends_the_run(tmp_path: Path, procs: Processes) -> None:
    """Reaching the budget stops submitting, finishes what was paid for, and exits 1."""
    budget = 0.01  # below the price of one image: the first task stops the run
    assert budget < DEFAULT_PRICES["nano-banana-fast"]
    job = make_job(
        tmp_path, procs, ("--latency", "0.5",), name="budget", tasks=60,
        limits={"budget": budget},
    )  # fmt: skip
    run = job.spawn(procs)
    try:
        rc: int | None = run.wait(30)
        how = f"exit {rc}"
    except subprocess.TimeoutExpired:
        rc = None
        how = f"hung after saying the budget was reached; {_end_hung_run(run)}"
    charged = float(job.sim.stats()["charged_total"])
    figure("budget", f"budget {budget}: charged {charged:.3f} (never over), run {how}")
    assert "budget" in run.stderr()
    assert charged <= budget + 1e-9
    assert rc == 1


@pytest.mark.reliability
def test_ctrl_c_ends_a_budget_drain(tmp_path: Path, procs: Processes) -> None:
    """While a budget stop waits for paid tasks to finish, one Ctrl-C ends the run (130)."""
    job = make_job(
        tmp_path, procs, ("--latency", "30"), name="drain", tasks=4, concurrency=4,
        # two images (not three); both then take 30 s at the service
        limits={"budget": round(2.5 * DEFAULT_PRICES["nano-banana-fast"], 4)},
    )  # fmt: skip
    run = job.spawn(procs)
    _wait_for_tasks(job, 2, run)
    time.sleep(1.0)
    assert run.proc.poll() is None
    sent = time.monotonic()
    run.signal(signal.SIGINT)
    try:
        rc: int | None = run.wait(5)
        how = f"one Ctrl-C ended it after {time.monotonic() - sent:.1f} s (exit {rc})"
    except subprocess.TimeoutExpired:
        rc = None
        how = "one Ctrl-C did not end it within 5 s; a second " + _end_hung_run(run).removeprefix(
            "one "
        )
    figure("ctrl-c-during-budget-drain", how)
    assert rc == 130


def _end_hung_run(run: RunProcess) -> str:
    """End a hung run with Ctrl-C (twice if needed); say what it took."""
    run.signal(signal.SIGINT)
    try:
        return f"one Ctrl-C ended it (exit {run.wait(10)})"
    except subprocess.TimeoutExpired:
        run.signal(signal.SIGINT)
        return f"one Ctrl-C did not end it, a second did (exit {run.wait(30)})"


# --- server errors ------------------------------------------------------------------------------


@pytest.mark.reliability
def test_sixty_second_5xx_burst(tmp_path: Path, procs: Processes) -> None:
    """60 s of 500/502/503 on every submission: no task fails, the run recovers by itself."""
    job = make_job(
        tmp_path,
        procs,
        ("--latency", "0.5"),
        name="burst",
        tasks=150,
    )
    run = job.spawn(procs)
    _wait_for_tasks(job, 10, run)
    before = job.sim.stats()["requests_by_route"]["POST /v1/api/generate"]
    burst_start = time.time()
    phases = 0
    while time.time() - burst_start < 60:
        # Alternate 500/502 (upstream_error) and 503 (no channel for the model).
        if phases % 2 == 0:
            job.sim.configure(error_rate=1.0, down=[])
        else:
            job.sim.configure(error_rate=0.0, down=["nano-banana-fast"])
        phases += 1
        time.sleep(min(10.0, 60 - (time.time() - burst_start)))
    job.sim.configure(error_rate=0.0, down=[])
    burst_end = time.time()
    during = job.sim.stats()["requests_by_route"]["POST /v1/api/generate"] - before
    rc = run.wait(600)
    finished = time.time()
    assert "Traceback" not in run.stderr()
    assert rc == 0, run.stderr()[-2000:]
    job.assert_all_done_once()
    created = sorted(float(t["created"]) for t in job.sim.tasks())
    accepted_during = sum(1 for c in created if burst_start + 0.5 < c < burst_end)
    first_after = min((c for c in created if c >= burst_end), default=float("nan"))
    stats = job.sim.stats()
    assert accepted_during == 0
    figure(
        "5xx-burst-60s",
        f"{during} submissions tried during the 60 s outage ({stats['errors_injected']}"
        f" answered 500/502, {during - stats['errors_injected']} answered 503), 0 tasks"
        " failed; first task accepted"
        f" {first_after - burst_end:.1f} s after the outage ended, job done"
        f" {finished - burst_end:.1f} s after it; 0 duplicate charges",
    )


def _wait_for_tasks(job: Job, n: int, run: RunProcess, timeout: float = 60) -> None:
    """Wait until the simulator has charged ``n`` submissions."""
    deadline = time.monotonic() + timeout
    while job.sim.stats()["submissions_charged"] < n:
        assert run.proc.poll() is None, f"the run ended: {run.stderr()[-2000:]}"
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.1)


# --- lost answers and hung polls ------------------------------------------------------------------


@pytest.mark.reliability
def test_dropped_submissions_become_unknown(tmp_path: Path, procs: Processes) -> None:
    """Accepted-then-dropped submissions are exactly the unknown tasks, and never resubmitted."""
    job = make_job(
        tmp_path, procs, ("--latency", "0.3", "--drop-rate", "0.1"), name="drops", tasks=120
    )
    result = job.run(procs)
    no_traceback(result)
    assert result.rc == 1, result.output
    stats = job.sim.stats()
    dropped = stats["submissions_dropped"]
    counts = ledger_counts(job.db)
    assert dropped > 0
    assert counts.get("unknown", 0) == dropped
    assert counts.get("done", 0) == job.tasks - dropped
    charges = job.charges()
    assert set(charges.values()) == {1}, "an unknown task was resubmitted automatically"
    assert stats["submissions_charged"] == job.tasks
    # The user decides: resubmit them (the service is healthy now).
    job.sim.configure(drop_rate=0.0)
    retry = run_cli(
        procs, ["retry", str(job.spec), "--unknown"], cwd=job.folder, logdir=job.logs, timeout=60
    )
    assert retry.rc == 0, retry.stderr
    again = job.run(procs)
    assert again.rc == 0, again.stderr
    extra = job.sim.stats()["submissions_charged"] - job.tasks
    assert extra == dropped
    assert ledger_counts(job.db).get("done", 0) == job.tasks
    figure(
        "dropped-submissions",
        f"drop-rate 0.1 on {job.tasks} tasks: {dropped} dropped = {counts.get('unknown', 0)}"
        f" unknown, 0 resubmitted automatically; after `retry --unknown`: {extra} extra"
        " charges (= unknown), all done",
    )


@pytest.mark.reliability
def test_hung_polls_time_out(tmp_path: Path, procs: Processes) -> None:
    """30% of polls never answer: the poll timeout fires, every task still finishes."""
    job = make_job(
        tmp_path, procs, ("--latency", "0.5", "--poll-hang-rate", "0.3"),
        name="hung", tasks=60, limits={"poll_timeout": 2},
    )  # fmt: skip
    result = job.run(procs, timeout=300)
    no_traceback(result)
    assert result.rc == 0, result.stderr
    job.assert_all_done_once()
    stats = job.sim.stats()
    assert stats["polls_hung"] > 0
    figure(
        "hung-polls",
        f"{stats['polls_hung']} polls hung (poll_timeout 2 s): {job.tasks}/{job.tasks} done in"
        f" {result.elapsed:.1f} s, nothing stuck, 0 duplicate charges",
    )


# --- downloads ---------------------------------------------------------------------------------


@pytest.mark.reliability
def test_truncated_downloads(tmp_path: Path, procs: Processes) -> None:
    """Downloads cut at half are retried; no partial file stays; give-ups re-download free."""
    job = make_job(
        tmp_path, procs, ("--latency", "0.3", "--truncate-rate", "0.3"), name="trunc", tasks=60
    )
    result = job.run(procs)
    no_traceback(result)
    gave_up = [r for r in ledger_rows(job.db) if r.state == "failed"]
    assert result.rc == (1 if gave_up else 0), result.output
    # A task whose download was cut max_attempts times fails as `truncated`; its image is
    # still at the service, so `retry --failed` downloads it again without a new charge.
    assert all(r.error_code == "truncated" for r in gave_up), gave_up
    assert [p for p in leftover_files(job.out) if p.name.endswith(".part")] == []
    if gave_up:
        retry = run_cli(
            procs, ["retry", str(job.spec), "--failed"], cwd=job.folder, logdir=job.logs
        )
        assert retry.rc == 0, retry.stderr
        job.sim.configure(truncate_rate=0.0)
        again = job.run(procs)
        assert again.rc == 0, again.stderr
    job.assert_all_done_once()
    stats = job.sim.stats()
    assert stats["downloads_truncated"] > 0
    figure(
        "truncated-downloads",
        f"{stats['downloads_truncated']} downloads cut short: {job.tasks}/{job.tasks} images"
        f" complete and byte-identical, 0 partial files, 0 extra charges ({len(gave_up)} gave"
        " up after max_attempts and were fetched again by `retry --failed` at no charge)",
    )


@pytest.mark.reliability
def test_oversized_downloads(tmp_path: Path, procs: Processes) -> None:
    """A 65 MiB stream without Content-Length stops at the 1 MB cap; nothing partial stays."""
    cap = 1_000_000
    job = make_job(
        tmp_path, procs, ("--latency", "0.3", "--oversize-rate", "0.25"),
        name="oversize", tasks=40, limits={"max_image_bytes": cap},
    )  # fmt: skip
    result = job.run(procs, timeout=300)
    no_traceback(result)
    assert result.rc == 1, result.output
    stats = job.sim.stats()
    oversize = stats["downloads_oversize"]
    rows = ledger_rows(job.db)
    failed = [r for r in rows if r.state == "failed"]
    assert oversize > 0
    assert len(failed) == oversize
    assert all(r.error_code == "too_large" for r in failed)
    assert sum(r.state == "done" for r in rows) == job.tasks - oversize
    assert all(p.stat().st_size <= cap for p in job.out.rglob("*") if p.is_file())
    assert len(png_files(job.out)) == job.tasks - oversize
    assert leftover_files(job.out) == []
    check = check_outputs(job.out, rows, job.sim.tasks())
    assert not check.problems
    assert "too_large" in result.stdout
    figure(
        "oversized-downloads",
        f"{oversize} of {job.tasks} downloads streamed 65 MiB with no length: each stopped at"
        f" the {cap:,}-byte cap, task failed 'too_large' (reported), 0 partial files; run"
        f" {result.elapsed:.1f} s",
    )


@pytest.mark.reliability
def test_expired_urls_regenerate_once(tmp_path: Path, procs: Processes) -> None:
    """URLs that expired while no run was going are regenerated once each, and said so."""
    job = make_job(
        tmp_path, procs, ("--latency", "1",), name="expired", tasks=20, concurrency=20,
    )  # fmt: skip
    first = job.spawn(procs, "--json")
    _wait_for_tasks(job, job.tasks, first)
    first.signal(signal.SIGINT)  # graceful: the tasks stay running at the service
    assert first.wait(60) == 130
    running = ledger_counts(job.db).get("running", 0)
    assert running > 0
    time.sleep(2.0)  # every task has ended at the service
    # Their URLs are gone when the next run comes; new results keep theirs for an hour.
    job.sim.configure(url_ttl=0.0)
    run = job.spawn(procs)
    deadline = time.monotonic() + 120
    while job.sim.stats()["downloads_expired"] < running:
        assert run.proc.poll() is None, run.stderr()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.sim.configure(url_ttl=3600.0)
    rc = run.wait(300)
    stderr = run.stderr()
    assert "Traceback" not in stderr
    assert rc == 0, stderr
    told = "expired" in stderr or " regenerated" in run.stdout()
    assert told, "the user must learn that results were regenerated"
    rows = ledger_rows(job.db)
    regenerated = sum(r.regenerations for r in rows)
    assert regenerated == running
    charges = job.charges()
    assert sum(charges.values()) == job.tasks + regenerated
    assert max(charges.values()) <= 2
    check = check_outputs(job.out, rows, job.sim.tasks())
    assert not check.problems
    assert check.verified == job.tasks
    figure(
        "expired-urls",
        f"{running} tasks finished while no run was going and their URLs expired: each"
        f" regenerated once ({regenerated} extra charges; stderr warning:"
        f" {'yes' if 'expired' in stderr else 'no, only the summary count'}), all"
        f" {job.tasks} done and byte-identical",
    )


@pytest.mark.reliability
def test_resume_after_a_break_polls_promptly(tmp_path: Path, procs: Processes) -> None:
    """After a 20 s break, the resumed run's new tasks are polled as soon as they are due."""
    job = make_job(
        tmp_path,
        procs,
        ("--latency", "0.5"),
        name="break",
        tasks=24,
        concurrency=8,
    )
    first = job.spawn(procs, "--json")
    _wait_for_tasks(job, 8, first)
    first.signal(signal.SIGINT)
    assert first.wait(60) == 130
    left = job.tasks - ledger_counts(job.db).get("done", 0)
    time.sleep(20)
    result = job.run(procs, timeout=300)
    assert result.rc == 0, result.stderr
    job.assert_all_done_once()
    figure(
        "resume-after-break",
        f"20 s break, then {left} tasks left: resumed run took {result.elapsed:.1f} s"
        " (0.5 s tasks, concurrency 8: a few seconds expected)",
    )
    assert result.elapsed < 15


@pytest.mark.reliability
def test_expired_urls_do_not_pay_forever(tmp_path: Path, procs: Processes) -> None:
    """When every result URL is already expired, regeneration stops after max_attempts."""
    max_attempts = 3
    job = make_job(
        tmp_path, procs, ("--latency", "0.2", "--url-ttl", "0"),
        name="always-expired", tasks=3, limits={"max_attempts": max_attempts},
    )  # fmt: skip
    run = job.spawn(procs)
    try:
        ended: int | None = run.wait(20)
    except subprocess.TimeoutExpired:
        ended = None
        run.signal(signal.SIGINT)
        run.wait(60)
    charged = job.sim.stats()["submissions_charged"]
    figure(
        "expired-urls-always",
        f"url-ttl 0, {job.tasks} tasks, max_attempts {max_attempts}: run"
        f" {'ended' if ended is not None else 'still going after 20 s'}, {charged} charges"
        f" (bound {job.tasks * max_attempts})",
    )
    assert ended is not None
    assert charged <= job.tasks * max_attempts


class _Recorder(NullHook):
    """A progress hook that keeps every message and the latest snapshot."""

    def __init__(self, regenerated: int) -> None:
        self.messages: list[tuple[str, str]] = []
        self.snapshot = Snapshot()
        self.enough = anyio.Event()
        self._regenerated = regenerated

    def on_message(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        CANARY_SCAN.scan_text("hook message", text)

    def on_update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if snapshot.regenerated >= self._regenerated:
            self.enough.set()


@pytest.mark.reliability
@pytest.mark.anyio
async def test_expired_urls_are_announced_on_a_slow_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 200 ms ledger commits and 8 URLs expiring together, the run still warns."""
    original = Ledger.write

    async def slow_write(self: Ledger, *transitions: Transition) -> None:
        await anyio.sleep(0.2)  # a slow disk: fsync-bound commits
        await original(self, *transitions)

    monkeypatch.setattr(Ledger, "write", slow_write)
    spec = write_spec(tmp_path / "job", name="slowdisk", tasks=8, concurrency=8)
    hook = _Recorder(regenerated=8)
    handle = RunHandle()
    config = SimConfig(latency=0.2, seed=3, keys=[CANARY], image_scale=0.1, url_ttl=0.0)
    async with running_simulator(config) as sim, anyio.create_task_group() as tg:

        async def stop_when_regenerated() -> None:
            with anyio.move_on_after(60):
                await hook.enough.wait()
            handle.interrupt()
            handle.interrupt()

        tg.start_soon(stop_when_regenerated)
        options = RunOptions(base_url=sim.base_url, auth=BearerAuth(CANARY), seed=1)
        await arun(spec, options, hook=hook, handle=handle)
    warned = [text for _, text in hook.messages if "expired" in text]
    figure(
        "expired-urls-slow-disk",
        f"{hook.snapshot.regenerated} URLs expired together with 200 ms commits:"
        f" {len(warned)} warnings",
    )
    assert warned


# --- the output folder fills up -------------------------------------------------------------------


MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "2m") -> Iterator[Callable[[], None]]:
    """Mount a tmpfs of ``size`` at ``folder``; yields a function that enlarges it."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise PermissionError(mounted.stderr.decode(errors="replace"))

    def grow() -> None:
        subprocess.run(
            [MOUNT, "-o", "remount,size=256m", str(folder)], check=True, capture_output=True
        )

    try:
        yield grow
    finally:
        CANARY_SCAN.scan_dir(folder)  # before the files vanish with the mount
        subprocess.run([UMOUNT, "-l", str(folder)], check=False, capture_output=True)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


#: (tmpfs size, image scale): the ledger fills the disk first / the images do.
DISKS = {"ledger-fills-it": ("2m", "1.0"), "images-fill-it": ("4m", "4.0")}
CONCURRENCY = 8


@pytest.mark.reliability
@pytest.mark.parametrize("case", sorted(DISKS))
def test_full_disk(tmp_path: Path, procs: Processes, case: str) -> None:
    """A full output folder ends the run cleanly; once there is room, it resumes to the end."""
    size, scale = DISKS[case]
    job = make_job(
        tmp_path, procs, ("--latency", "0.2",), name="full", tasks=120, scale=scale,
        concurrency=CONCURRENCY,
    )  # fmt: skip
    how = f"tmpfs of {size} on the output folder"
    try:
        with small_filesystem(job.out, size) as grow:
            result = job.run(procs, timeout=300)
            state = _after_full_disk(job, result)
            grow()
            resumed = _resume_after_full_disk(job, procs)
    except PermissionError:
        how = "RLIMIT_FSIZE of 256 KiB per file in the run (mount refused)"
        result = run_cli(
            procs, job.args(), cwd=job.folder, logdir=job.logs, timeout=300,
            preexec=_limit_file_size(256 * 1024),
        )  # fmt: skip
        state = _after_full_disk(job, result)
        resumed = _resume_after_full_disk(job, procs)
    figure(
        f"full-disk {case}",
        f"{how}: exit {result.rc} after {state['done']}/{job.tasks} images, message"
        f" {state['line'][:70]!r}; integrity ok, 0 partial files, {state['stranded']} left"
        f" 'submitting' (<= {CONCURRENCY}); after making room: {resumed}",
    )


def _after_full_disk(job: Job, result: CliResult) -> dict[str, Any]:
    """Check the failed run: one line, no traceback, a sound ledger, no partial file."""
    no_traceback(result)
    assert result.rc in (1, 3), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("batchgen: error")]
    assert len(errors) == 1, result.stderr
    assert "space" in errors[0].lower() or "full" in errors[0].lower(), errors[0]
    assert integrity_check(job.db) == "ok"
    assert [p for p in leftover_files(job.out) if p.name.endswith(".part")] == []
    counts = ledger_counts(job.db)
    assert counts.get("unknown", 0) == 0, dict(counts)
    # Answers that arrived while the ledger could not be written cannot be recorded: at
    # most the submissions in flight stay ``submitting`` (``unknown`` at the next start).
    stranded = counts.get("submitting", 0)
    assert stranded <= CONCURRENCY, dict(counts)
    assert counts.get("done", 0) < job.tasks
    return {"done": counts.get("done", 0), "line": errors[0], "stranded": stranded}


def _resume_after_full_disk(job: Job, procs: Processes) -> str:
    """The same command finishes the job; unknown ones need `retry --unknown`."""
    again = job.run(procs, timeout=300)
    assert again.rc in (0, 1), again.stderr
    counts = ledger_counts(job.db)
    unknown = counts.get("unknown", 0)
    assert counts.get("done", 0) + unknown == job.tasks, dict(counts)
    ever_unknown = keys_ever_in(job.db, "unknown")
    charges = job.charges()
    assert all(n == 1 for k, n in charges.items() if k not in ever_unknown)
    if unknown:
        retry = run_cli(
            procs, ["retry", str(job.spec), "--unknown"], cwd=job.folder, logdir=job.logs
        )
        assert retry.rc == 0
        assert job.run(procs, timeout=300).rc == 0
    rows = ledger_rows(job.db)
    assert all(r.state == "done" for r in rows)
    check = check_outputs(job.out, rows, job.sim.tasks())
    assert not check.problems
    assert check.verified == job.tasks
    assert leftover_files(job.out) == []
    doubled = sum(1 for n in job.charges().values() if n > 1)
    return f"all done; {unknown} unknown resubmitted, {doubled} charged twice"


@pytest.mark.reliability
def test_full_disk_reports_the_real_error(tmp_path: Path, procs: Processes) -> None:
    """A full disk is reported as what failed (ledger or image folder, exit 3), run recorded."""
    size, scale = DISKS["ledger-fills-it"]
    job = make_job(
        tmp_path, procs, ("--latency", "0.2",), name="full2", tasks=120, scale=scale,
        concurrency=CONCURRENCY,
    )  # fmt: skip
    with small_filesystem(job.out, size):
        result = job.run(procs, timeout=300)
        line = next(x for x in result.stderr.splitlines() if x.startswith("batchgen: error"))
        figure("full-disk message", f"exit {result.rc}, {line!r}")
        assert result.rc == 3
        assert str(job.out) in line or "ledger" in line


# --- the key --------------------------------------------------------------------------------------


@pytest.mark.reliability
def test_key_revoked_mid_run(tmp_path: Path, procs: Processes) -> None:
    """Revoking the key mid-run stops it with exit 3 and one line; a new run resumes cleanly."""
    job = make_job(
        tmp_path,
        procs,
        ("--latency", "1"),
        name="revoked",
        tasks=120,
    )
    run = job.spawn(procs)
    _wait_for_tasks(job, 20, run)
    job.sim.configure(keys=["another-key-entirely"])
    revoked = time.monotonic()
    rc = run.wait(120)
    stopped_after = time.monotonic() - revoked
    stderr = run.stderr()
    assert "Traceback" not in stderr
    assert rc == 3, stderr
    line = next(x for x in stderr.splitlines() if x.startswith("batchgen: error"))
    assert "revoked" in line or "401" in line
    CANARY_SCAN.scan_text("revoked stderr", stderr)
    assert CANARY not in stderr
    counts = ledger_counts(job.db)
    assert counts.get("unknown", 0) == 0, dict(counts)
    assert counts.get("submitting", 0) == 0, dict(counts)
    assert integrity_check(job.db) == "ok"
    done_then = counts.get("done", 0)
    job.sim.configure(keys=[CANARY])
    again = job.run(procs)
    assert again.rc == 0, again.stderr
    job.assert_all_done_once()
    figure(
        "key-revoked",
        f"key revoked after {done_then} images: exit 3 {stopped_after:.1f} s later with"
        f" {line[:90]!r}; 0 unknown; with a valid key the next run finished the other"
        f" {job.tasks - done_then}, 0 duplicate charges",
    )
