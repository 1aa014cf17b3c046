"""The runner end to end against the simulator over loopback HTTP, in-process.

Happy path, resume, edits of the spec, failures and moderation, a forbidden model, the
budget, interruption and crash recovery, lost answers (``unknown``), cancellation, a
refused key, hostile prompts, and the synchronous ``images`` route. Rate limits, 5xx
and download faults live in test_runner_faults.py, polling in test_runner_polling.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import anyio
import pytest
from PIL import Image

from batchgen.api.auth import BearerAuth
from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.errors import AuthenticationError, BusinessError, SpecError
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.report import job_status, retry_tasks
from batchgen.ledger.schema import TaskState, Transition
from batchgen.runner.job import RunHandle
from batchgen.spec.load import load_spec
from tests.conftest import SimFactory
from tests.runner_helpers import (
    GRID,
    RecordingHook,
    files_under,
    ledger_rows,
    listing,
    open_ledger,
    output_dir,
    run_job,
    sim_config,
    stats,
    subjects_spec,
    write_spec,
)

pytestmark = pytest.mark.anyio

#: The price of one image of the model these tests use.
FAST = DEFAULT_PRICES["nano-banana-fast"]


def _metadata(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# --- the happy path -------------------------------------------------------------------


async def test_happy_path_saves_every_image_with_a_matching_ledger_and_manifest(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A clean run finishes every task, saves decodable images at the layout paths, and
    records their size and sha256 in the ledger and in an imagefolder metadata.jsonl."""
    spec_path = write_spec(tmp_path, GRID)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
        charged = stats(sim)["submissions_charged"]
    out = output_dir(spec_path)
    assert summary.exit_code == 0
    assert summary.stop_reason is None
    assert summary.complete
    assert summary.tasks == 12
    assert summary.counts["done"] == 12
    assert charged == 12
    assert summary.this_run["accepted"] == 12
    assert summary.this_run["downloaded"] == 12
    assert summary.failures_by_code == {}

    rows = await ledger_rows(spec_path)
    assert [r.state for r in rows] == [TaskState.DONE] * 12
    for row in rows:
        assert row.path == row.layout_path
        file = out / row.layout_path
        data = file.read_bytes()
        assert row.bytes == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        with Image.open(file) as img:
            img.verify()
        model = row.vars["model"]
        ratio = str(row.vars["aspect_ratio"]).replace(":", "x")
        assert row.layout_path.startswith(f"{model}/{ratio}/a-photo-of-{row.vars['subject']}-")
        assert row.layout_path.endswith(f"-{row.key[:8]}.png")

    meta = _metadata(out)
    assert len(meta) == 12
    by_key = {r.key: r for r in rows}
    assert {m["key"] for m in meta} == set(by_key)
    for line in meta:
        row = by_key[line["key"]]
        assert line["file_name"] == row.layout_path
        assert (out / line["file_name"]).is_file()
        assert line["sha256"] == row.sha256
        assert line["prompt"] == row.prompt == f"a photo of {row.vars['subject']}"
        assert line["model"] == row.model
        assert line["aspect_ratio"] == row.vars["aspect_ratio"]
        assert line["image_size"] == "1K"
        assert line["vars"] == dict(row.vars)
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["exit_code"] == 0
    assert saved["counts"]["done"] == 12
    assert not files_under(out, ".part")


async def test_second_run_of_a_finished_job_charges_nothing(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Running a finished job again submits nothing, keeps every file, and exits 0."""
    spec_path = write_spec(tmp_path, GRID)
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        out = output_dir(spec_path)
        before = {p: p.stat().st_mtime_ns for p in files_under(out, ".png")}
        again = await run_job(spec_path, sim)
        after = stats(sim)
    assert again.exit_code == 0
    assert again.this_run["accepted"] == 0
    assert again.this_run["already_done"] == 12
    assert after["submissions_charged"] == 12
    assert after["requests_by_route"]["POST /v1/api/generate"] == 12
    assert {p: p.stat().st_mtime_ns for p in files_under(out, ".png")} == before
    assert len(_metadata(out)) == 12


async def test_metadata_is_rewritten_only_when_the_ledger_changed(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A run that changes nothing keeps metadata.jsonl; a deleted manifest, or state
    changes recorded by a run that died before writing it, make the next run rebuild it."""
    spec_path = write_spec(tmp_path, GRID)
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        out = output_dir(spec_path)
        manifest = out / "metadata.jsonl"
        written = manifest.read_bytes()
        manifest.write_text("stale\n", encoding="utf-8")  # kept: nothing changed
        await run_job(spec_path, sim)
        assert manifest.read_text(encoding="utf-8") == "stale\n"
        manifest.unlink()
        await run_job(spec_path, sim)
        assert manifest.read_bytes() == written
        # A run killed after recording a change but before its manifest.
        manifest.write_text("stale\n", encoding="utf-8")
        async with open_ledger(spec_path) as ledger:
            key = (await ledger.page([TaskState.DONE], in_run=False, limit=1))[0].key
            await ledger.write(Transition(key, TaskState.DONE, detail="touched"))
        await run_job(spec_path, sim)
    assert manifest.read_bytes() == written
    assert len(_metadata(out)) == 12


async def test_a_deleted_image_is_downloaded_again_without_a_new_charge(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A finished file that went missing is fetched again from its URL, not regenerated."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog", "owl", "emu"])
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        victim = files_under(output_dir(spec_path), ".png")[0]
        victim.unlink()
        hook = RecordingHook()
        again = await run_job(spec_path, sim, hook=hook)
        after = stats(sim)
    assert again.exit_code == 0
    assert victim.is_file()
    assert after["submissions_charged"] == 4
    assert any("missing or damaged" in t for t in hook.texts("warning"))


async def test_several_images_per_task_each_get_a_file_and_a_manifest_line(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A request that returns several images (draw-completions `variants`) saves each one
    (the second as `-2.png`) and writes one metadata.jsonl line per image."""
    spec_path = subjects_spec(
        tmp_path,
        ["cat", "dog"],
        model="gpt-image-2",
        extra="api:\n  endpoint: draw-completions\nparams:\n  variants: 2",
    )
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0
    out = output_dir(spec_path)
    meta = _metadata(out)
    assert len(meta) == 4
    assert len(files_under(out, ".png")) == 4
    for row in await ledger_rows(spec_path):
        assert len(row.files) == 2
        second = str(row.files[1]["path"])
        assert second == row.layout_path.removesuffix(".png") + "-2.png"
        data = (out / second).read_bytes()
        assert row.files[1]["sha256"] == hashlib.sha256(data).hexdigest()
        lines = [m for m in meta if m["key"] == row.key]
        assert sorted(m["file_name"] for m in lines) == sorted(str(f["path"]) for f in row.files)


async def test_partial_files_of_a_killed_run_are_removed(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Temporary `.NAME.HEX.part` files a killed run left in the output tree are removed at
    the next start; other files are kept."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog"])
    out = output_dir(spec_path)
    (out / "nano-banana-fast").mkdir(parents=True)
    leftover = out / "nano-banana-fast" / ".a-photo-of-cat-12345678.png.0badf00d.part"
    leftover.write_bytes(b"\x89PNG half")
    mine = out / "notes.part"
    mine.write_text("a user's file", encoding="utf-8")
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0
    assert not leftover.exists()
    assert mine.read_text(encoding="utf-8") == "a user's file"


# --- the spec changes between runs ------------------------------------------------------


async def test_adding_a_value_runs_only_the_new_tasks(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A value added to an axis adds its tasks; the done ones are neither redone nor recharged."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog"])
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        first = {r.key: (r.sha256, r.updated_at) for r in await ledger_rows(spec_path)}
        subjects_spec(tmp_path, ["cat", "dog", "owl"])
        hook = RecordingHook()
        summary = await run_job(spec_path, sim, hook=hook)
        charged = stats(sim)["submissions_charged"]
    rows = await ledger_rows(spec_path)
    assert summary.exit_code == 0
    assert summary.tasks == 3
    assert summary.this_run["accepted"] == 1
    assert charged == 3
    for row in rows:
        if row.key in first:
            assert (row.sha256, row.updated_at) == first[row.key]
    assert any("adds 1 new task" in t for t in hook.texts())


async def test_removing_a_value_keeps_its_rows_and_reports_them(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A value removed from an axis leaves its ledger rows alone and is counted as not_in_spec."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim)
        subjects_spec(tmp_path, ["cat", "dog"])
        summary = await run_job(spec_path, sim)
        charged = stats(sim)["submissions_charged"]
    assert summary.exit_code == 0
    assert summary.tasks == 2
    assert summary.not_in_spec == 1
    assert charged == 3
    rows = await ledger_rows(spec_path)
    assert len(rows) == 3
    assert all(r.state is TaskState.DONE for r in rows)
    status = await job_status(load_spec(spec_path))
    assert status["not_in_spec"] == 1
    assert status["tasks"] == 3


# --- failures, moderation, forbidden models, budget ---------------------------------------


async def test_failed_tasks_are_resubmitted_up_to_max_attempts(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A task the service fails is resubmitted until limits.max_attempts, then failed (error);
    every failed attempt is refunded."""
    spec_path = subjects_spec(
        tmp_path, ["cat", "dog [sim:fail=error]", "owl"], limits="max_attempts: 3"
    )
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
        tasks = sim.state.task_rows()
    assert summary.exit_code == 1
    assert summary.counts["done"] == 2
    assert summary.counts["failed"] == 1
    assert summary.failures_by_code == {"error": 1}
    failing = [t for t in tasks if "[sim:fail=error]" in str(t["prompt"])]
    assert len(failing) == 3
    assert after["submissions_charged"] == 2 + 3
    assert after["refunded_total"] == pytest.approx(3 * FAST)
    (bad,) = [r for r in await ledger_rows(spec_path) if r.state is TaskState.FAILED]
    assert bad.attempts == 3
    assert bad.error_code == "error"
    assert bad.charged == pytest.approx(0.0)
    assert summary.spent_total == pytest.approx(2 * FAST)


async def test_moderation_fails_at_once_and_is_refunded(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A moderated task is failed after one attempt with its reason as the code, and refunded."""
    spec_path = subjects_spec(
        tmp_path,
        ["cat", "dog [sim:fail=output_moderation]", "owl [sim:fail=input_moderation]", "emu"],
    )
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 1
    assert summary.counts["done"] == 2
    assert summary.failures_by_code == {"output_moderation": 1, "input_moderation": 1}
    assert after["submissions_charged"] == 4
    assert after["refunded_total"] == pytest.approx(2 * FAST)
    status = await job_status(load_spec(spec_path))
    assert status["counts"]["failed"] == 2
    assert status["failures_by_code"] == {"output_moderation": 1, "input_moderation": 1}
    assert status["spent"] == pytest.approx(2 * FAST)
    failed = [r for r in await ledger_rows(spec_path) if r.state is TaskState.FAILED]
    assert [r.attempts for r in failed] == [1, 1]


async def test_a_forbidden_model_fails_its_tasks_and_the_rest_go_on(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """With one model of two forbidden (403) during the run (the preflight, which would
    refuse it first, is off), its tasks fail token_model_forbidden, the other model's
    tasks are done, and the run exits 1."""
    spec_path = write_spec(tmp_path, GRID)
    async with sim_factory(sim_config(forbid=["gpt-image-2"])) as sim:
        hook = RecordingHook()
        summary = await run_job(spec_path, sim, hook=hook, check=False)
        after = stats(sim)
    rows = await ledger_rows(spec_path)
    assert summary.exit_code == 1
    assert summary.failures_by_code == {"token_model_forbidden": 6}
    for row in rows:
        expected = TaskState.FAILED if row.model == "gpt-image-2" else TaskState.DONE
        assert row.state is expected
    assert after["submissions_charged"] == 6
    assert any("forbidden" in t for t in hook.texts("error"))


async def test_the_snapshot_counts_each_forbidden_task_once(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """this_run["failed"] counts the tasks that failed in this run, each once."""
    spec_path = write_spec(tmp_path, GRID)
    async with sim_factory(sim_config(forbid=["gpt-image-2"])) as sim:
        summary = await run_job(spec_path, sim, check=False)
    assert summary.counts["failed"] == 6
    assert summary.this_run["failed"] == 6


async def test_budget_stops_submitting_before_it_is_passed(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """limits.budget below the job's cost stops submissions before spending past it; the
    rest stays pending, the run exits 1 and says why."""
    budget = 4.5 * FAST  # four images fit, a fifth would pass it
    spec_path = subjects_spec(
        tmp_path, [f"s{i}" for i in range(12)], limits=f"budget: {budget}\nconcurrency: 4"
    )
    async with sim_factory(sim_config()) as sim:
        hook = RecordingHook()
        summary = await run_job(spec_path, sim, hook=hook)
        after = stats(sim)
    assert after["charged_total"] <= budget + 1e-9
    assert after["submissions_charged"] == 4
    assert summary.exit_code == 1
    assert summary.stop_reason == "budget"
    assert summary.counts["done"] == 4
    assert summary.counts["pending"] == 8
    assert summary.this_run["budget_skipped"] >= 1
    assert any("budget" in t for t in hook.texts("warning"))
    assert summary.spent_total == pytest.approx(4 * FAST)


# --- interruption and crash recovery --------------------------------------------------------


async def test_interrupted_run_resumes_without_paying_twice(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """An interrupt after some acceptances exits 130 with a consistent ledger; the next run
    polls the tasks already at the service instead of resubmitting them."""
    spec_path = subjects_spec(tmp_path, [f"s{i}" for i in range(10)], limits="concurrency: 4")
    handle = RunHandle()
    hook = RecordingHook()
    hook.on(lambda s: s.accepted >= 3, handle.interrupt)
    async with sim_factory(sim_config()) as sim:
        # The first poll comes late, so the accepted tasks are still `running` at the stop.
        first = await run_job(spec_path, sim, hook=hook, handle=handle, first_poll=30.0)
        assert first.stop_reason == "interrupted"
        assert first.exit_code == 130
        rows = await ledger_rows(spec_path)
        states = [r.state for r in rows]
        assert TaskState.SUBMITTING not in states
        running = [r for r in rows if r.state is TaskState.RUNNING]
        assert len(running) >= 3
        assert all(r.remote_id for r in running)
        charged_first = stats(sim)["submissions_charged"]
        assert charged_first == len(running) + states.count(TaskState.DONE)
        async with open_ledger(spec_path) as ledger:
            assert await ledger.integrity_check() == "ok"

        second = await run_job(spec_path, sim)
        after = stats(sim)
    assert second.exit_code == 0
    assert second.counts["done"] == 10
    assert after["submissions_charged"] == 10
    by_id = {t["id"]: t for t in sim.state.task_rows()}
    async with open_ledger(spec_path) as ledger:
        for row in running:
            events = await ledger.events_for(row.key)
            assert [s for _, s, _ in events].count("submitting") == 1
            now = await ledger.get(row.key)
            assert now is not None
            assert now.remote_id == row.remote_id
            assert by_id[row.remote_id]["status"] == "succeeded"


async def test_interrupt_before_the_start_submits_nothing(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A handle interrupted before the run starts syncs the ledger and sends nothing."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog"])
    handle = RunHandle()
    handle.interrupt()
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim, handle=handle)
        after = stats(sim)
    assert summary.exit_code == 130
    assert summary.counts["pending"] == 2
    assert after["submissions_charged"] == 0


async def test_a_row_left_submitting_becomes_unknown_and_is_not_resubmitted(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A row a crashed run left `submitting` is `unknown` at the next start (with a warning),
    and is not sent again."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    handle = RunHandle()
    handle.interrupt()
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim, handle=handle)
        rows = await ledger_rows(spec_path)
        crashed = rows[1].key
        async with open_ledger(spec_path) as ledger:
            await ledger.write(
                Transition(crashed, TaskState.SUBMITTING, attempts=1, detail="attempt 1")
            )
        hook = RecordingHook()
        summary = await run_job(spec_path, sim, hook=hook)
        after = stats(sim)
    assert summary.exit_code == 1
    assert summary.counts == {**summary.counts, "done": 2, "unknown": 1, "submitting": 0}
    assert after["submissions_charged"] == 2
    assert any("unknown" in t and "submitted" in t for t in hook.texts("warning"))
    async with open_ledger(spec_path) as ledger:
        row = await ledger.get(crashed)
        assert row is not None
        assert row.state is TaskState.UNKNOWN
        events = [s for _, s, _ in await ledger.events_for(crashed)]
    assert events[-1] == "unknown"
    assert events.count("submitting") == 1


async def test_a_submission_outliving_the_stop_grace_is_unknown(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A stop waits for the answers in flight only for the grace period: a submission still
    unanswered then is recorded `unknown` (it was sent, and charged), never `submitting`."""
    body = dedent(IMAGES_JOB).replace("[cat, dog]", '["cat [sim:latency=30]"]')
    body = body.replace('aspect_ratio: ["1:1", "3:2"]', 'aspect_ratio: ["1:1"]')
    spec_path = write_spec(tmp_path, body)
    handle = RunHandle()
    hook = RecordingHook()
    hook.on(lambda s: s.submitted >= 1, handle.interrupt)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim, hook=hook, handle=handle, stop_grace=0.3)
        after = stats(sim)
        again = await run_job(spec_path, sim)
        charged_again = stats(sim)["submissions_charged"]
    assert summary.exit_code == 130
    assert summary.counts["unknown"] == 1
    assert summary.failures_by_code == {"interrupted": 1}
    assert after["submissions_charged"] == 1
    assert again.counts["unknown"] == 1
    assert charged_again == 1


async def test_tasks_the_service_forgot_are_submitted_again(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Running tasks whose ids the service no longer knows (task_not_found, as HTTP 404 or
    code -22) go back to pending and are submitted again."""
    spec_path = subjects_spec(tmp_path, [f"s{i}" for i in range(6)], limits="concurrency: 8")
    handle = RunHandle()
    hook = RecordingHook()
    hook.on(lambda s: s.accepted >= 6, handle.interrupt)
    async with sim_factory(sim_config()) as first:
        await run_job(spec_path, first, hook=hook, handle=handle, first_poll=30.0)
    rows = await ledger_rows(spec_path)
    assert [r.state for r in rows] == [TaskState.RUNNING] * 6
    for style in ("404", "code-22"):
        async with sim_factory(sim_config(not_found_style=style)) as fresh:
            if style == "code-22":  # forget the ids again: a second fresh service
                for row in rows:
                    async with open_ledger(spec_path) as ledger:
                        await ledger.write(
                            Transition(row.key, TaskState.RUNNING, remote_id=row.remote_id)
                        )
            summary = await run_job(spec_path, fresh)
            after = stats(fresh)
        assert summary.exit_code == 0, style
        assert after["submissions_charged"] == 6, style
        assert after["requests_by_route"]["POST /v1/draw/result"] >= 12, style


async def test_a_key_revoked_mid_run_stops_it_cleanly(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A key revoked while tasks are at the service ends the run with AuthenticationError;
    nothing is left `submitting`, and with the key back the next run finishes without
    paying twice."""
    spec_path = subjects_spec(tmp_path, [f"s{i}" for i in range(8)], limits="concurrency: 4")
    async with sim_factory(sim_config()) as sim:
        hook = RecordingHook()

        def revoke() -> None:
            sim.config.keys = []

        hook.on(lambda s: s.accepted >= 3, revoke)
        with pytest.raises(AuthenticationError):
            await run_job(spec_path, sim, hook=hook)
        states = [r.state for r in await ledger_rows(spec_path)]
        assert TaskState.SUBMITTING not in states
        assert TaskState.UNKNOWN not in states
        sim.config.keys = ["sk-sim"]
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["submissions_charged"] == 8


async def test_running_out_of_credits_leaves_no_task_failed(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """When the account runs out of credits mid-run (the preflight, which would stop the
    run at the balance first, is off) the run stops with the unpaid tasks pending, so a
    rerun after a top-up finishes the job."""
    spec_path = subjects_spec(tmp_path, [f"s{i}" for i in range(6)], limits="concurrency: 1")
    async with sim_factory(sim_config(credits=2.5 * FAST)) as sim:  # two images, not three
        with pytest.raises(BusinessError):
            await run_job(spec_path, sim, check=False)
        states = [r.state for r in await ledger_rows(spec_path)]
        assert states.count(TaskState.DONE) == 2
        assert TaskState.FAILED not in states
        sim.config.credits = 100.0
        sim.state.account_for_key("sk-sim").balance = 100.0
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0


# --- the key is refused -----------------------------------------------------------------------


async def test_a_refused_key_raises_and_leaves_the_ledger_consistent(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A key the service refuses (401) at its first submission (the preflight, which would
    refuse it before the ledger, is off) ends the run with AuthenticationError; no task is
    left `submitting` and nothing was charged."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog", "owl", "emu"])
    async with sim_factory(sim_config()) as sim:
        with pytest.raises(AuthenticationError) as info:
            await run_job(spec_path, sim, auth=BearerAuth("sk-wrong-0123456789abcdef"), check=False)
        after = stats(sim)
    assert "0123456789abcdef" not in str(info.value)
    assert after["submissions_charged"] == 0
    rows = await ledger_rows(spec_path)
    assert {r.state for r in rows} == {TaskState.PENDING}
    async with open_ledger(spec_path) as ledger:
        assert await ledger.integrity_check() == "ok"
    summary = json.loads((output_dir(spec_path) / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["pending"] == 4


# --- file names from hostile prompts --------------------------------------------------------

HOSTILE = [
    "../../etc/passwd",
    "..",
    "ctrl \x01\x07\x1b[31m\x7f end",
    "x" * 300,
    "CON",
    "nul.txt",
    "mixed Ωmega кошка 猫 قطة हिन्दी",
    "a/b\\c",
    " .hidden",
    "~/.ssh/id_rsa",
    "猫" * 100,  # 300 bytes of UTF-8
]


async def test_hostile_prompts_give_safe_names_inside_the_output_folder(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Prompt text and variables with separators, dots, control characters, reserved names
    and long runs become file names under the output folder, each at most 255 bytes, and
    nothing is written anywhere else."""
    job_dir = tmp_path / "deep" / "er"
    body = "name: hostile\noutput: out\nmodel: nano-banana-fast\n"
    body += 'layout: "{subject}/{prompt}-{key8}.png"\nprompt: "{subject}"\n'
    body += "matrix:\n  subject: [" + ", ".join(json.dumps(s) for s in HOSTILE) + "]\n"
    spec_path = write_spec(job_dir, body)
    before = listing(tmp_path)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0, summary.failures_by_code
    out = output_dir(spec_path).resolve()
    added = listing(tmp_path) - before
    assert added
    rel_out = out.relative_to(tmp_path.resolve()).as_posix()
    for path in added:
        assert path == rel_out or path.startswith(rel_out + "/"), path
    images = files_under(out, ".png")
    assert len(images) == len(HOSTILE)
    for image in images:
        rel = image.relative_to(out)
        for part in rel.parts:
            assert len(part.encode("utf-8")) <= 255
            assert not part.startswith(".")
            assert part.split(".")[0].lower() not in ("con", "nul", "prn", "aux")
            assert all(ch.isprintable() for ch in part)
            assert "\\" not in part
        assert rel.name.endswith(".png")
    for row in await ledger_rows(spec_path):
        assert (out / row.layout_path).resolve().is_relative_to(out)
        assert row.key[:8] in Path(row.layout_path).name


async def test_a_file_name_cut_at_255_bytes_can_be_saved(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A layout whose fields add up past 255 bytes is cut to a name the runner can write
    (temporary file included), with the key kept, and the job finishes."""
    body = "name: long\noutput: out\nmodel: nano-banana-fast\n"
    body += 'layout: "{subject}_{prompt}_{subject}-{key8}.png"\nprompt: "{subject}"\n'
    body += "matrix:\n  subject: [" + json.dumps("猫" * 100) + ", short]\n"
    spec_path = write_spec(tmp_path, body)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
    assert summary.exit_code == 0
    for row in await ledger_rows(spec_path):
        name = Path(row.layout_path).name
        assert len(name.encode("utf-8")) <= 255
        assert row.key[:8] in name


# --- the synchronous images route -----------------------------------------------------------

IMAGES_JOB = """
    name: images-route
    output: out
    model: gpt-image-2
    prompt: "a poster of {subject}"
    api:
      endpoint: images
    matrix:
      aspect_ratio: ["1:1", "3:2"]
      subject: [cat, dog]
    """


async def test_images_route_saves_results_without_polling(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """The synchronous images route saves every result URL, with no poll at all."""
    spec_path = write_spec(tmp_path, IMAGES_JOB)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert summary.counts["done"] == 4
    assert after["submissions_charged"] == 4
    assert after["requests_by_route"].get("POST /v1/images/generations") == 4
    assert "POST /v1/draw/result" not in after["requests_by_route"]
    assert after["downloads"] == 4
    for row in await ledger_rows(spec_path):
        assert row.remote_id is None
        assert (
            row.sha256
            == hashlib.sha256((output_dir(spec_path) / row.layout_path).read_bytes()).hexdigest()
        )


async def test_b64_json_cannot_be_asked_for_through_params(tmp_path: Path) -> None:
    """params.response_format is refused at its line: batchgen sets that field itself."""
    spec_path = write_spec(tmp_path, dedent(IMAGES_JOB) + "params:\n  response_format: b64_json\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec_path)
    assert "response_format" in str(info.value)


async def test_inline_b64_results_are_saved_from_the_answer(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """Requests asking for b64_json (set in the ledger, as a spec cannot) are saved from the
    answer's bytes: no download, same verification, sha256 as the simulator served it."""
    spec_path = write_spec(tmp_path, IMAGES_JOB)
    handle = RunHandle()
    handle.interrupt()
    async with sim_factory(sim_config()) as sim:
        await run_job(spec_path, sim, handle=handle)
        db = sqlite3.connect(ledger_path(load_spec(spec_path)))
        with db:
            for key, request in db.execute("SELECT key, request FROM tasks").fetchall():
                body = json.loads(request)
                body["response_format"] = "b64_json"
                db.execute("UPDATE tasks SET request = ? WHERE key = ?", (json.dumps(body), key))
        db.close()
        summary = await run_job(spec_path, sim)
        after = stats(sim)
        served = {d for t in sim.state.task_rows() for d in t["served_sha256"]}  # type: ignore[attr-defined]
    assert summary.exit_code == 0
    assert after["downloads"] == 0
    rows = await ledger_rows(spec_path)
    assert {r.sha256 for r in rows} == served
    for row in rows:
        assert row.urls == ()
        with Image.open(output_dir(spec_path) / row.layout_path) as img:
            img.verify()


# --- answers lost ------------------------------------------------------------------------


async def test_a_lost_answer_is_unknown_and_resubmitted_only_by_policy(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A submission charged but unanswered leaves exactly that task `unknown`; a plain rerun
    does not resubmit it, resubmit_unknown does (and pays again)."""
    spec_path = subjects_spec(tmp_path, [f"s{i}" for i in range(5)], limits="concurrency: 1")
    async with sim_factory(sim_config(drop_rate=1.0)) as sim:
        hook = RecordingHook()

        def stop_dropping() -> None:
            sim.config.drop_rate = 0.0

        hook.on(lambda s: s.unknown >= 1, stop_dropping)
        first = await run_job(spec_path, sim, hook=hook)
        assert first.exit_code == 1
        assert first.counts["unknown"] == 1
        assert first.counts["done"] == 4
        assert first.this_run["unknown"] == 1
        assert first.failures_by_code == {"connection_lost": 1}
        assert stats(sim)["submissions_dropped"] == 1
        assert stats(sim)["submissions_charged"] == 5
        (lost,) = [r for r in await ledger_rows(spec_path) if r.state is TaskState.UNKNOWN]
        assert lost.charged == pytest.approx(FAST)

        again = await run_job(spec_path, sim)
        assert again.exit_code == 1
        assert again.counts["unknown"] == 1
        assert stats(sim)["submissions_charged"] == 5

        hook = RecordingHook()
        forced = await run_job(spec_path, sim, hook=hook, resubmit_unknown=True)
        after = stats(sim)
    assert forced.exit_code == 0
    assert after["submissions_charged"] == 6
    assert any("resubmitting 1 unknown" in t for t in hook.texts("warning"))
    async with open_ledger(spec_path) as ledger:
        states = [s for _, s, _ in await ledger.events_for(lost.key)]
    assert states.count("submitting") == 2
    assert states[-1] == "done"


async def test_retry_unknown_marks_the_task_for_the_next_run(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """`retry --unknown` (report.retry_tasks) sends an unknown task back to pending, and the
    next run submits it."""
    spec_path = subjects_spec(tmp_path, ["cat", "dog", "owl"], limits="concurrency: 1")
    async with sim_factory(sim_config(drop_rate=1.0)) as sim:
        hook = RecordingHook()

        def stop_dropping() -> None:
            sim.config.drop_rate = 0.0

        hook.on(lambda s: s.unknown >= 1, stop_dropping)
        await run_job(spec_path, sim, hook=hook)
        lines = await retry_tasks(load_spec(spec_path), failed=False, unknown=True)
        assert lines == ["unknown: 1 to resubmit (each may already have been charged)"]
        summary = await run_job(spec_path, sim)
        after = stats(sim)
    assert summary.exit_code == 0
    assert after["submissions_charged"] == 4


async def test_cancelling_a_run_from_outside_is_clean(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A caller's cancel scope (a timeout around arun) ends the run quietly, with the
    summary written and the ledger consistent."""
    spec_path = subjects_spec(tmp_path, ["slow [sim:latency=30]", "cat"])
    async with sim_factory(sim_config()) as sim:
        hook = RecordingHook()
        with anyio.CancelScope() as scope:
            hook.on(lambda s: s.accepted >= 2, scope.cancel)
            await run_job(spec_path, sim, hook=hook)
    assert scope.cancelled_caught
    assert (output_dir(spec_path) / "summary.json").is_file()
    states = {r.state for r in await ledger_rows(spec_path)}
    assert TaskState.SUBMITTING not in states


# --- the library never prints ---------------------------------------------------------------

LIBRARY_RUN = """
import sys, anyio
from batchgen.runner.job import RunOptions, arun, sim_session

async def main() -> None:
    async with sim_session(latency=0.05, image_scale=0.05) as (url, auth):
        summary = await arun(sys.argv[1], RunOptions(base_url=url, auth=auth, first_poll=0.02))
    assert summary.stop_reason == "budget", summary.stop_reason

anyio.run(main)
"""


def test_the_library_prints_nothing(tmp_path: Path) -> None:
    """arun reports through its hook only: a run with a warning (the budget) writes nothing
    to stdout or stderr of a program that configured no logging."""
    spec_path = subjects_spec(tmp_path, ["a", "b", "c", "d"], limits="budget: 0.05")
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_RUN, str(spec_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""
