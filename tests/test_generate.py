"""Generated axes end to end: parsing answers, the chat ledger, lock and run over loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from batchgen.api.auth import BearerAuth
from batchgen.cli.app import main
from batchgen.errors import GenerationError, SpecError, UsageError
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.store import Ledger
from batchgen.runner.generate import PER_REQUEST, chat_body, parse_values
from batchgen.runner.locking import lock_job
from batchgen.sim import SimServer, running_simulator
from batchgen.spec.load import load_spec
from batchgen.spec.lock import GeneratedAxis, lock_path, read_lock
from batchgen.spec.matrix import expand
from batchgen.spec.sources import Where
from tests.runner_helpers import RecordingHook, run_job, sim_config, write_spec

CHAT_ROUTE = "POST /v1/chat/completions"
INSTRUCTION = "Distinct everyday objects a product photographer would shoot, one per line"


def job(folder: Path, *, count: int = 50, instruction: str = INSTRUCTION, extra: str = "") -> Path:
    """A job of one generated axis of ``count`` subjects crossed with 2 ratios; ``extra``
    is YAML appended at the top level."""
    path = write_spec(
        folder,
        f"""
        name: gen
        output: out
        model: nano-banana-fast
        prompt: "A studio photo of {{subject}}"
        matrix:
          subject:
            generate:
              model: gemini-3.1-pro-preview
              count: {count}
              instruction: {json.dumps(instruction)}
          aspect_ratio: ["1:1", "3:2"]
        """,
    )
    if extra:
        path.write_text(path.read_text() + extra + "\n", encoding="utf-8")
    return path


def chats(sim: SimServer) -> int:
    """Chat requests the simulator has answered (or refused)."""
    by_route: dict[str, int] = sim.stats()["requests_by_route"]  # type: ignore[assignment]
    return by_route.get(CHAT_ROUTE, 0)


async def lock(spec: Path, sim: SimServer, **kw: Any) -> Any:
    """Lock ``spec`` against ``sim`` (its real lockfile name: the library call's choice)."""
    return await lock_job(
        load_spec(spec), base_url=sim.base_url, auth=BearerAuth("sk-sim"), seed=0, **kw
    )


# --- parsing answers ---------------------------------------------------------------------


def test_parse_values_trims_and_dedupes() -> None:
    """Bullets, numbers, quotes, blank lines, preambles and duplicates are dropped."""
    text = (
        "Here are the objects:\n\n1. A teapot\n- 'a lamp'\n  * “a boot”,\n"
        "a  TEAPOT\n\n(4) a mug\n#   a vase\n"
    )
    assert parse_values(text) == ["A teapot", "a lamp", "a boot", "a mug", "a vase"]


def test_parse_values_reads_a_json_list() -> None:
    """An answer that is a JSON list (even in a code fence) gives its items."""
    fenced = '```json\n["a teapot", "a lamp", "a teapot", 7]\n```'
    assert parse_values(fenced) == ["a teapot", "a lamp", "7"]


def test_parse_values_for_a_prompt_axis_drops_braces() -> None:
    """Values of a prompt axis are templates: one with braces is dropped, not sent."""
    assert parse_values("a {cat}\na dog", template=True) == ["a dog"]


def test_chat_body_asks_for_the_shortfall() -> None:
    """The request streams, asks for usage, states the number and lists what is known."""
    axis = GeneratedAxis("subject", "m", "Objects", 50, "sha256:x", "missing", Where("f", 1, 1))
    body = chat_body(axis, 20, ["a teapot", "a lamp"])
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    ask = body["messages"][-1]["content"]
    assert "Give exactly 20 values, one per line." in ask
    assert ask.endswith("Do not repeat any of these:\na teapot\na lamp")


# --- the chat ledger -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_ledger_records_and_recovers(tmp_path: Path) -> None:
    """A call is durable before it leaves; a crash leaves it unknown; costs count as spend."""
    async with Ledger.open(tmp_path / "l.sqlite") as ledger:
        first = await ledger.chat_intent(axis="a", asked="d", model="m", request={"x": 1})
        second = await ledger.chat_intent(axis="a", asked="d", model="m", request={"x": 2})
        await ledger.chat_answered(
            first,
            answer="a\nb",
            request_id="r1",
            prompt_tokens=10,
            completion_tokens=4,
            cost=0.25,
            cost_source="usage",
        )
        assert await ledger.chat_recover() == 1
        rows = await ledger.chat_answers("a", "d")
        assert [(r.id, r.answer, r.request_id) for r in rows] == [(first, "a\nb", "r1")]
        totals = await ledger.chat_totals()
        assert (totals["calls"], totals["answered"], totals["unknown"]) == (2, 1, 1)
        assert (await ledger.totals())["spent"] == 0.25
        await ledger.chat_locked([first])
        assert await ledger.chat_answers("a", "d") == []
        assert second > first


# --- lock and run over loopback ---------------------------------------------------------


@pytest.mark.anyio
async def test_lock_writes_fifty_distinct_values(tmp_path: Path) -> None:
    """A 50-value axis: one chat request, a lock with 50 distinct values and provenance."""
    spec = job(tmp_path)
    async with running_simulator(sim_config()) as sim:
        report = await lock(spec, sim)
        assert chats(sim) == 1
        charged = sim.stats()["chat_charged"]
    locked = read_lock(lock_path(spec), "job.lock.yaml")
    assert locked is not None
    axis = locked.axes["subject"]
    assert len(axis.values) == len(set(axis.values)) == 50
    assert axis.model == "gemini-3.1-pro-preview"
    assert axis.instruction == INSTRUCTION
    assert (axis.requests, axis.cost_source, len(axis.request_ids)) == (1, "usage", 1)
    assert axis.prompt_tokens
    assert axis.completion_tokens
    assert axis.cost == pytest.approx(charged, abs=1e-6)
    assert axis.generated_at.endswith("Z")
    assert report.requests == 1
    tasks = list(expand(load_spec(spec)))
    assert len(tasks) == 100
    assert {t.vars["subject"] for t in tasks} == set(axis.values)
    async with Ledger.open(ledger_path(load_spec(spec)), create=False) as ledger:
        assert (await ledger.totals())["chat_spent"] == pytest.approx(charged, abs=1e-6)


@pytest.mark.anyio
async def test_a_locked_spec_makes_no_chat_request(tmp_path: Path) -> None:
    """Once locked, a second lock, a plan and a run send 0 chat requests; keys are stable."""
    spec = job(tmp_path, count=6)
    async with running_simulator(sim_config()) as sim:
        await lock(spec, sim)
        keys = [t.key for t in expand(load_spec(spec))]
        again = await lock(spec, sim)
        assert await anyio.to_thread.run_sync(main, ["plan", str(spec)]) == 0
        summary = await run_job(spec, sim)
        assert chats(sim) == 1
    assert again.axes == ()
    assert summary.counts["done"] == 12
    assert [t.key for t in expand(load_spec(spec))] == keys


@pytest.mark.anyio
async def test_run_locks_first_and_says_so(tmp_path: Path) -> None:
    """run on an unlocked spec generates and locks first, then runs every task; a rerun
    asks nothing."""
    spec = job(tmp_path, count=5)
    hook = RecordingHook()
    async with running_simulator(sim_config()) as sim:
        summary = await run_job(spec, sim, hook=hook)
        assert chats(sim) == 1
        rerun = await run_job(spec, sim)
        assert chats(sim) == 1
        charged = float(sim.stats()["chat_charged"])  # type: ignore[arg-type]
    assert summary.counts["done"] == rerun.counts["done"] == 10
    assert any("generating the values of 'subject' first" in t for t in hook.texts("info"))
    assert any("locked in" in t for t in hook.texts("info"))
    assert lock_path(spec).exists()
    # The chat call is part of what the job spent.
    assert summary.spent_total == pytest.approx(10 * 0.048 + charged, abs=1e-6)


@pytest.mark.anyio
async def test_edited_instruction_is_stale_and_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An edited instruction is reported stale by validate; run refuses it; lock asks again."""
    spec = job(tmp_path, count=4)
    async with running_simulator(sim_config()) as sim:
        await lock(spec, sim)
        old = read_lock(lock_path(spec), "l")
        job(tmp_path, count=4, instruction="Kitchen tools, one per line")
        assert main(["validate", str(spec)]) == 0
        err = capsys.readouterr().err
        assert "the lock of axis 'subject' is stale: its instruction changed" in err
        with pytest.raises(SpecError, match="stale"):
            await run_job(spec, sim)
        assert chats(sim) == 1
        report = await lock(spec, sim)
        assert chats(sim) == 2
    new = read_lock(lock_path(spec), "l")
    assert old is not None
    assert new is not None
    assert report.axes[0].instruction == "Kitchen tools, one per line"
    assert new.axes["subject"].values != old.axes["subject"].values
    assert not load_spec(spec).stale


@pytest.mark.anyio
async def test_refresh_asks_again_and_changes_keys(tmp_path: Path) -> None:
    """--refresh regenerates a fresh axis: new values, new keys; an unknown axis is refused."""
    spec = job(tmp_path, count=4)
    async with running_simulator(sim_config()) as sim:
        await lock(spec, sim)
        before = {t.key for t in expand(load_spec(spec))}
        await lock(spec, sim, refresh=["subject"])
        with pytest.raises(UsageError, match="not a generated axis"):
            await lock(spec, sim, refresh=["colour"])
        assert chats(sim) == 2
    assert not before & {t.key for t in expand(load_spec(spec))}


@pytest.mark.anyio
async def test_shortfall_is_asked_again_and_bounded(tmp_path: Path) -> None:
    """A model that gives 20 lines an answer needs 3 requests for 50; one that gives
    none stops after the bounded number, with the error naming the axis."""
    short = job(tmp_path / "a", instruction=INSTRUCTION + " [sim:lines=20]")
    empty = job(tmp_path / "b", instruction=INSTRUCTION + " [sim:lines=0]")
    async with running_simulator(sim_config()) as sim:
        report = await lock(short, sim)
        assert chats(sim) == 3
        with pytest.raises(GenerationError, match="axis 'subject': 0 distinct values after 4"):
            await lock(empty, sim)
        assert chats(sim) == 3 + 1 + 3  # ceil(50 / PER_REQUEST) + 3 extra
    assert PER_REQUEST >= 50
    assert len(report.axes[0].values) == 50
    assert report.axes[0].requests == 3
    assert not lock_path(empty).exists()


@pytest.mark.anyio
async def test_a_paid_answer_is_reused_after_a_crash(tmp_path: Path) -> None:
    """Answers recorded but never locked (a crash in between) fill the axis first."""
    spec = job(tmp_path, count=3)
    loaded = load_spec(spec)
    axis = loaded.generated[0]
    async with Ledger.open(ledger_path(loaded)) as ledger:
        paid = await ledger.chat_intent(axis="subject", asked=axis.asked, model="m", request={})
        await ledger.chat_answered(
            paid,
            answer="a teapot\na lamp\na boot",
            request_id="r-earlier",
            prompt_tokens=10,
            completion_tokens=8,
            cost=0.001,
            cost_source="usage",
        )
        await ledger.chat_intent(axis="subject", asked=axis.asked, model="m", request={})
    hook = RecordingHook()
    async with running_simulator(sim_config()) as sim:
        report = await lock(spec, sim, hook=hook)
        assert chats(sim) == 0
    assert report.axes[0].values == ("a teapot", "a lamp", "a boot")
    assert report.axes[0].request_ids == ("r-earlier",)
    assert any("reusing 1 chat answer(s)" in t for t in hook.texts("info"))
    assert any("were being sent when the last lock stopped" in t for t in hook.texts("warning"))


@pytest.mark.anyio
async def test_budget_stops_before_a_chat_request(tmp_path: Path) -> None:
    """A budget the chat call's estimate would pass stops the lock before sending."""
    spec = job(tmp_path, extra="limits:\n  budget: 0.0001\nprices:\n  nano-banana-fast: 0")
    async with running_simulator(sim_config()) as sim:
        with pytest.raises(GenerationError, match="budget") as caught:
            await lock(spec, sim)
        assert chats(sim) == 0
    assert caught.value.code == "budget"


def test_lock_cli_with_the_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`batchgen lock SPEC --sim` writes the simulator's own lock, which only --sim reads."""
    spec = job(tmp_path, count=5)
    assert main(["lock", str(spec), "--sim"]) == 0
    out = capsys.readouterr().out
    assert "axis 'subject': 5 values by gemini-3.1-pro-preview in 1 chat request(s)" in out
    assert (tmp_path / "job.sim.lock.yaml").exists()
    assert not (tmp_path / "job.lock.yaml").exists()
    assert main(["validate", str(spec)]) == 0
    assert "not locked yet" in capsys.readouterr().out
    assert main(["plan", str(spec), "--sim"]) == 0
    assert "subject: 5 values by gemini-3.1-pro-preview, locked" in capsys.readouterr().out
    assert main(["lock", str(spec), "--sim"]) == 0
    assert "nothing to lock" in capsys.readouterr().out
    assert main(["plan", str(spec), "--json"]) == 2
    assert "not locked yet: run `batchgen lock" in capsys.readouterr().err


# --- generated axes and many processes ------------------------------------------------------


@pytest.mark.anyio
async def test_shards_need_the_lock_first_then_share_it(tmp_path: Path) -> None:
    """A shard of an unlocked spec is refused before anything is asked or written (each
    shard would ask for its own values); once `lock` has written the lock (and its chat
    call in the job's ledger), two shards run the same matrix between them."""
    from batchgen.ledger.paths import Shard, job_ledgers

    spec = job(tmp_path, count=6)
    async with running_simulator(sim_config()) as sim:
        with pytest.raises(UsageError, match="run `batchgen lock"):
            await run_job(spec, sim, shard=Shard(0, 2))
        assert chats(sim) == 0
        assert not job_ledgers(load_spec(spec))
        await lock(spec, sim)
        summaries = [await run_job(spec, sim, shard=Shard(i, 2)) for i in range(2)]
        assert chats(sim) == 1
    assert sum(s.counts["done"] for s in summaries) == 12
    assert [s for s, _ in job_ledgers(load_spec(spec))] == [None, Shard(0, 2), Shard(1, 2)]
    # The dataset card of a sharded job reads every shard (and the lock's ledger).
    from batchgen.ledger.report import export_card

    card = await export_card(load_spec(spec))
    rows = (card.parent / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 12
    assert "12 done" in card.read_text(encoding="utf-8")


@pytest.mark.anyio
async def test_lock_is_refused_while_a_run_holds_the_job(tmp_path: Path) -> None:
    """`batchgen lock` spends credit, so it takes the job's lease like a run: while
    another process holds it the lock is refused and no chat request is sent."""
    from batchgen.errors import LeaseHeldError
    from batchgen.ledger.lease import hold

    spec = job(tmp_path, count=4)
    async with running_simulator(sim_config()) as sim:
        async with (
            Ledger.open(ledger_path(load_spec(spec))) as ledger,
            hold(ledger, command="batchgen run"),
        ):
            with pytest.raises(LeaseHeldError):
                await lock(spec, sim)
        assert chats(sim) == 0
        await lock(spec, sim)
        assert chats(sim) == 1
