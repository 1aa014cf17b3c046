"""The ``batchgen`` command in-process: ``main(argv)``, its output and its exit codes.

Commands that talk to a service run against a simulator served from its own thread
(``main`` runs its own event loop). Exit codes: 0 all done, 1 some failed or unknown,
2 bad spec or usage, 3 authentication or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchgen import __version__
from batchgen.cli import build_parser, main
from batchgen.ledger.schema import TaskState
from batchgen.sim import SimServer
from batchgen.sim.wire import Request
from tests.runner_helpers import (
    GRID,
    RecordingHook,
    ledger_rows,
    output_dir,
    run_job,
    sim_config,
    stats,
    subjects_spec,
    threaded_simulator,
    truncate_first_downloads,
    write_spec,
)

REPO = Path(__file__).resolve().parents[1]
BAD_SPECS = REPO / "tests" / "bad_specs"
#: The commands the runner's issue asks for; the parser may offer more (``gallery``).
CORE_COMMANDS = ("run", "validate", "plan", "schema", "status", "retry", "export", "sim")
ISSUE_LINE = re.compile(r"^.+:\d+:\d+: .+$")
_LOGGERS = ("", "batchgen", "httpx2", "httpcore2", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging for a terminal; put every logger back after each test."""
    saved = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
        for name in _LOGGERS
    }
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """A fast simulator in its own thread (key ``sk-sim``)."""
    with threaded_simulator(sim_config()) as server:
        yield server


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """COBABA_API_KEY set to the simulator's key; COBABA_BASE_URL unset."""
    monkeypatch.setenv("COBABA_API_KEY", "sk-sim")
    monkeypatch.delenv("COBABA_BASE_URL", raising=False)


def _run_sync(spec: Path, sim: SimServer, **changes: Any) -> Any:
    """Run the job through the library (fast first poll) from a sync test."""
    return anyio.run(lambda: run_job(spec, sim, **changes), backend="asyncio")


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text
    assert 'File "' not in text


# --- validate, plan, schema --------------------------------------------------------------


def test_validate_ok_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on a good spec prints one summary line and exits 0."""
    spec = write_spec(tmp_path, GRID)
    assert main(["validate", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    assert ": ok, 12 tasks" in out
    assert err == ""


def test_validate_bad_reports_every_error_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` on a bad spec prints every problem as FILE:LINE:COL: message and exits 2."""
    spec = write_spec(
        tmp_path,
        """
        name: bad
        promt: "a {subject}"
        model: nano-banana-fast
        matrix:
          subject: [cat, cat]
        limits:
          concurrency: four
        """,
    )
    assert main(["validate", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) >= 2
    for line in lines:
        assert ISSUE_LINE.match(line), line
        assert line.startswith(str(spec) + ":")
    assert any(":3:1: unknown key 'promt'" in line for line in lines)
    assert any("limits.concurrency" in line for line in lines)
    _no_traceback(err)


@pytest.mark.parametrize(
    "bad", sorted(p.name for p in BAD_SPECS.glob("*.yaml")), ids=lambda name: name[:-5]
)
def test_validate_reports_the_bad_spec_corpus(
    bad: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every spec of tests/bad_specs exits 2 with positioned messages and no traceback."""
    monkeypatch.chdir(REPO)
    path = f"tests/bad_specs/{bad}"
    head = (REPO / path).read_text(encoding="utf-8").splitlines()[0]
    assert main(["validate", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip()
    for line in err.splitlines():
        assert ISSUE_LINE.match(line), line
    expect = re.match(r"# expect: (?:(\S+):)?(\d+): (.*)$", head)
    if expect:
        line_no, message = expect.group(2), expect.group(3)
        assert f":{line_no}:" in err
        assert message.split(" (")[0][:40] in err
    _no_traceback(err)


def test_plan_prints_counts_and_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan` shows the tasks to run and an estimate, and exits 0."""
    spec = write_spec(tmp_path, GRID)
    assert main(["plan", str(spec)]) == 0
    out, _ = capsys.readouterr()
    assert "12" in out
    assert "CNY" in out


def test_plan_json_prints_one_object_per_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --json` prints one JSON object per task with its key, vars, prompt and request."""
    spec = write_spec(tmp_path, GRID)
    assert main(["plan", "--json", str(spec)]) == 0
    out, _ = capsys.readouterr()
    tasks = [json.loads(line) for line in out.splitlines()]
    assert len(tasks) == 12
    assert len({t["key"] for t in tasks}) == 12
    for task in tasks:
        assert re.fullmatch(r"[0-9a-f]{32}", task["key"])
        assert task["vars"]["subject"] in ("cat", "dog", "owl")
        assert task["prompt"] == f"a photo of {task['vars']['subject']}"
        assert task["request"]["prompt"] == task["prompt"]
        assert task["request"]["model"] == task["vars"]["model"]


def test_plan_json_keys_are_the_keys_the_runner_records(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The keys `plan --json` shows are the keys of the ledger after a run."""
    spec = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    assert main(["plan", "--json", str(spec)]) == 0
    planned = {json.loads(line)["key"] for line in capsys.readouterr().out.splitlines()}
    _run_sync(spec, sim)
    rows = anyio.run(ledger_rows, spec, backend="asyncio")
    assert {r.key for r in rows} == planned


def test_schema_is_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`schema` prints a JSON Schema object."""
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert isinstance(schema, dict)
    assert "properties" in schema
    assert "version" in schema["properties"]


# --- run -----------------------------------------------------------------------------------


def test_run_json_ends_with_a_summary_line(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --json` prints JSON lines on stdout, the last one the summary event."""
    spec = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    assert main(["run", "--json", "--base-url", sim.base_url, str(spec)]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "summary"
    assert events[-1]["exit_code"] == 0
    assert events[-1]["counts"]["done"] == 3
    _no_traceback(err)
    assert stats(sim)["submissions_charged"] == 3


def test_run_json_prints_every_event_to_the_current_stdout(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --json` writes all its JSON lines (start, progress, summary) to sys.stdout as it
    is when main() runs."""
    spec = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    assert main(["run", "--json", "--base-url", sim.base_url, str(spec)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start"
    assert events[0]["total"] == 3
    assert events[-1]["event"] == "summary"
    assert all(e["event"] in ("start", "progress", "message", "summary") for e in events)


def test_run_quiet_prints_the_summary_and_no_progress(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --quiet` prints the summary on stdout and nothing on stderr when all goes well."""
    spec = subjects_spec(tmp_path, ["cat", "dog"])
    assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "2 done of 2 task(s)" in out
    assert f"output: {output_dir(spec)}" in out


def test_run_with_failures_exits_1_and_says_what_next(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that leaves failed tasks exits 1, lists failures by code and suggests retry."""
    spec = subjects_spec(tmp_path, ["cat", "dog [sim:fail=output_moderation]"])
    assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 1
    out, _ = capsys.readouterr()
    assert "failures by code: output_moderation 1" in out
    assert "batchgen retry SPEC --failed" in out


def test_run_with_a_lost_answer_warns_about_unknown_tasks(
    tmp_path: Path, sim: SimServer, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that leaves a task unknown exits 1 and says it may have been charged, pointing
    at `status` and `retry --unknown`."""
    spec = subjects_spec(tmp_path, ["cat"])
    sim.config.drop_rate = 1.0
    assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 1
    out, _ = capsys.readouterr()
    assert "1 unknown of 1 task(s)" in out
    assert "unknown tasks may have been charged" in out
    assert "retry SPEC --unknown" in out
    assert stats(sim)["submissions_charged"] == 1


def test_run_without_a_key_exits_3_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with COBABA_API_KEY unset exits 3 with one clear line and touches nothing."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = subjects_spec(tmp_path, ["cat"])
    assert main(["run", str(spec)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert "COBABA_API_KEY" in lines[0]
    assert "--sim" in lines[0]
    assert not output_dir(spec).exists()


def test_run_with_a_refused_key_exits_3_with_one_line(
    tmp_path: Path,
    sim: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key the service refuses ends `run` with exit 3, one line on stderr, no traceback,
    and nothing written: the preflight refuses it before the ledger is opened."""
    monkeypatch.setenv("COBABA_API_KEY", "sk-wrong-0123456789abcdef")
    spec = subjects_spec(tmp_path, ["cat", "dog"])
    assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "401" in err
    assert "0123456789abcdef" not in err
    _no_traceback(err)
    assert not (tmp_path / "out" / "batchgen.sqlite").exists()


def test_run_sim_needs_no_key_and_writes_beside_the_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --sim` works without COBABA_API_KEY and writes under <output>-sim only."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = subjects_spec(tmp_path, ["cat", "dog"])
    argv = ["run", "--sim", "--sim-latency", "0.05", "--quiet", str(spec)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    real = output_dir(spec)
    simulated = real.with_name(real.name + "-sim")
    assert not real.exists()
    assert len(list(simulated.rglob("*.png"))) == 2
    assert (simulated / "batchgen.sqlite").is_file()
    assert "2 done of 2" in out
    _no_traceback(err)
    assert main(["status", "--sim", "--json", str(spec)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["done"] == 2


def test_ctrl_c_during_run_exits_130_and_a_rerun_finishes(
    tmp_path: Path, keyed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT during `run` stops it gracefully (exit 130, how to resume); running it again
    finishes the job without paying twice."""
    spec = subjects_spec(tmp_path, [f"s{i}" for i in range(8)], limits="concurrency: 2")
    with threaded_simulator(sim_config()) as sim:
        files = sim.app.files
        original = files.download

        async def interrupt_at_first_download(req: Request) -> None:
            if not getattr(files, "interrupted", False):
                files.interrupted = True  # type: ignore[attr-defined]
                os.kill(os.getpid(), signal.SIGINT)
            await original(req)

        files.download = interrupt_at_first_download  # type: ignore[method-assign]
        assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 130
        out, _ = capsys.readouterr()
        assert "interrupted: run `batchgen run" in out
        first = stats(sim)["submissions_charged"]
        assert first < 8
        assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 0
        after = stats(sim)
    assert after["submissions_charged"] == 8


# --- status, retry, export -------------------------------------------------------------------


def _job_with_failures(tmp_path: Path, sim: SimServer) -> Path:
    """A finished job: 2 done, 1 failed (error), 1 failed (moderation), 1 unknown."""
    spec = subjects_spec(
        tmp_path,
        ["cat", "dog", "owl [sim:fail=error]", "emu [sim:fail=output_moderation]", "yak"],
        limits="max_attempts: 1\nconcurrency: 1",
    )

    def drop_the_last() -> None:
        sim.config.drop_rate = 1.0

    hook = RecordingHook()
    hook.on(lambda s: s.accepted >= 4, drop_the_last)
    summary = _run_sync(spec, sim, hook=hook)
    sim.config.drop_rate = 0.0
    assert summary.counts == {**summary.counts, "done": 2, "failed": 2, "unknown": 1}
    return spec


def test_status_json_counts_every_state(
    tmp_path: Path, sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` has a count for every state (unknown included) and failures by code."""
    spec = _job_with_failures(tmp_path, sim)
    assert main(["status", "--json", str(spec)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status["counts"]) == {s.value for s in TaskState}
    assert status["counts"]["unknown"] == 1
    assert status["counts"]["done"] == 2
    assert status["failures_by_code"] == {"error": 1, "output_moderation": 1, "connection_lost": 1}
    assert status["tasks"] == 5
    assert main(["status", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "unknown" in text
    assert "failures by code:" in text


def test_status_before_any_run_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` of a job that never ran says so in one line (exit 3), without creating files."""
    spec = subjects_spec(tmp_path, ["cat"])
    assert main(["status", str(spec)]) == 3
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1
    assert "nothing has run yet" in err
    assert not output_dir(spec).exists()


def test_retry_by_code_then_failed_then_unknown(
    tmp_path: Path, sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retry --code` marks only that code's failures, `--failed` the rest, `--unknown` the
    unknown; each next run submits exactly what was marked."""
    spec = _job_with_failures(tmp_path, sim)
    charged = stats(sim)["submissions_charged"]

    assert main(["retry", "--failed", "--code", "output_moderation", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "failed: 1 to resubmit" in out
    assert "next: batchgen run" in out
    summary = _run_sync(spec, sim)
    assert stats(sim)["submissions_charged"] == charged + 1
    assert summary.counts["failed"] == 2  # moderation again, and the error one untouched

    assert main(["retry", str(spec)]) == 0  # --failed is the default
    assert "failed: 2 to resubmit" in capsys.readouterr().out
    _run_sync(spec, sim)
    assert stats(sim)["submissions_charged"] == charged + 3

    assert main(["retry", "--unknown", str(spec)]) == 0
    assert "unknown: 1 to resubmit" in capsys.readouterr().out
    summary = _run_sync(spec, sim)
    assert summary.counts["unknown"] == 0
    assert summary.counts["done"] == 3
    assert stats(sim)["submissions_charged"] == charged + 4


def test_export_jsonl_and_csv_list_every_task(
    tmp_path: Path, sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export` writes every task with its state and result, as JSON lines or as CSV."""
    spec = _job_with_failures(tmp_path, sim)
    assert main(["export", "--format", "jsonl", str(spec)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5
    assert {r["state"] for r in rows} == {"done", "failed", "unknown"}
    for row in rows:
        assert {"key", "prompt", "vars", "sha256", "path", "error_code"} <= set(row)
        if row["state"] == "done":
            assert (output_dir(spec) / row["path"]).is_file()

    target = tmp_path / "tasks.csv"
    assert main(["export", "--format", "csv", "-o", str(target), str(spec)]) == 0
    table = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    assert json.loads(table[0]["vars"])["subject"] == "cat"


# --- help, README, version -------------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)  # command name -> its parser
    return {name: sub.choices[name] for name in sorted(sub.choices)}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]


COMMANDS = tuple(_subparsers())
_README = REPO / "README.md"


def _sections(text: str) -> dict[str, str]:
    """README sections by their GitHub anchor: heading to the next heading of its level."""
    lines = text.splitlines()
    headings: list[tuple[int, int, str]] = []  # line, level, anchor
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#+) (.*)", line)):
            anchor = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
            headings.append((i, len(m.group(1)), anchor))
    sections = {}
    for n, (start, level, anchor) in enumerate(headings):
        end = next((i for i, lv, _ in headings[n + 1 :] if lv <= level), len(lines))
        sections[anchor] = "\n".join(lines[start:end])
    return sections


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _missing_from_readme(readme: Path = _README, section: str = "commands") -> list[str]:
    """Each command without its row in the README's Commands table, each option its row
    (or a section the row links to) does not name, each top-level option not named in
    the Commands section (``section``: the anchor of that section in ``readme``)."""
    if not readme.is_file():
        return [readme.name]
    sections = _sections(readme.read_text(encoding="utf-8"))
    commands = sections.get(section, "")
    missing = [o for o in _options(build_parser()) if not _mentions(commands, o)]
    for name, parser in _subparsers().items():
        row = next(
            (line for line in commands.splitlines() if re.match(rf"\| `batchgen {name}[ `]", line)),
            None,
        )
        if row is None:
            missing.append(f"batchgen {name}")
            continue
        linked = [sections.get(anchor, "") for anchor in re.findall(r"\]\(#([\w-]+)\)", row)]
        text = "\n".join([row, *linked])
        missing.extend(f"batchgen {name} {o}" for o in _options(parser) if not _mentions(text, o))
    return missing


def test_every_core_command_is_known_to_the_parser() -> None:
    """The parser offers every command the runner needs."""
    assert set(CORE_COMMANDS) <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`batchgen COMMAND --help` prints usage and exits 0."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: batchgen {command}")


def test_top_level_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` exits 0; no command or an unknown option is a usage error (exit 2)."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"    {c} " in out for c in COMMANDS)
    assert main([]) == 2
    assert main(["run", "--no-such-flag", "x.yaml"]) == 2
    _, err = capsys.readouterr()
    _no_traceback(err)


def test_every_command_is_in_the_readme() -> None:
    """README.md's Commands section documents every command and every option of the parser."""
    assert _missing_from_readme() == []


def test_python_m_batchgen_version() -> None:
    """`python -m batchgen --version` prints the version and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "batchgen", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"batchgen {__version__}"


# --- the key never leaks -----------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.append(repr(record.exc_info[1]))


def test_the_key_never_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A canary key used through a run full of faults, then status, retry and export,
    appears in no file of the job, no output and no log record."""
    canary = "sk-canary-" + os.urandom(12).hex()
    secret_part = canary.removeprefix("sk-")
    monkeypatch.setenv("COBABA_API_KEY", canary)
    monkeypatch.delenv("COBABA_BASE_URL", raising=False)
    records = _Records()
    for name in ("batchgen", "httpx2", "httpcore2"):
        logging.getLogger(name).addHandler(records)
    spec = subjects_spec(
        tmp_path,
        ["cat", "dog [sim:fail=error]", "owl [sim:fail=input_moderation]", "emu", "yak", "elk"],
        limits="max_attempts: 2",
    )
    config = sim_config(keys=[canary], busy_rate=0.2, error_rate=0.2, drop_rate=0.2)
    try:
        with threaded_simulator(config) as sim:
            truncate_first_downloads(sim, 2)
            argv = ["-vv", "run", "--json", "--base-url", sim.base_url, str(spec)]
            assert main(argv) == 1
            assert main(["-vv", "status", "--json", str(spec)]) == 0
            assert main(["-vv", "retry", "--failed", "--unknown", str(spec)]) == 0
            assert main(["-vv", "run", "--quiet", "--base-url", sim.base_url, str(spec)]) in (0, 1)
            assert main(["-vv", "export", "--format", "csv", str(spec)]) == 0
            seen = stats(sim)
    finally:
        for name in ("batchgen", "httpx2", "httpcore2"):
            logging.getLogger(name).removeHandler(records)
    assert seen["charges_by_key"]  # the canary really was used
    out, err = capsys.readouterr()
    assert records.lines
    for text in (out, err, "\n".join(records.lines)):
        assert canary not in text
        assert secret_part not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "batchgen.sqlite" for p in files)
    for path in files:
        data = path.read_bytes()
        assert canary.encode() not in data, path
        assert secret_part.encode() not in data, path


def test_shards_run_and_merge_from_the_command_line(
    tmp_path: Path,
    sim: SimServer,
    keyed: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run --shard`, a shard from BATCHGEN_SHARD, `status` over both shards, `merge`
    (text and JSON), and the one-line refusals: an unsharded run of a sharded job (2),
    a --from folder that is no shard output (3)."""
    monkeypatch.delenv("BATCHGEN_SHARD", raising=False)
    spec = subjects_spec(tmp_path, ["cat", "dog", "owl", "fox", "elk"])
    run = ["run", "--quiet", "--base-url", sim.base_url]
    assert main([*run, "--shard", "0/2", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "shard 0/2" in out
    assert "batchgen merge" in out
    assert not (output_dir(spec) / "metadata.jsonl").exists()
    monkeypatch.setenv("BATCHGEN_SHARD", "1/2")
    assert main([*run, str(spec)]) == 0
    assert "shard 1/2" in capsys.readouterr().out
    monkeypatch.delenv("BATCHGEN_SHARD")
    assert main(["status", str(spec)]) == 0
    status = capsys.readouterr().out
    assert "5 task(s) in 2 ledgers" in status
    assert main(["merge", str(spec)]) == 0
    assert "5 image(s) in" in capsys.readouterr().out
    assert main(["merge", "--json", str(spec)]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["images"] == 5
    assert merged["ledgers"] == 2
    rows = (output_dir(spec) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 5
    assert main([*run, str(spec)]) == 2
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1
    assert "--shard I/2" in err
    assert main(["merge", "--from", str(tmp_path / "nowhere"), str(spec)]) == 3
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1
    _no_traceback(err)
