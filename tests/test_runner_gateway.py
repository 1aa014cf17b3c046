"""The runner against the simulator's gateway profile (new-api's limiter and errors).

The gateway limits each user with a sliding log of N successes per window and says so
in its 429s (or sends an empty body, without Redis), never with Retry-After. These
runs go through the real runner over loopback HTTP and check what the service saw:
how many 429s it sent, when it accepted each submission, what it charged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.errors import (
    AccessDeniedError,
    AuthenticationError,
    QuotaExceededError,
)
from batchgen.ledger.schema import TaskState
from batchgen.sim import SimConfig, SimServer, gateway_profile
from tests.conftest import SimFactory
from tests.runner_helpers import (
    RecordingHook,
    ledger_rows,
    run_job,
    stats,
    subjects_spec,
)

pytestmark = pytest.mark.anyio

#: A window the limit message writes exactly in minutes (0.02), short enough for tests.
WINDOW = 1.2
GENERATE = "POST /v1/api/generate"
RESULT = "POST /v1/draw/result"


def gateway(**changes: Any) -> SimConfig:
    """The gateway profile with fast tasks, tiny images and a short window of 4."""
    base: dict[str, Any] = {
        "latency": 0.05,
        "image_scale": 0.05,
        "seed": 0,
        "gateway_limit": 4,
        "gateway_window": WINDOW,
    }
    base.update(changes)
    return gateway_profile(**base)


def subjects(n: int) -> list[str]:
    """``n`` distinct subjects (one task each)."""
    return [f"subject {i}" for i in range(n)]


def accepted_times(sim: SimServer) -> list[float]:
    """When the simulator accepted each submission (its own clock, seconds)."""
    return sorted(float(row["created"]) for row in sim.state.task_rows())  # type: ignore[arg-type]


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside one half-open window of ``window`` seconds."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def limited(sim: SimServer, route: str) -> int:
    """429s the simulator sent on ``route``."""
    by_route = stats(sim).get("rate_limited_by_route", {})
    return int(by_route.get(route, 0))


# --- a stated limit ----------------------------------------------------------------------


async def test_a_stated_limit_is_paced_to_exactly(tmp_path: Path, sim_factory: SimFactory) -> None:
    """After the first 429 states "4 per window", no window ever holds more than 4
    accepted submissions, and the service refuses no more than the first one (plus one
    already in flight)."""
    spec = subjects_spec(tmp_path, subjects(10), limits="concurrency: 10")
    hook = RecordingHook()
    async with sim_factory(gateway()) as sim:
        summary = await run_job(spec, sim, hook=hook)
        times = accepted_times(sim)
        refused = limited(sim, GENERATE)
        charged = stats(sim)["submissions_charged"]
    assert summary.counts["done"] == 10
    assert charged == 10
    assert refused <= 2
    assert most_in_any_window(times, WINDOW) <= 4
    assert any("states a limit of 4 requests" in text for text in hook.texts("info"))
    assert summary.this_run["service_limit"].startswith("4/")


async def test_polls_that_count_are_found_and_paced_in_the_same_window(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """When the service counts polls against the limit, the runner learns it from a
    refused poll (or from its submissions' window filling up with them) and paces polls
    and submissions together: every task finishes, with at most a few 429s."""
    spec = subjects_spec(
        tmp_path, subjects(6), limits="concurrency: 6", extra="api: {reply: async}"
    )
    hook = RecordingHook()
    async with sim_factory(gateway(gateway_polls=True)) as sim:
        summary = await run_job(spec, sim, hook=hook)
        refused = limited(sim, GENERATE) + limited(sim, RESULT)
    assert summary.counts["done"] == 6
    assert refused <= 3
    assert any("polls count" in text for text in hook.texts("info"))


async def test_auto_reply_streams_once_polls_are_known_to_count(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """With ``reply: auto`` (the default), submissions switch to one streamed request per
    image once the service shows that polls count, so most tasks need no poll at all."""
    spec = subjects_spec(tmp_path, subjects(12), limits="concurrency: 12")
    async with sim_factory(gateway(gateway_polls=True)) as sim:
        summary = await run_job(spec, sim)
        requests = stats(sim)["requests_by_route"]
    assert summary.counts["done"] == 12
    assert requests.get(RESULT, 0) < 12


# --- streams -----------------------------------------------------------------------------


async def test_stream_reply_needs_one_request_per_image(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """``reply: stream`` takes the task id from the first frame and the result from the
    last: one request per image, no poll, and the ledger holds every remote id."""
    spec = subjects_spec(tmp_path, subjects(5), extra="api: {reply: stream}")
    async with sim_factory(gateway(gateway_limit=0)) as sim:
        summary = await run_job(spec, sim)
        requests = stats(sim)["requests_by_route"]
    assert summary.counts["done"] == 5
    assert requests.get(GENERATE) == 5
    assert requests.get(RESULT, 0) == 0
    rows = await ledger_rows(spec)
    assert all(row.remote_id for row in rows)


async def test_a_stream_cut_after_its_first_frame_falls_back_to_polling(
    tmp_path: Path, sim_factory: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that dies after the task id arrived is not paid again: the runner polls
    that id and saves the image."""
    from batchgen.sim.task_routes import TaskRoutes
    from batchgen.sim.wire import ConnectionDrop

    real = TaskRoutes._stream

    async def cut(self: TaskRoutes, req: Any, task: Any, *, quiet: bool) -> None:
        from batchgen.sim.service import EVENT_STREAM
        from batchgen.sim.wire import json_bytes

        await req.start(200, EVENT_STREAM)
        first = {"id": task.id, "status": "running", "progress": 0}
        await req.chunk(b"data: " + json_bytes(first) + b"\n\n")
        raise ConnectionDrop

    assert real is not None
    monkeypatch.setattr(TaskRoutes, "_stream", cut)
    spec = subjects_spec(tmp_path, subjects(3), extra="api: {reply: stream}")
    async with sim_factory(gateway(gateway_limit=0)) as sim:
        summary = await run_job(spec, sim)
        after = stats(sim)
    assert summary.counts["done"] == 3
    assert after["submissions_charged"] == 3
    assert after["requests_by_route"].get(RESULT, 0) >= 3


# --- empty 429s ----------------------------------------------------------------------------


async def test_empty_429s_without_the_gateways_header_still_finish_the_job(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A sliding log that answers with empty bodies and does not say it is new-api is
    left to rate discovery: slower, but every task is done and paid once."""
    spec = subjects_spec(tmp_path, subjects(8), limits="concurrency: 8")
    config = gateway(wire="sim", empty_429=True, gateway_window=0.6)
    async with sim_factory(config) as sim:
        summary = await run_job(spec, sim)
        charged = stats(sim)["submissions_charged"]
    assert summary.counts["done"] == 8
    assert charged == 8


@pytest.mark.slow
async def test_empty_429s_from_the_gateway_infer_a_one_minute_window(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """The gateway without Redis states nothing, but its windows are whole minutes: the
    runner infers N from what was accepted and waits for the minute, with one 429."""
    spec = subjects_spec(tmp_path, subjects(5), limits="concurrency: 5")
    hook = RecordingHook()
    config = gateway(empty_429=True, gateway_limit=3, gateway_window=60.0)
    async with sim_factory(config) as sim:
        summary = await run_job(spec, sim, hook=hook)
        refused = limited(sim, GENERATE)
        times = accepted_times(sim)
    assert summary.counts["done"] == 5
    assert refused <= 2
    assert most_in_any_window(times, 60.0) <= 3
    assert any("behaves like a limit of 3 requests" in text for text in hook.texts("info"))


# --- the error table ------------------------------------------------------------------------


async def test_no_credit_stops_the_run_and_keeps_every_task(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """403 ``insufficient_user_quota`` during a run (the preflight, which would stop at
    the balance first, is off) stops the run: what was paid is kept, the rest
    stays pending with no attempt used, and nothing failed."""
    spec = subjects_spec(tmp_path, subjects(6), limits="concurrency: 1")
    credits = 2.5 * DEFAULT_PRICES["nano-banana-fast"]  # two images, not three
    async with sim_factory(gateway(gateway_limit=0, credits=credits)) as sim:
        with pytest.raises(QuotaExceededError) as info:
            await run_job(spec, sim, check=False)
    assert "quota" in str(info.value).lower()
    rows = await ledger_rows(spec)
    states = [row.state for row in rows]
    assert states.count(TaskState.DONE) == 2
    assert TaskState.FAILED not in states
    assert all(row.attempts == 0 for row in rows if row.state is TaskState.PENDING)


async def test_a_used_up_token_quota_stops_the_run_too(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """403 ``pre_consume_token_quota_failed`` during a run (the preflight is off) stops
    the run like no credit does: nothing is failed, the unpaid tasks stay pending."""
    spec = subjects_spec(tmp_path, subjects(5), limits="concurrency: 1")
    quota = 2.5 * DEFAULT_PRICES["nano-banana-fast"]
    async with sim_factory(gateway(gateway_limit=0, token_quota=quota)) as sim:
        with pytest.raises((QuotaExceededError, AuthenticationError)):
            await run_job(spec, sim, check=False)
    states = [row.state for row in await ledger_rows(spec)]
    assert TaskState.FAILED not in states
    assert states.count(TaskState.PENDING) >= 3


async def test_an_ip_refusal_stops_the_run_before_anything_is_paid(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """403 ``access_denied`` (the key may not be used from here) is not about one model:
    the run stops at once, exit code 3, every task pending."""
    spec = subjects_spec(tmp_path, subjects(4))
    async with sim_factory(gateway(gateway_limit=0, ip_blocked=["sk-sim"])) as sim:
        with pytest.raises(AccessDeniedError) as info:
            await run_job(spec, sim)
        charged = stats(sim)["submissions_charged"]
    assert info.value.exit_code == 3
    assert charged == 0
    assert {row.state for row in await ledger_rows(spec)} == {TaskState.PENDING}


async def test_a_model_the_token_may_not_use_blocks_only_that_model(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """403 with no code, naming the model, during a run (the preflight, which would
    refuse it first, is off), fails that model's tasks; the other model's
    tasks are all done."""
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "version: 1\nname: job\noutput: out\nprompt: 'a photo of {subject}'\n"
        "matrix:\n  model: [nano-banana-fast, gpt-image-2]\n  subject: [cat, dog, owl]\n",
        encoding="utf-8",
    )
    async with sim_factory(gateway(gateway_limit=0, forbid=["gpt-image-2"])) as sim:
        summary = await run_job(spec, sim, check=False)
    by_model: dict[str, set[TaskState]] = {}
    for row in await ledger_rows(spec):
        by_model.setdefault(row.model, set()).add(row.state)
    assert by_model == {"nano-banana-fast": {TaskState.DONE}, "gpt-image-2": {TaskState.FAILED}}
    assert summary.exit_code == 1


async def test_a_model_without_a_price_blocks_only_that_model(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """400 ``model_price_error`` is the model's, not the task's: its tasks fail at once
    (one request, not one per task), the others go on."""
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "version: 1\nname: job\noutput: out\nprompt: 'a photo of {subject}'\n"
        "limits: {concurrency: 1}\n"
        "matrix:\n  model: [nano-banana-fast, gpt-image-2]\n  subject: [cat, dog, owl]\n",
        encoding="utf-8",
    )
    async with sim_factory(gateway(gateway_limit=0, unpriced=["gpt-image-2"])) as sim:
        await run_job(spec, sim)
        refused = stats(sim)["requests_by_route"][GENERATE] - stats(sim)["submissions_charged"]
    states = {row.model: row.state for row in await ledger_rows(spec)}
    assert states == {"nano-banana-fast": TaskState.DONE, "gpt-image-2": TaskState.FAILED}
    assert refused == 1


async def test_an_empty_code_401_is_a_refused_key(tmp_path: Path, sim_factory: SimFactory) -> None:
    """The gateway's 401 carries no code: it is still a refused key (exit code 3)."""
    from batchgen.api.auth import BearerAuth

    spec = subjects_spec(tmp_path, subjects(2))
    async with sim_factory(gateway(gateway_limit=0)) as sim:
        with pytest.raises(AuthenticationError) as info:
            await run_job(spec, sim, auth=BearerAuth("sk-not-this-one-0123456789"))
    assert info.value.exit_code == 3
    assert info.value.code in ("", "invalid_api_key")


# --- what a run learnt, the next run knows ----------------------------------------------------


async def test_the_next_run_starts_from_the_limit_this_one_learnt(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """The limit a run learns is kept in the job's ledger: a later run against the same
    service paces to it from its first request (and says so)."""
    spec = subjects_spec(tmp_path, subjects(5), limits="concurrency: 5")
    async with sim_factory(gateway()) as sim:
        await run_job(spec, sim)
        more = subjects_spec(tmp_path, subjects(8), limits="concurrency: 8")
        hook = RecordingHook()
        summary = await run_job(more, sim, hook=hook)
    assert summary.counts["done"] == 8
    assert any("an earlier run learnt" in text for text in hook.texts("info"))


# --- a logged-in site session ------------------------------------------------------------


def test_a_playground_session_from_the_environment_runs_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no key, COBABA_SESSION and COBABA_USER_ID run the job on the playground
    routes (billed to that user), and neither appears in the output or the ledger."""
    from batchgen.cli import main
    from tests.runner_helpers import threaded_simulator

    session = "canary-session-PLAYGROUND-73f1"
    config = gateway(gateway_limit=0, sessions={session: "4242"})
    spec = subjects_spec(tmp_path, subjects(3))
    with threaded_simulator(config) as sim:
        monkeypatch.delenv("COBABA_API_KEY", raising=False)
        monkeypatch.setenv("COBABA_SESSION", session)
        monkeypatch.setenv("COBABA_USER_ID", "4242")
        code = main(["run", "--quiet", "--base-url", sim.base_url, str(spec)])
        after = stats(sim)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert after["charges_by_key"] == {"user:4242": 3}
    assert session not in out + err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert session.encode() not in path.read_bytes(), path


def test_half_a_session_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """COBABA_SESSION without COBABA_USER_ID is one line naming what is missing, exit 3."""
    from batchgen.cli import main

    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    monkeypatch.setenv("COBABA_SESSION", "some-session-value")
    monkeypatch.delenv("COBABA_USER_ID", raising=False)
    spec = subjects_spec(tmp_path, subjects(1))
    assert main(["run", "--quiet", str(spec)]) == 3
    err = capsys.readouterr().err
    assert "COBABA_USER_ID is not set" in err
    assert "some-session-value" not in err
