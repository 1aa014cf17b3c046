"""Planning output: batchgen.spec.plan (summaries, tables, JSON lines, the JSON Schema)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import expand
from batchgen.spec.plan import (
    PlanSummary,
    format_plan,
    plan_json_lines,
    plan_summary,
    spec_json_schema,
    validate_summary,
)

ROOT = Path(__file__).resolve().parent.parent


def load(tmp_path: Path, text: str) -> Spec:
    """Load ``text`` as a spec written in ``tmp_path``."""
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


GRID = """\
version: 1
prompt: "a {subject}"
matrix:
  model: [nano-banana-fast, nano-banana-pro]
  aspect_ratio: ["1:1", "16:9", "9:16"]
  subject: [cat, dog]
  exclude:
    - model: nano-banana-pro
      aspect_ratio: "9:16"
"""


def test_validate_summary_of_quickstart(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate's one line names the file, the count with its factors and the cost."""
    monkeypatch.chdir(ROOT)
    spec = load_spec("jobs/quickstart.yaml")
    assert validate_summary(spec) == (
        "jobs/quickstart.yaml: ok, 8 tasks (2 models \u00d7 2 ratios \u00d7 2 subjects), "
        "est. 0.46 CNY"
    )


def test_validate_summary_shows_exclusions_variants_and_warnings(tmp_path: Path) -> None:
    """Excluded and added combinations, variants and the warning count are in the line."""
    spec = load(
        tmp_path,
        GRID.replace("version: 1\n", "version: 1\nrepeat: 2\n")
        + "  include:\n    - {model: brand-new, subject: eel}\n",
    )
    line = validate_summary(spec)
    assert (
        "22 tasks ((2 models \u00d7 3 ratios \u00d7 2 subjects \u2212 2 excluded + 1 included)"
        in line
    )
    assert "\u00d7 2 variants)" in line
    assert line.endswith(", 1 warning")


def test_plan_summary_counts_per_value(tmp_path: Path) -> None:
    """Each variable's values are counted over all tasks, in first-seen order."""
    summary = plan_summary(load(tmp_path, GRID))
    axes = {axis.name: dict(axis.values) for axis in summary.axes}
    assert summary.total == 10
    assert axes["model"] == {"nano-banana-fast": 6, "nano-banana-pro": 4}
    assert axes["aspect_ratio"] == {"1:1": 4, "16:9": 4, "9:16": 2}
    assert axes["subject"] == {"cat": 5, "dog": 5}
    assert summary.cost_total == pytest.approx(6 * DEFAULT_PRICES["nano-banana-fast"] + 4 * 0.198)


def test_plan_summary_with_done_keys(tmp_path: Path) -> None:
    """Tasks whose keys are done are counted as done and left out of the cost to run."""
    spec = load(tmp_path, GRID)
    tasks = list(expand(spec))
    done = {t.key for t in tasks if t.model == "nano-banana-pro"}
    summary = plan_summary(spec, done_keys=done)
    assert (summary.total, summary.done, summary.to_run) == (10, 4, 6)
    assert summary.cost_to_run == pytest.approx(6 * DEFAULT_PRICES["nano-banana-fast"])
    assert "6 to run" in format_plan(summary)


def test_duration_at_rate_limit(tmp_path: Path) -> None:
    """With requests_per_minute set, the duration is the submissions at that rate plus a latency."""
    spec = load(tmp_path, GRID + "limits: {requests_per_minute: 6, concurrency: 100}\n")
    summary = plan_summary(spec)
    assert summary.seconds == pytest.approx(9 * 10 + 30)
    assert summary.rate_note == "(at 6 requests/min)"


def test_duration_with_unknown_rate(tmp_path: Path) -> None:
    """Without a rate, the estimate uses concurrency and ~30 s per image, and says so."""
    summary = plan_summary(load(tmp_path, GRID + "limits: {concurrency: 4}\n"))
    assert summary.seconds == pytest.approx(3 * 30)
    assert "unknown rate: the runner will discover it" in summary.rate_note


def test_format_plan_table(tmp_path: Path) -> None:
    """The table lists values with counts, then tasks, cost (with budget) and duration."""
    text = format_plan(plan_summary(load(tmp_path, GRID + "limits: {budget: 0.5}\n")))
    lines = text.splitlines()
    assert lines[0].endswith("job (route: generate)")
    assert any(line.split() == ["model", "nano-banana-fast", "6"] for line in lines)
    assert any(line.split() == ["9:16", "2"] for line in lines)
    assert "tasks     10 in all, 0 done, 10 to run" in lines
    assert any("budget 0.5 CNY (the run will stop at the budget)" in line for line in lines)
    assert lines[-2].startswith("duration  ~")


def test_format_plan_folds_long_value_lists(tmp_path: Path) -> None:
    """A variable with many values shows the first few and a count of the rest."""
    (tmp_path / "p.txt").write_text("\n".join(f"prompt {i}" for i in range(80)) + "\n")
    spec = load(tmp_path, "version: 1\nmodel: m\nmatrix:\n  prompt: {from: p.txt}\n")
    summary = plan_summary(spec)
    prompt = next(axis for axis in summary.axes if axis.name == "prompt")
    assert len(prompt.values) == 50
    assert (prompt.more_values, prompt.more_tasks) == (30, 30)
    assert "… 68 more values" in format_plan(summary)


def test_format_plan_counts_the_values_not_shown_not_their_tasks(tmp_path: Path) -> None:
    """Under a variable whose 100 values each recur in 300 tasks, the "more values" line
    gives the 88 values not shown, then the 26,400 tasks that have them."""
    axes = "".join(
        f"  {name}: [{', '.join(f'{name}{i}' for i in range(count))}]\n"
        for name, count in (("a", 100), ("b", 100), ("c", 3))
    )
    spec = load(
        tmp_path,
        'version: 1\nmodel: nano-banana-fast\nprompt: "{a} {b} {c}"\n'
        f"limits: {{max_tasks: 30000}}\nmatrix:\n{axes}",
    )
    lines = format_plan(plan_summary(spec)).splitlines()
    assert "tasks     30,000 in all, 0 done, 30,000 to run" in lines
    more = [line.split() for line in lines if "more values" in line]
    assert more == [["…", "88", "more", "values", "26,400"]] * 2  # a and b; c shows all 3


def test_plan_json_lines(tmp_path: Path) -> None:
    """--json gives one object per task with key, vars, rendered prompt and exact request."""
    spec = load(tmp_path, GRID)
    lines = list(plan_json_lines(spec))
    assert len(lines) == spec.task_count
    first = json.loads(lines[0])
    task = next(expand(spec))
    assert first["key"] == task.key
    assert first["vars"] == {
        "model": "nano-banana-fast",
        "aspect_ratio": "1:1",
        "image_size": "1K",
        "subject": "cat",
    }
    assert first["prompt"] == "a cat"
    assert first["request"] == task.request
    assert all("\n" not in line for line in lines)


def test_planning_never_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The library returns text; only the CLI prints."""
    spec = load(tmp_path, GRID)
    format_plan(plan_summary(spec))
    list(plan_json_lines(spec))
    validate_summary(spec)
    assert capsys.readouterr() == ("", "")


def test_plan_summary_is_a_value() -> None:
    """PlanSummary is a frozen dataclass."""
    assert PlanSummary.__dataclass_params__.frozen  # type: ignore[attr-defined]


# --- schema --------------------------------------------------------------------------------


def test_schema_header_and_shape() -> None:
    """The schema declares its draft and title, requires version and forbids unknown keys."""
    schema = spec_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "batchgen job spec (version 1)"
    assert schema["required"] == ["version"]
    assert schema["additionalProperties"] is False
    assert "oneOf" not in json.dumps(schema)  # ints are also numbers: anyOf, never oneOf


def test_schema_describes_every_field() -> None:
    """Every property of every object in the schema has a description for editors."""
    schema = spec_json_schema()
    missing = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if "description" not in prop:
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(schema, "#")
    assert missing == []


def test_shipped_schema_matches_command_output() -> None:
    """jobs/batchgen.schema.json is exactly what `batchgen schema` prints."""
    shipped = (ROOT / "jobs" / "batchgen.schema.json").read_text(encoding="utf-8")
    assert shipped == json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"
