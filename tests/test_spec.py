"""Loading and validating job specs: batchgen.spec and the corpus in tests/bad_specs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.errors import ConfigError, SpecError, SpecIssue
from batchgen.spec.load import DEFAULT_BASE_URL, Spec, load_spec
from batchgen.spec.matrix import expand

ROOT = Path(__file__).resolve().parent.parent
BAD_SPECS = Path(__file__).resolve().parent / "bad_specs"
# Specs only: a lockfile (<stem>.lock.yaml, or the simulator's) sits beside its spec.
SHIPPED = [
    ROOT / "jobs" / "quickstart.yaml",
    *sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.endswith(".lock.yaml")),
]
EXPECT = re.compile(r"#\s*expect:\s*(?:(?P<file>[^\s:]+):)?(?P<line>\d+):\s*(?P<message>.+)$")
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    """Write ``text`` as a file in ``tmp_path``; return its path."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> Spec:
    """Load ``text`` as a spec written in ``tmp_path``."""
    return load_spec(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]


def errors_of(tmp_path: Path, text: str) -> list[SpecIssue]:
    """The error issues of loading ``text`` (which must fail)."""
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    return [issue for issue in caught.value.issues if issue.severity == "error"]


# --- the corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(BAD_SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_spec_corpus(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad spec fails with its expected message fragments at the expected lines."""
    monkeypatch.chdir(ROOT)
    expectations = [m for line in path.read_text().splitlines() if (m := EXPECT.match(line))]
    assert expectations, f"{path.name} states no '# expect: LINE: message'"
    display = str(path.relative_to(ROOT))
    with pytest.raises(SpecError) as caught:
        load_spec(display)
    issues = caught.value.issues
    rendered = "\n".join(str(issue) for issue in issues)
    for expect in expectations:
        file = expect["file"] or display
        line = int(expect["line"])
        assert any(
            issue.file == file and issue.line == line and expect["message"] in issue.message
            for issue in issues
        ), f"expected {file}:{line}: {expect['message']}\ngot:\n{rendered}"
    spec_lines = [i.line for i in issues if i.file == display]
    assert spec_lines == sorted(spec_lines), "issues are sorted by line"


def test_errors_render_as_file_line_column(tmp_path: Path) -> None:
    """SpecError's message lists every error as FILE:LINE:COL: message."""
    path = write(tmp_path, "version: 1\nmodel: m\npromt: x\nlimits: {concurrency: 0}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == "2 errors in the job spec:"
    assert lines[1] == f"{path}:3:1: unknown key 'promt'; did you mean 'prompt'?"
    assert lines[2] == f"{path}:4:23: limits.concurrency: should be at least 1, got 0"


def test_api_key_is_never_echoed(tmp_path: Path) -> None:
    """A key in the spec is refused without its value appearing in any message."""
    secret = "sk-" + "Z9" * 12
    text = f"version: 1\nmodel: m\nprompt: '{secret}'\napi:\n  token: verysecretvalue123\n"
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    shown = str(caught.value) + "".join(str(issue) for issue in caught.value.issues)
    assert secret not in shown
    assert "verysecretvalue123" not in shown
    assert "looks like an API key" in shown
    assert "key 'token' is not allowed" in shown


# --- shipped specs -------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_specs_validate(path: Path) -> None:
    """Every spec in jobs/ and examples/ loads without errors and points at the schema."""
    spec = load_spec(path)
    assert spec.task_count > 0
    first = path.read_text().splitlines()[0]
    schema = (
        "batchgen.schema.json" if path.parent.name == "jobs" else "../jobs/batchgen.schema.json"
    )
    assert first == f"# yaml-language-server: $schema={schema}"


def test_quickstart_is_a_small_demo() -> None:
    """The demo job has 6 to 12 tasks over nano-banana-fast and one other priced model."""
    spec = load_spec(ROOT / "jobs" / "quickstart.yaml")
    assert 6 <= spec.task_count <= 12
    assert "nano-banana-fast" in spec.tasks_by_model
    assert set(spec.tasks_by_model) <= set(DEFAULT_PRICES)
    assert len(spec.tasks_by_model) == 2
    assert spec.output_dir == ROOT / "jobs" / "out" / "quickstart"
    assert not spec.warnings


# --- the Spec object -------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    """A minimal spec gets the documented defaults."""
    spec = load(tmp_path, "version: 1\nmodel: nano-banana\nprompt: a cat\n")
    assert spec.path == tmp_path / "job.yaml"
    assert spec.name == "job"
    assert spec.output_dir == tmp_path / "out" / "job"
    assert spec.layout == "{model}/{aspect_ratio}/{prompt}-{key8}.png"
    assert spec.endpoint == "generate"
    assert spec.base_url == DEFAULT_BASE_URL
    limits = spec.limits
    assert (limits.concurrency, limits.requests_per_minute, limits.burst) == (8, None, None)
    assert (limits.max_attempts, limits.task_timeout, limits.max_tasks) == (5, 3600, 10_000)
    assert (limits.budget, limits.resubmit_unknown) == (None, False)
    assert (limits.max_image_bytes, limits.max_retry_after) == (64 * 1024 * 1024, 600)
    assert spec.prices == DEFAULT_PRICES
    assert spec.task_count == 1
    assert spec.estimated_cost == pytest.approx(DEFAULT_PRICES["nano-banana"])
    assert re.fullmatch(r"[0-9a-f]{64}", spec.digest)


def test_relative_output_resolves_against_spec_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """output is relative to the spec's folder, whatever the working directory."""
    path = write(
        tmp_path, "version: 1\nmodel: m\nprompt: p\noutput: ../results/x\n", "sub/job.yaml"
    )
    monkeypatch.chdir(tmp_path.parent)
    assert load_spec(path).output_dir == tmp_path / "results" / "x"


def test_base_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument beats COBABA_BASE_URL, which beats api.base_url, which beats the default."""
    text = "version: 1\nmodel: m\nprompt: p\napi: {base_url: 'https://spec.example/v1/'}\n"
    monkeypatch.delenv("COBABA_BASE_URL", raising=False)
    assert load(tmp_path, text).base_url == "https://spec.example/v1"
    monkeypatch.setenv("COBABA_BASE_URL", "http://127.0.0.1:8787/v1")
    assert load(tmp_path, text).base_url == "http://127.0.0.1:8787/v1"
    assert (
        load(tmp_path, text, base_url="https://arg.example/v1").base_url == "https://arg.example/v1"
    )
    monkeypatch.setenv("COBABA_BASE_URL", "not a url")
    with pytest.raises(ConfigError, match="COBABA_BASE_URL is not an http"):
        load(tmp_path, text)


def test_max_tasks_argument_overrides_spec(tmp_path: Path) -> None:
    """load_spec(max_tasks=...) replaces limits.max_tasks (the --max-tasks option)."""
    text = "version: 1\nmodel: m\nprompt: '{a}'\nmatrix:\n  a: [1, 2, 3]\n"
    with pytest.raises(SpecError, match=r"3 tasks, more than limits\.max_tasks \(2\)"):
        load(tmp_path, text, max_tasks=2)
    assert load(tmp_path, text, max_tasks=3).limits.max_tasks == 3


def test_prices_merge_over_defaults(tmp_path: Path) -> None:
    """Spec prices override and extend the built-in price list."""
    spec = load(tmp_path, "version: 1\nmodel: m\nprompt: p\nprices: {m: 0.5, nano-banana: 1}\n")
    assert spec.prices["m"] == 0.5
    assert spec.prices["nano-banana"] == 1
    assert spec.prices["gpt-image-2"] == DEFAULT_PRICES["gpt-image-2"]


def test_unknown_model_is_a_warning(tmp_path: Path) -> None:
    """An unknown model loads, with a warning kept on spec.warnings."""
    spec = load(tmp_path, "version: 1\nmodel: brand-new-model\nprompt: p\n")
    assert len(spec.warnings) == 1
    warning = spec.warnings[0]
    assert warning.severity == "warning"
    assert (warning.line, warning.column) == (2, 8)
    assert "unknown model 'brand-new-model'" in warning.message
    assert str(warning).startswith(f"{tmp_path / 'job.yaml'}:2:8: warning: ")


def test_digest_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    """Reformatting and comments keep the digest; changing a value changes it."""
    a = load(tmp_path, "version: 1\nmodel: m\nprompt: p\n").digest
    b = load(tmp_path, "# comment\nversion: 1\nprompt: 'p'\nmodel:   m\n").digest
    c = load(tmp_path, "version: 1\nmodel: m\nprompt: q\n").digest
    assert a == b != c


def test_for_simulator_moves_output(tmp_path: Path) -> None:
    """for_simulator() writes to <output>-sim and keeps everything else."""
    spec = load(tmp_path, "version: 1\nmodel: m\nprompt: p\n")
    sim = spec.for_simulator()
    assert sim.output_dir == tmp_path / "out" / "job-sim"
    assert sim.digest == spec.digest
    assert [t.key for t in expand(sim)] == [t.key for t in expand(spec)]


def test_structure_errors_are_all_reported(tmp_path: Path) -> None:
    """Several structural problems come back together, sorted by line."""
    issues = errors_of(
        tmp_path,
        "version: 1\nmodel: 5\nprompt: [x]\nrepeat: 0\nlimits:\n  budget: -1\n  poll_timeout: no\n",
    )
    assert [(i.line, i.message) for i in issues] == [
        (2, "model: should be a string, got 5"),
        (3, "prompt: should be a string, got a list"),
        (4, "repeat: should be at least 1, got 0"),
        (6, "limits.budget: should be at least 0, got -1"),
        (7, "limits.poll_timeout: should be a number, got 'no'"),
    ]


# --- rows and images -----------------------------------------------------------------------


def test_rows_from_csv_txt_and_jsonl(tmp_path: Path) -> None:
    """Columns become variables, rows stay zipped, and row axes cross with other axes."""
    write(tmp_path, "name,colour\nmug, red\nlamp,blue\n", "items.csv")
    write(tmp_path, "calm\n\nbold\n", "moods.txt")
    write(tmp_path, '{"place": "beach", "hour": 7}\n{"place": "city", "hour": 19}\n', "p.jsonl")
    spec = load(
        tmp_path,
        "version: 1\nmodel: m\nprompt: '{mood} {colour} {name} at {place} {hour}h'\n"
        "matrix:\n  item: {from: items.csv}\n  mood: {from: moods.txt}\n"
        "  where: {from: p.jsonl}\n",
    )
    prompts = [t.prompt for t in expand(spec)]
    assert len(prompts) == 8
    assert prompts[0] == "calm red mug at beach 7h"
    assert prompts[-1] == "bold blue lamp at city 19h"
    task = next(expand(spec))
    assert task.vars["colour"] == "red"
    assert "item" not in task.vars


def test_inline_rows_and_prompt_column(tmp_path: Path) -> None:
    """An axis of mappings is a row axis; a prompt column sets each row's prompt template."""
    spec = load(
        tmp_path,
        "version: 1\nmodel: m\nmatrix:\n  shot:\n"
        "    - {prompt: 'a {thing} at noon', thing: cat}\n"
        "    - {prompt: 'a {thing} at night', thing: owl}\n",
    )
    assert [t.prompt for t in expand(spec)] == ["a cat at noon", "a owl at night"]


def test_duplicate_rows_are_skipped_with_a_warning(tmp_path: Path) -> None:
    """Rows that would give the same request as an earlier row are dropped and reported."""
    write(tmp_path, "subject,note\ncat,a\ndog,b\ncat,c\n", "rows.csv")
    spec = load(
        tmp_path, "version: 1\nmodel: m\nprompt: '{subject}'\nmatrix:\n  r: {from: rows.csv}\n"
    )
    assert spec.task_count == 2
    rows = [w for w in spec.warnings if w.file.endswith("rows.csv")]
    assert [w.line for w in rows] == [4]
    assert "gives the same tasks as line 2" in rows[0].message


def test_images_axis_and_include_images(tmp_path: Path) -> None:
    """Images can be an axis (one file or a list per value) and include entries can set them."""
    write(tmp_path, "", "a.png").write_bytes(PNG)
    write(tmp_path, "", "b.png").write_bytes(PNG + b"b")
    spec = load(
        tmp_path,
        "version: 1\nmodel: m\nprompt: p\nmatrix:\n  images: [a.png, [a.png, b.png]]\n",
    )
    tasks = list(expand(spec))
    assert [len(t.request["images"]) for t in tasks] == [1, 2]  # type: ignore[arg-type]
    assert tasks[1].vars["images"] == "a.png, b.png"


def test_row_file_limit_counts_rows(tmp_path: Path) -> None:
    """A row file with more rows than max_tasks is refused at the row that passes the limit."""
    write(tmp_path, "\n".join(str(i) for i in range(20)) + "\n", "many.txt")
    with pytest.raises(SpecError) as caught:
        load(
            tmp_path,
            "version: 1\nmodel: m\nprompt: '{n}'\nmatrix:\n  n: {from: many.txt}\n",
            max_tasks=10,
        )
    issue = caught.value.issues[0]
    assert issue.file.endswith("many.txt")
    assert issue.line == 11


def test_prompt_ignoring_an_axis_warns(tmp_path: Path) -> None:
    """A prompt value that uses none of an axis's variables is a warning (requests repeat)."""
    spec = load(
        tmp_path,
        "version: 1\nmodel: m\nmatrix:\n  prompt: ['a {style} cat', 'a plain dog']\n"
        "  style: [ink, oil]\n",
    )
    assert any("uses no variable of axis 'style'" in w.message for w in spec.warnings)


def test_budget_over_estimate_warns(tmp_path: Path) -> None:
    """An estimated cost over the budget is a warning at the budget."""
    spec = load(
        tmp_path,
        "version: 1\nmodel: nano-banana-pro\nprompt: p\nrepeat: 10\nlimits: {budget: 1}\n",
    )
    assert spec.estimated_cost == pytest.approx(1.98)
    assert any("exceeds the budget" in w.message and w.line == 5 for w in spec.warnings)


def test_include_can_set_model_for_new_combinations(tmp_path: Path) -> None:
    """Include entries that fit no combination are checked with the top-level defaults."""
    spec = load(
        tmp_path,
        "version: 1\nmodel: nano-banana\nprompt: '{s}'\nmatrix:\n  s: [a, b]\n"
        "  include:\n    - {s: c, model: nano-banana-pro, image_size: 4K}\n",
    )
    last = list(expand(spec))[-1]
    assert (last.model, last.image_size, last.prompt) == ("nano-banana-pro", "4K", "c")
    assert spec.tasks_by_model == {"nano-banana": 2, "nano-banana-pro": 1}


def test_documented_example_is_valid(tmp_path: Path) -> None:
    """The annotated example in the README loads and expands to the count it states."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("### A complete annotated example", 1)[1].split("```yaml\n", 1)[1]
    spec = load(tmp_path, block.split("```", 1)[0])
    assert spec.task_count == 14
    assert spec.limits.max_tasks == 10_000
    stated = "This expands to ((2 products \u00d7 2 models \u00d7 2 sizes) \u2212 2 excluded + 1"
    assert stated in text


def test_tsv_delimiter_and_format_override(tmp_path: Path) -> None:
    """.tsv splits on tabs, `delimiter` picks another separator, `format` beats the suffix."""
    write(tmp_path, "a\tb\nx\ty\n", "t.tsv")
    write(tmp_path, "c;d\nz;w\n", "s.data")
    spec = load(
        tmp_path,
        "version: 1\nmodel: m\nprompt: '{a}{b}{c}{d}'\nmatrix:\n  t: {from: t.tsv}\n"
        "  s: {from: s.data, format: csv, delimiter: ';'}\n",
    )
    assert next(expand(spec)).prompt == "xyzw"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("'data:image/png;base64,AAAA'", "inline data: URIs are not accepted"),
        ("'ftp://example.com/x.png'", "image URL must be http(s) with a host"),
        ("notes.txt", "is not a PNG, JPEG, WebP or GIF file"),
        ("sub", "reference image is a folder"),
    ],
)
def test_unusable_reference_images(tmp_path: Path, entry: str, fragment: str) -> None:
    """Data URIs, other URL schemes, non-images and folders are refused at their line."""
    write(tmp_path, "just text", "notes.txt")
    (tmp_path / "sub").mkdir()
    issues = errors_of(tmp_path, f"version: 1\nmodel: m\nprompt: p\nimages:\n  - {entry}\n")
    assert [(i.line, fragment in i.message) for i in issues] == [(5, True)]


def test_row_file_format_must_be_known(tmp_path: Path) -> None:
    """A row file with an unknown suffix and no `format` is refused at `from`."""
    write(tmp_path, "x\n", "rows.dat")
    issues = errors_of(
        tmp_path, "version: 1\nmodel: m\nprompt: '{r}'\nmatrix:\n  r: {from: rows.dat}\n"
    )
    assert issues[0].line == 5
    assert "cannot tell the format" in issues[0].message


def test_unused_txt_axis_is_an_error(tmp_path: Path) -> None:
    """A .txt axis that no template uses is refused like an inline one."""
    write(tmp_path, "a\nb\nc\n", "subjects.txt")
    issues = errors_of(
        tmp_path, "version: 1\nmodel: m\nprompt: p\nmatrix:\n  subject: {from: subjects.txt}\n"
    )
    assert [i.line for i in issues] == [5]
    assert "axis 'subject' is not used" in issues[0].message


def test_many_duplicate_rows_are_summed_up(tmp_path: Path) -> None:
    """Past ten duplicate rows, one warning counts the rest instead of one line each."""
    write(tmp_path, "x\n" * 30, "same.txt")
    spec = load(tmp_path, "version: 1\nmodel: m\nprompt: '{s}'\nmatrix:\n  s: {from: same.txt}\n")
    assert spec.task_count == 1
    duplicates = [w for w in spec.warnings if "same" in w.message or "duplicate" in w.message]
    assert len(duplicates) == 11
    assert "29 duplicate rows skipped in all" in duplicates[0].message  # the spec's file first
    assert all(w.file.endswith("same.txt") for w in duplicates[1:])
