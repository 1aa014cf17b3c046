"""Generated axes in the spec and their lockfile: batchgen.spec.lock (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.errors import SpecError
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.lock import (
    LockedAxis,
    asked_digest,
    dump_lock,
    lock_path,
    read_lock,
    write_lock,
)
from batchgen.spec.matrix import expand
from batchgen.spec.plan import format_plan, plan_summary, validate_summary

SPEC = """\
version: 1
model: nano-banana-fast
prompt: "A studio photo of {subject}, {light}"
matrix:
  subject:
    generate:
      model: gemini-3.1-pro-preview
      count: 3
      instruction: "Everyday objects, one per line"
  light: [soft light, hard light]
"""
INSTRUCTION = "Everyday objects, one per line"


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    """Write the spec as job.yaml in ``tmp_path``; return its path."""
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def locked(
    values: tuple[str, ...], *, instruction: str = INSTRUCTION, count: int = 3
) -> LockedAxis:
    """A locked ``subject`` axis asked with ``instruction`` and ``count``."""
    model = "gemini-3.1-pro-preview"
    return LockedAxis(
        name="subject",
        model=model,
        instruction=instruction,
        count=count,
        asked=asked_digest(model, instruction, count),
        values=values,
        generated_at="2026-12-01T10:00:00Z",
        requests=1,
        request_ids=("sim0000000001abc",),
        prompt_tokens=40,
        completion_tokens=12,
        cost=0.0012,
        currency="CNY",
        cost_source="usage",
    )


def lock(spec_path: Path, *axes: LockedAxis, simulated: bool = False) -> Path:
    """Write a lockfile for ``spec_path`` holding ``axes``; return its path."""
    path = lock_path(spec_path, simulated=simulated)
    write_lock(path, spec_path.name, axes)
    return path


def test_unlocked_axis_counts_and_warns(tmp_path: Path) -> None:
    """Without a lock the spec loads with a warning and counts `count` values per axis."""
    spec = load_spec(write_spec(tmp_path))
    assert spec.task_count == 6
    assert [g.state for g in spec.generated] == ["missing"]
    assert spec.unlocked
    assert not spec.stale
    assert any("not locked yet" in w.message for w in spec.warnings)
    assert "subject: 3 values by gemini-3.1-pro-preview, not locked yet" in validate_summary(spec)
    assert spec.lock_path == tmp_path / "job.lock.yaml"


def test_unlocked_axis_never_expands(tmp_path: Path) -> None:
    """expand() refuses placeholders, naming the command that locks the axis."""
    spec = load_spec(write_spec(tmp_path))
    with pytest.raises(SpecError) as caught:
        list(expand(spec))
    assert "batchgen lock" in str(caught.value)
    assert caught.value.issues[0].line == 5


def test_plan_of_an_unlocked_axis_collapses_its_values(tmp_path: Path) -> None:
    """plan counts the tasks of an axis not generated yet on one line, and says so."""
    summary = plan_summary(load_spec(write_spec(tmp_path)))
    subject = next(a for a in summary.axes if a.name == "subject")
    assert subject.values == (("(3 values to generate)", 6),)
    assert "generated subject: 3 values by gemini-3.1-pro-preview, not locked" in format_plan(
        summary
    )


def test_locked_values_fill_the_axis(tmp_path: Path) -> None:
    """With a fresh lock the axis takes the lock's values, and tasks are planned from them."""
    path = write_spec(tmp_path)
    lock(path, locked(("a teapot", "a lamp", "a boot")))
    spec = load_spec(path)
    assert [g.state for g in spec.generated] == ["locked"]
    assert not spec.warnings
    prompts = [t.prompt for t in expand(spec)]
    assert prompts[0] == "A studio photo of a teapot, soft light"
    assert len(prompts) == 6
    assert "3 values by gemini-3.1-pro-preview, locked, 2026-12-01" in validate_summary(spec)


def test_keys_follow_the_values(tmp_path: Path) -> None:
    """The same values give the same keys; a changed value changes that value's keys only."""
    path = write_spec(tmp_path)
    lock(path, locked(("a teapot", "a lamp", "a boot")))
    first = {t.prompt: t.key for t in expand(load_spec(path))}
    digest = load_spec(path).digest
    lock(path, locked(("a teapot", "a lamp", "a kettle")))
    second = {t.prompt: t.key for t in expand(load_spec(path))}
    teapot = "A studio photo of a teapot, soft light"
    assert first[teapot] == second[teapot]
    assert "A studio photo of a boot, soft light" not in second
    assert load_spec(path).digest != digest


def test_changed_instruction_makes_the_lock_stale(tmp_path: Path) -> None:
    """An edited instruction keeps the old values for reading, warns, and refuses to run."""
    path = write_spec(tmp_path, SPEC.replace("Everyday objects", "Kitchen tools"))
    lock(path, locked(("a teapot", "a lamp", "a boot")))
    spec = load_spec(path)
    assert [(g.state, g.changed) for g in spec.stale] == [("stale", ("instruction",))]
    assert any("stale" in w.message and "--refresh subject" in w.message for w in spec.warnings)
    assert len(list(expand(spec))) == 6  # status, export and the gallery still work
    with pytest.raises(SpecError) as caught:
        spec.require_locked()
    assert "stale (instruction changed)" in str(caught.value)


def test_changed_count_makes_the_lock_stale(tmp_path: Path) -> None:
    """Asking for another number of values is a stale lock too."""
    path = write_spec(tmp_path, SPEC.replace("count: 3", "count: 4"))
    lock(path, locked(("a teapot", "a lamp", "a boot")))
    assert [g.changed for g in load_spec(path).stale] == [("count",)]


def test_curated_lock_is_used_with_a_warning(tmp_path: Path) -> None:
    """A value removed by hand keeps the lock fresh; the shortfall is a warning."""
    path = write_spec(tmp_path)
    lock(path, locked(("a teapot", "a lamp")))
    spec = load_spec(path)
    assert spec.task_count == 4
    assert any("holds 2 values" in w.message for w in spec.warnings)


def test_values_round_trip_as_text(tmp_path: Path) -> None:
    """Values that YAML could read as numbers, booleans or null come back as written."""
    tricky = ("yes", "1e3", "16:9", "null", "0x1F", "- dash", "# hash", "ünïcode ✓")
    path = write_spec(tmp_path, SPEC.replace("count: 3", f"count: {len(tricky)}"))
    lock(path, locked(tricky, count=len(tricky)))
    spec = load_spec(path)
    assert spec.matrix.axes[0].values[4].values == ("0x1F",)
    assert [v.values[0] for v in spec.matrix.axes[0].values] == list(tricky)


def test_lock_problems_are_reported_at_their_lines(tmp_path: Path) -> None:
    """A duplicate value in a hand-edited lock is an error at its line in the lockfile."""
    path = write_spec(tmp_path)
    text = dump_lock("job.yaml", [locked(("a teapot", "a lamp", "a teapot"))])
    lock_path(path).write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    issue = next(i for i in caught.value.issues if i.severity == "error")
    assert issue.file.endswith("job.lock.yaml")
    assert "duplicate value" in issue.message
    assert text.splitlines()[issue.line - 1].strip() == '- "a teapot"'


def test_not_a_lockfile(tmp_path: Path) -> None:
    """A lockfile of another version is refused with the way out."""
    path = write_spec(tmp_path)
    lock_path(path).write_text("version: 9\naxes: {}\n", encoding="utf-8")
    with pytest.raises(SpecError, match="not a batchgen lockfile"):
        load_spec(path)


def test_sim_lock_is_apart(tmp_path: Path) -> None:
    """The simulator's values live in <stem>.sim.lock.yaml and never fill a real run's axis."""
    path = write_spec(tmp_path)
    lock(path, locked(("a teapot", "a lamp", "a boot")), simulated=True)
    assert load_spec(path).unlocked
    sim = load_spec(path, simulated=True)
    assert not sim.unlocked
    assert sim.lock_path == tmp_path / "job.sim.lock.yaml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SPEC.replace("  subject:\n", "  model:\n").replace("{subject}", "x"), "not 'model'"),
        (SPEC + "  exclude:\n    - subject: a teapot\n", "'subject' is a generated axis"),
        (SPEC.replace("count: 3", "count: 0"), "should be at least 1"),
        (SPEC.replace("      count: 3\n", ""), "missing key 'count'"),
    ],
    ids=["request-field", "exclude", "count-zero", "no-count"],
)
def test_generated_axis_errors(tmp_path: Path, text: str, message: str) -> None:
    """Generated axes refuse request fields, include/exclude keys and bad counts."""
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, text))
    assert any(message in i.message for i in caught.value.issues), caught.value.issues


def test_read_lock_of_a_missing_file(tmp_path: Path) -> None:
    """No lockfile reads as None, not as an error."""
    assert read_lock(tmp_path / "none.lock.yaml", "none.lock.yaml") is None


def test_spec_fields_default(tmp_path: Path) -> None:
    """A spec without generated axes has none, and saves images unchanged by default."""
    spec: Spec = load_spec(write_spec(tmp_path, "version: 1\nmodel: m\nprompt: a cat\n"))
    assert spec.generated == ()
    assert spec.embed == "none"
