"""Safe YAML loading with positions: batchgen.yamlsrc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchgen.errors import SpecError
from batchgen.spec.yamlsrc import MAX_NODES, load_yaml_file, parse_yaml

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def issues_of(text: str) -> list[str]:
    """The rendered issues parse_yaml raises for ``text``."""
    with pytest.raises(SpecError) as caught:
        parse_yaml(text, file="t.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_positions_are_one_based_for_values_and_keys() -> None:
    """Every node path maps to the 1-based line and column of its value and of its key."""
    doc = parse_yaml("name: x\nmatrix:\n  subject: [cat, dog]\n", file="t.yaml")
    assert doc.data == {"name": "x", "matrix": {"subject": ["cat", "dog"]}}
    assert doc.value_position(("name",)) == (1, 7)
    assert doc.key_position(("matrix", "subject")) == (3, 3)
    assert doc.value_position(("matrix", "subject", 1)) == (3, 18)


def test_missing_path_falls_back_to_nearest_ancestor() -> None:
    """A path that is not in the document is located at its closest existing parent."""
    doc = parse_yaml("limits:\n  concurrency: 2\n", file="t.yaml")
    assert doc.value_position(("limits", "budget")) == doc.value_position(("limits",))
    assert doc.value_position(("nothing", "here")) == (1, 1)


def test_yaml12_scalars() -> None:
    """Ratios stay strings, yes/no stay strings, dates stay strings and 1e3 is a number."""
    doc = parse_yaml(
        "r: 16:9\nq: '3:2'\nb: yes\nt: true\nd: 2024-05-01\nn: 1e3\ni: 0x10\nz: ~\nf: 1.5\n"
    )
    assert doc.data == {
        "r": "16:9",
        "q": "3:2",
        "b": "yes",
        "t": True,
        "d": "2024-05-01",
        "n": 1000.0,
        "i": 16,
        "z": None,
        "f": 1.5,
    }


def test_keys_are_always_the_written_text() -> None:
    """Mapping keys keep their text, so ``on:`` and ``1K:`` are the strings 'on' and '1K'."""
    doc = parse_yaml("on: 1\n1K: 2\n12: 3\n")
    assert doc.data == {"on": 1, "1K": 2, "12": 3}


def test_explicit_core_tags_are_honoured() -> None:
    """!!str and !!int convert the value as YAML says."""
    doc = parse_yaml("a: !!str 12\nb: !!int '12'\n")
    assert doc.data == {"a": "12", "b": 12}


def test_python_tags_are_refused_at_their_line() -> None:
    """!!python/object and other non-core tags are errors located where they are written."""
    messages = issues_of("ok: 1\nbad: !!python/object/apply:os.system ['echo hi']\n")
    assert len(messages) == 1
    assert messages[0].startswith("t.yaml:2:6: tag '!!python/object/apply:os.system'")


def test_local_tags_and_sets_are_refused() -> None:
    """Custom ``!tags`` and ``!!set`` are refused too; every one is reported."""
    messages = issues_of("a: !custom 1\nb: !!set {x: null}\n")
    assert [m.split(": ")[0] for m in messages] == ["t.yaml:1:4", "t.yaml:2:4"]


def test_duplicate_keys_are_refused() -> None:
    """A key written twice in one mapping is an error at the second one, naming the first."""
    messages = issues_of("prompt: a\nmodel: b\nprompt: c\n")
    assert messages == ["t.yaml:3:1: duplicate key 'prompt' (first defined at line 1)"]


def test_syntax_error_points_at_problem_mark() -> None:
    """A YAML syntax error becomes one issue at PyYAML's problem mark."""
    messages = issues_of("a: [1, 2\nb: 3\n")
    assert len(messages) == 1
    assert messages[0].startswith("t.yaml:2:")
    assert "YAML syntax error" in messages[0]


def test_billion_laughs_fails_fast() -> None:
    """An alias-expansion bomb stops at the node cap, in well under a second."""
    started = time.perf_counter()
    messages = issues_of(BILLION_LAUGHS)
    assert time.perf_counter() - started < 0.9
    assert len(messages) == 1
    assert f"more than {MAX_NODES:,} values" in messages[0]


def test_recursive_alias_is_refused() -> None:
    """A node that contains itself through an alias is reported, not followed forever."""
    messages = issues_of("a: &a [1, *a]\n")
    assert "nested more than" in messages[0]


def test_merge_keys_are_supported_with_positions() -> None:
    """``<<: *base`` merges a mapping; explicit keys win, merged keys keep their positions."""
    doc = parse_yaml("base: &base {a: 1, b: 2}\nx:\n  <<: *base\n  b: 3\n")
    assert doc.data == {"base": {"a": 1, "b": 2}, "x": {"b": 3, "a": 1}}
    assert doc.value_position(("x", "a")) == (1, 17)
    assert doc.value_position(("x", "b")) == (4, 6)


def test_empty_document_is_none() -> None:
    """An empty file parses to None (the spec loader reports it)."""
    assert parse_yaml("# only a comment\n").data is None


def test_multiple_documents_are_refused() -> None:
    """A stream of several documents is a syntax error: a spec is one document."""
    assert "expected a single document" in issues_of("a: 1\n---\nb: 2\n")[0]


def test_deep_nesting_is_refused() -> None:
    """Pathological nesting is reported rather than crashing the parser."""
    messages = issues_of("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested" in messages[0]


def test_file_size_cap_is_checked_before_reading(tmp_path: Path) -> None:
    """A file over the cap is refused at once, with its size and the cap in the message."""
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * 2_000_000 + b"\n")
    started = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        load_yaml_file(big, display_name="big.yaml")
    assert time.perf_counter() - started < 0.5
    assert "over the 1,048,576-byte limit" in str(caught.value)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    """A missing file and a non-UTF-8 file are clear single issues."""
    with pytest.raises(SpecError, match="file not found"):
        load_yaml_file(tmp_path / "nope.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin.yaml:1:10: not valid UTF-8"):
        load_yaml_file(latin, display_name="latin.yaml")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (common from Windows editors) is ignored."""
    spec = tmp_path / "bom.yaml"
    spec.write_bytes(b"\xef\xbb\xbfname: x\n")
    assert load_yaml_file(spec).data == {"name": "x"}
