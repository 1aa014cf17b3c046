"""Variable, axis and placeholder names in any script: Python identifiers, NFKC-normalised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.errors import SpecError
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import expand, render_layout
from batchgen.spec.placeholders import TemplateError, parse_template, variable_name
from tests.runner_helpers import write_spec

#: The spec of the issue: a Chinese variable with Chinese values.
ISSUE_SPEC = """
    name: 宇航猫
    output: out
    model: nano-banana-fast
    prompt: "一只戴着宇航服的猫，{风格}"
    layout: "{风格}/{model}-{key8}.png"
    matrix:
      风格: [水彩画, 油画]
    """


def _load(folder: Path, body: str) -> Spec:
    return load_spec(write_spec(folder, body))


def _errors(folder: Path, body: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        _load(folder, body)
    return [issue.message for issue in caught.value.issues if issue.severity == "error"]


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("subject", "subject"),
        ("my-var_2", "my-var_2"),
        ("风格", "风格"),
        ("スタイル", "スタイル"),
        ("ｓｔｙｌｅ", "style"),  # full-width letters: their NFKC form
        ("ℌ", "H"),
        ("_x", "_x"),
    ],
)
def test_a_name_is_a_python_identifier_in_nfkc_form(written: str, name: str) -> None:
    """Identifiers of any script are names (dashes after the first character too), read as
    Python reads them: NFKC."""
    assert variable_name(written) == name


@pytest.mark.parametrize("written", ["", "1abc", "-x", "a.b", "a[0]", "a b", "a－b", "²"])
def test_what_is_not_a_name(written: str) -> None:
    """Digits first, a leading dash, dots, brackets, spaces and symbols are not names."""
    assert variable_name(written) is None


def test_the_issue_spec_validates_and_expands(tmp_path: Path) -> None:
    """The issue's spec (a Chinese variable, values and prompt) loads, renders its prompt
    and its layout, and keeps the Chinese name in each task's vars."""
    spec = _load(tmp_path, ISSUE_SPEC)
    tasks = list(expand(spec))
    assert [t.prompt for t in tasks] == ["一只戴着宇航服的猫，水彩画", "一只戴着宇航服的猫，油画"]
    assert [t.vars["风格"] for t in tasks] == ["水彩画", "油画"]
    assert render_layout(spec.layout, tasks[0])[0] == "水彩画"


def test_names_do_not_enter_the_keys(tmp_path: Path) -> None:
    """Renaming a variable (风格 to style) keeps every task's key: keys hash the request."""
    chinese = [t.key for t in expand(_load(tmp_path / "a", ISSUE_SPEC))]
    ascii_body = ISSUE_SPEC.replace("风格", "style")
    assert [t.key for t in expand(_load(tmp_path / "b", ascii_body))] == chinese


def test_keys_of_an_ascii_job_are_unchanged(tmp_path: Path) -> None:
    """The README's documented key of the quickstart's first task still comes out."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml")
    assert next(expand(spec)).key == "923c36fdabfa7d97b82a56a4a54e4f8f"


def test_full_width_spellings_are_one_variable(tmp_path: Path) -> None:
    """An axis written in full-width letters fills {style}, and {ｓｔｙｌｅ} reads the axis
    style; two axes that are one name in NFKC form clash."""
    spec = _load(
        tmp_path,
        """
        model: nano-banana-fast
        prompt: "a cat, {style} and {ｍｏｏｄ}"
        matrix:
          ｓｔｙｌｅ: [ink, oil]
          mood: [calm]
        """,
    )
    assert [t.prompt for t in expand(spec)] == ["a cat, ink and calm", "a cat, oil and calm"]
    assert parse_template("{ｓｔｙｌｅ}").names == ("style",)
    errors = _errors(
        tmp_path / "clash",
        """
        model: nano-banana-fast
        prompt: "{style}"
        matrix:
          style: [a, b]
          ｓｔｙｌｅ: [c]
        """,
    )
    assert any("is set by both axis" in e for e in errors)


def test_include_exclude_and_rows_take_chinese_names(tmp_path: Path) -> None:
    """Include and exclude entries, inline rows and CSV/JSONL columns use Chinese names."""
    (tmp_path / "风格.csv").write_text("风格,光线\n水彩画,晨光\n油画,夜色\n", encoding="utf-8")
    (tmp_path / "主体.jsonl").write_text(
        json.dumps({"主体": "猫"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    spec = _load(
        tmp_path,
        """
        model: nano-banana-fast
        prompt: "{主体}，{风格}，{光线}，{镜头}"
        matrix:
          画风: {from: 风格.csv}
          主体: {from: 主体.jsonl}
          镜头:
            - {镜头: 特写}
            - {镜头: 远景}
          exclude:
            - {风格: 油画, 镜头: 远景}
          include:
            - {风格: 水墨画, 光线: 黄昏, 主体: 狗, 镜头: 特写}
        """,
    )
    prompts = [t.prompt for t in expand(spec)]
    assert prompts == [
        "猫，水彩画，晨光，特写",
        "猫，水彩画，晨光，远景",
        "猫，油画，夜色，特写",
        "狗，水墨画，黄昏，特写",
    ]


def test_bad_names_keep_their_messages(tmp_path: Path) -> None:
    """A name that is no identifier, and a reserved one (in any spelling), get the messages
    they always had."""
    with pytest.raises(TemplateError, match=r"placeholder \{风格\.x\} is not a plain variable"):
        parse_template("{风格.x}")
    errors = _errors(
        tmp_path,
        """
        model: nano-banana-fast
        prompt: "{a}"
        matrix:
          1风格: [x, y]
          ｋｅｙ: [z]
          a: [b]
        """,
    )
    bad = "axis '1风格' cannot be used as a variable: use letters, digits"
    assert any(e.startswith(bad) for e in errors)
    assert "axis 'ｋｅｙ' is reserved (it is a layout field)" in errors


def test_a_chinese_job_name_keeps_its_folder_and_says_so(tmp_path: Path) -> None:
    """A job named only in Chinese, without `output`, keeps the default folder out/job
    (moving it would lose an existing job's ledger), with a warning to set `output`."""
    spec = _load(tmp_path, ISSUE_SPEC.replace("    output: out\n", ""))
    assert spec.output_dir == tmp_path / "out" / "job"
    assert any("output: out/宇航猫" in w.message for w in spec.warnings)
    assert not _load(tmp_path / "named", ISSUE_SPEC).warnings
