"""Matrix semantics, lazy expansion, keys and request bodies: combos, matrix, placeholders."""

from __future__ import annotations

import base64
import itertools
import json
import random
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.errors import ConfigError, SpecError
from batchgen.spec.combos import (
    Axis,
    AxisValue,
    MatrixDef,
    MatrixEntry,
    count_combinations,
    iter_combinations,
)
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import PlannedTask, count_tasks, expand, render_layout
from batchgen.spec.placeholders import TemplateError, parse_template
from batchgen.spec.request import build_request, materialize_request, task_key
from batchgen.spec.sources import Where

HERE = Where("test", 1, 1)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)

Combo = dict[str, str]


def make_matrix(
    axes: Mapping[str, list[str]],
    exclude: list[Combo] | None = None,
    include: list[Combo] | None = None,
) -> MatrixDef:
    """A MatrixDef from plain dicts, the way GitHub's docs write matrices."""
    return MatrixDef(
        tuple(
            Axis(name, (name,), tuple(AxisValue((v,), HERE) for v in values), HERE)
            for name, values in axes.items()
        ),
        tuple(MatrixEntry(tuple(e.items()), (), HERE) for e in exclude or []),
        tuple(
            MatrixEntry(
                tuple((k, v) for k, v in e.items() if k in axes),
                tuple((k, v) for k, v in e.items() if k not in axes),
                HERE,
            )
            for e in include or []
        ),
    )


def combinations(matrix: MatrixDef) -> list[Combo]:
    """Every combination of ``matrix``, in order."""
    return [combo for combo, _images in iter_combinations(matrix)]


def reference(
    axes: Mapping[str, list[str]], exclude: list[Combo], include: list[Combo]
) -> list[Combo]:
    """GitHub's algorithm, written as plainly as possible (the oracle for properties)."""
    if not axes and not include:
        return [{}]
    # GitHub: no axes means no product at all (not one empty combination).
    product = (
        [dict(zip(axes, c, strict=True)) for c in itertools.product(*axes.values())] if axes else []
    )
    kept = [c for c in product if not any(all(c[k] == v for k, v in e.items()) for e in exclude)]
    result = [dict(c) for c in kept]
    extra = []
    for entry in include:
        matched = False
        for original, combo in zip(kept, result, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in axes):
                matched = True
                combo.update({k: v for k, v in entry.items() if k not in axes})
        if not matched:
            extra.append(dict(entry))
    return result + extra


# --- GitHub's documented examples ------------------------------------------------------------


def test_github_include_example() -> None:
    """GitHub docs' fruit/animal include example gives exactly its documented six jobs."""
    matrix = make_matrix(
        {"fruit": ["apple", "pear"], "animal": ["cat", "dog"]},
        include=[
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    )
    assert combinations(matrix) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    counts = count_combinations(matrix)
    assert (counts.product, counts.excluded, counts.added, counts.total) == (4, 0, 2, 6)


def test_github_expanding_configurations() -> None:
    """An include entry matching one combination adds its extra value to that one only."""
    matrix = make_matrix(
        {"os": ["windows-latest", "ubuntu-latest"], "node": ["14", "16"]},
        include=[{"os": "windows-latest", "node": "16", "npm": "6"}],
    )
    assert combinations(matrix) == [
        {"os": "windows-latest", "node": "14"},
        {"os": "windows-latest", "node": "16", "npm": "6"},
        {"os": "ubuntu-latest", "node": "14"},
        {"os": "ubuntu-latest", "node": "16"},
    ]


def test_github_adding_configurations() -> None:
    """An include entry that changes an axis value becomes a tenth job of its own."""
    matrix = make_matrix(
        {
            "os": ["macos-latest", "windows-latest", "ubuntu-latest"],
            "version": ["12", "14", "16"],
        },
        include=[{"os": "windows-latest", "version": "17"}],
    )
    result = combinations(matrix)
    assert len(result) == 10
    assert result[-1] == {"os": "windows-latest", "version": "17"}


def test_github_include_only_matrix() -> None:
    """With no axes, every include entry is a job (GitHub's site/datacenter example)."""
    matrix = make_matrix(
        {},
        include=[
            {"site": "production", "datacenter": "site-a"},
            {"site": "staging", "datacenter": "site-b"},
        ],
    )
    assert combinations(matrix) == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]
    assert count_combinations(matrix).total == 2


def test_github_exclude_example() -> None:
    """GitHub's exclude example: 12 combinations minus a full and a partial match = 9."""
    matrix = make_matrix(
        {
            "os": ["macos-latest", "windows-latest"],
            "version": ["12", "14", "16"],
            "environment": ["staging", "production"],
        },
        exclude=[
            {"os": "macos-latest", "version": "12", "environment": "production"},
            {"os": "windows-latest", "version": "16"},
        ],
    )
    result = combinations(matrix)
    assert len(result) == 9
    assert {"os": "macos-latest", "version": "12", "environment": "production"} not in result
    assert not [c for c in result if c["os"] == "windows-latest" and c["version"] == "16"]
    counts = count_combinations(matrix)
    assert (counts.product, counts.excluded, counts.total) == (12, 3, 9)


def test_github_runner_include_vectors_example() -> None:
    """GitHub's MatrixBuilder example 4: a matching entry adds nothing, a new one appends."""
    matrix = make_matrix(
        {"arch": ["x64", "x86"], "os": ["linux", "windows"]},
        include=[{"arch": "x64"}, {"os": "macos"}],
    )
    assert combinations(matrix)[-1] == {"os": "macos"}
    assert len(combinations(matrix)) == 5


def test_exclusions_apply_before_includes() -> None:
    """An include entry cannot match a combination that exclude removed."""
    matrix = make_matrix(
        {"a": ["1", "2"]}, exclude=[{"a": "1"}], include=[{"a": "1", "extra": "x"}]
    )
    assert combinations(matrix) == [{"a": "2"}, {"a": "1", "extra": "x"}]


def test_no_axes_no_include_is_one_default_combination() -> None:
    """A spec without a matrix is a single combination of the defaults."""
    assert combinations(MatrixDef()) == [{}]
    assert count_combinations(MatrixDef()).total == 1


# --- properties --------------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d"]
VALUES = ["0", "1", "2", "3"]


@st.composite
def matrices(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[Combo], list[Combo]]:
    """Random small matrices with exclude and include entries over overlapping values."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    axes = {
        name: draw(st.lists(st.sampled_from(VALUES), unique=True, min_size=1, max_size=4))
        for name in names
    }
    exclude = (
        draw(
            st.lists(
                st.dictionaries(st.sampled_from(names), st.sampled_from(VALUES), min_size=1),
                max_size=3,
            )
        )
        if names
        else []
    )
    include = draw(
        st.lists(
            st.dictionaries(
                st.sampled_from([*names, "x", "y"]), st.sampled_from([*VALUES, "4"]), min_size=1
            ),
            max_size=4,
        )
    )
    return axes, exclude, include


@settings(derandomize=True, max_examples=200, deadline=None)
@given(matrices())
def test_combinations_match_github_reference(
    case: tuple[dict[str, list[str]], list[Combo], list[Combo]],
) -> None:
    """Expansion equals a plain implementation of GitHub's rules, in the same order."""
    axes, exclude, include = case
    assert combinations(make_matrix(axes, exclude, include)) == reference(axes, exclude, include)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(matrices())
def test_count_is_product_minus_excluded_plus_added(
    case: tuple[dict[str, list[str]], list[Combo], list[Combo]],
) -> None:
    """count = product - excluded + added, and equals the number of combinations yielded."""
    axes, exclude, include = case
    matrix = make_matrix(axes, exclude, include)
    counts = count_combinations(matrix)
    product = len(list(itertools.product(*axes.values()))) if axes else 0
    kept = [
        c
        for c in itertools.product(*axes.values())
        if not any(
            all(dict(zip(axes, c, strict=True))[k] == v for k, v in e.items()) for e in exclude
        )
    ]
    assert counts.product == product
    assert counts.excluded == (product - len(kept) if axes else 0)
    assert counts.total == len(combinations(matrix))
    if axes or include:
        assert counts.total == counts.product - counts.excluded + counts.added


# --- keys through real specs ---------------------------------------------------------------------


def spec_text(axes: Mapping[str, list[str]], *, repeat: int = 1, flow: bool = False) -> str:
    """A spec whose prompt uses every axis, dumped block-style or flow-style."""
    prompt = "photo " + " ".join("{" + name + "}" for name in sorted(axes))
    data = {
        "version": 1,
        "model": "nano-banana-fast",
        "prompt": prompt,
        "repeat": repeat,
        "matrix": {name: list(values) for name, values in axes.items()},
    }
    return yaml.safe_dump(data, default_flow_style=flow, sort_keys=False)


def keys_of(text: str) -> dict[str, str]:
    """Map each task's (vars, variant) fingerprint to its key, for a spec given as text."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_text(text, encoding="utf-8")
        spec = load_spec(path)
        return {json.dumps([sorted(t.vars.items()), t.variant]): t.key for t in expand(spec)}


axes_strategy = st.dictionaries(
    st.sampled_from(["subject", "style", "mood"]),
    st.lists(
        st.sampled_from(["red", "blue", "green", "gold", "héllo wörld"]),
        unique=True,
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=3,
)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(axes_strategy, st.integers(min_value=1, max_value=3), st.randoms(use_true_random=False))
def test_keys_unique_and_stable_under_reordering(
    axes: dict[str, list[str]], repeat: int, rng: random.Random
) -> None:
    """Keys are unique, and reordering axes and values or reformatting keeps every key."""
    original = keys_of(spec_text(axes, repeat=repeat))
    assert len(set(original.values())) == len(original)
    names = list(axes)
    rng.shuffle(names)
    shuffled = {name: rng.sample(axes[name], len(axes[name])) for name in names}
    assert keys_of(spec_text(shuffled, repeat=repeat, flow=True)) == original


@settings(derandomize=True, max_examples=25, deadline=None)
@given(axes_strategy)
def test_adding_values_keeps_existing_keys(axes: dict[str, list[str]]) -> None:
    """Adding a value to an axis (and raising repeat) keeps the keys of all earlier tasks."""
    before = keys_of(spec_text(axes))
    grown = {name: [*values, "added"] for name, values in axes.items()}
    after = keys_of(spec_text(grown, repeat=2))
    assert before.items() <= after.items()


def test_key_is_sha256_of_canonical_request() -> None:
    """The key is the documented hash: sorted compact JSON of the canonical fields."""
    canonical = {
        "endpoint": "generate",
        "model": "m",
        "prompt": "p",
        "images": [],
        "aspect_ratio": "1:1",
        "image_size": "1K",
        "params": {},
        "variant": 0,
    }
    import hashlib

    expected = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()[:32]
    assert task_key(canonical) == expected


# --- specs end to end -----------------------------------------------------------------------------


def load_text(tmp_path: Path, text: str, name: str = "job.yaml") -> Spec:
    """Write ``text`` as a spec in ``tmp_path`` and load it."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


def test_expand_is_lazy_and_ordered(tmp_path: Path) -> None:
    """expand() is a generator; tasks come first axis outermost, variants innermost."""
    spec = load_text(
        tmp_path,
        "version: 1\nmodel: nano-banana\nprompt: '{a} {b}'\nrepeat: 2\n"
        "matrix:\n  a: [x, y]\n  b: [1, 2]\n",
    )
    tasks = expand(spec)
    assert iter(tasks) is tasks
    listed = list(tasks)
    assert [(t.vars["a"], t.vars["b"], t.variant) for t in listed[:4]] == [
        ("x", "1", 0),
        ("x", "1", 1),
        ("x", "2", 0),
        ("x", "2", 1),
    ]
    assert [t.index for t in listed] == list(range(8))
    assert count_tasks(spec) == 8


def test_vars_hold_the_whole_combination(tmp_path: Path) -> None:
    """vars has model, aspect_ratio and image_size first, then every variable, all strings."""
    spec = load_text(
        tmp_path,
        "version: 1\nmodel: nano-banana-pro\nimage_size: 2K\nprompt: '{n} cats'\n"
        "matrix:\n  n: [1, 2.5, true]\n  include:\n    - note: hi\n",
    )
    task = next(expand(spec))
    assert task.vars == {
        "model": "nano-banana-pro",
        "aspect_ratio": "auto",
        "image_size": "2K",
        "n": "1",
        "note": "hi",
    }
    assert [t.vars["n"] for t in expand(spec)] == ["1", "2.5", "true"]
    json.dumps(task.vars)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "generate",
            {
                "model": "gpt-image-2",
                "prompt": "p",
                "aspectRatio": "3:2",
                "imageSize": "1K",
                "replyType": "async",
                "quality": "high",
            },
        ),
        (
            "nano-banana",
            {
                "model": "gpt-image-2",
                "prompt": "p",
                "aspectRatio": "3:2",
                "imageSize": "1K",
                "webHook": "-1",
                "shutProgress": True,
                "quality": "high",
            },
        ),
        (
            "draw-completions",
            {
                "model": "gpt-image-2",
                "prompt": "p",
                "aspectRatio": "1536x1024",
                "webHook": "-1",
                "quality": "high",
            },
        ),
        (
            "images",
            {
                "model": "gpt-image-2",
                "prompt": "p",
                "n": 1,
                "size": "1536x1024",
                "response_format": "url",
                "quality": "high",
            },
        ),
    ],
)
def test_request_bodies_per_endpoint(endpoint: str, expected: dict[str, object]) -> None:
    """Each route gets exactly its documented body, with params last and no empty images."""
    body = build_request(
        endpoint,
        model="gpt-image-2",
        prompt="p",
        images=[],
        aspect_ratio="3:2",
        image_size="1K",
        params={"quality": "high"},
    )
    assert body == expected
    assert list(body) == list(expected)


def test_pixel_sizes_for_gpt_routes() -> None:
    """1:1, 3:2, 2:3 map to pixels, auto and pixel strings pass, other ratios are refused."""

    def size(ratio: str) -> object:
        return build_request(
            "images",
            model="m",
            prompt="p",
            images=[],
            aspect_ratio=ratio,
            image_size="1K",
            params={},
        )["size"]

    assert [size(r) for r in ("1:1", "3:2", "2:3", "auto", "1792x1024")] == [
        "1024x1024",
        "1536x1024",
        "1024x1536",
        "auto",
        "1792x1024",
    ]
    with pytest.raises(ValueError, match="no pixel size"):
        size("16:9")


def test_params_are_templates_and_per_model(tmp_path: Path) -> None:
    """String params are rendered per task, and model_params override params for a model."""
    spec = load_text(
        tmp_path,
        "version: 1\nprompt: 'a {q} cat'\nparams: {quality: '{q}', seed: 7}\n"
        "model_params:\n  gpt-image-2: {seed: 9}\n"
        "matrix:\n  model: [nano-banana, gpt-image-2]\n  q: [low, high]\n",
    )
    requests = [(t.model, t.request["quality"], t.request["seed"]) for t in expand(spec)]
    assert requests == [
        ("nano-banana", "low", 7),
        ("nano-banana", "high", 7),
        ("gpt-image-2", "low", 9),
        ("gpt-image-2", "high", 9),
    ]


def test_reference_images_are_placeholders_until_materialized(tmp_path: Path) -> None:
    """Local images appear as file:...#sha256= placeholders; materialize inlines data URIs."""
    (tmp_path / "ref.png").write_bytes(PNG)
    spec = load_text(
        tmp_path,
        "version: 1\nmodel: nano-banana\nprompt: p\n"
        "images: [ref.png, 'https://example.com/x.png']\n",
    )
    task = next(expand(spec))
    images = task.request["images"]
    assert isinstance(images, list)
    assert images[0].startswith(f"file:{tmp_path / 'ref.png'}#sha256=")
    assert images[1] == "https://example.com/x.png"
    body = materialize_request(task.request)
    assert body["images"] == [
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
        "https://example.com/x.png",
    ]
    assert task.request["images"] is images  # the planned request is left untouched


def test_key_depends_on_image_bytes_not_file_name(tmp_path: Path) -> None:
    """Renaming a reference image keeps the key; changing its bytes changes it."""
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    (tmp_path / "c.png").write_bytes(PNG + b"\0")
    keys = [
        next(expand(load_text(tmp_path, f"version: 1\nmodel: m\nprompt: p\nimages: [{n}]\n"))).key
        for n in ("a.png", "b.png", "c.png")
    ]
    assert keys[0] == keys[1] != keys[2]


def test_materialize_refuses_a_changed_file(tmp_path: Path) -> None:
    """A reference image that changed after planning raises ConfigError, naming the file."""
    ref = tmp_path / "ref.png"
    ref.write_bytes(PNG)
    spec = load_text(tmp_path, "version: 1\nmodel: nano-banana\nprompt: p\nimages: [ref.png]\n")
    task = next(expand(spec))
    ref.write_bytes(PNG + b"changed")
    with pytest.raises(ConfigError, match=r"ref\.png changed after the job was planned"):
        materialize_request(task.request)
    ref.unlink()
    with pytest.raises(ConfigError, match="cannot be read"):
        materialize_request(task.request)


def test_render_layout_fills_components(tmp_path: Path) -> None:
    """render_layout splits on '/' first and fills every field, keeping '/' inside values."""
    spec = load_text(
        tmp_path,
        "version: 1\nmodel: nano-banana\nprompt: 'a {s}'\n"
        "layout: '{s}/{model}-{variant}-{index}/{prompt}-{key8}.png'\n"
        "matrix:\n  s: [cat/dog]\n",
    )
    task = next(expand(spec))
    assert render_layout(spec.layout, task) == [
        "cat/dog",
        "nano-banana-0-0",
        f"a cat/dog-{task.key[:8]}.png",
    ]


def test_variant_in_prompt_renders_per_variant(tmp_path: Path) -> None:
    """A prompt using {variant} differs per variant; keys differ either way."""
    spec = load_text(tmp_path, "version: 1\nmodel: m\nprompt: 'take {variant}'\nrepeat: 3\n")
    tasks = list(expand(spec))
    assert [t.prompt for t in tasks] == ["take 0", "take 1", "take 2"]
    assert len({t.key for t in tasks}) == 3


def test_planned_task_is_frozen(tmp_path: Path) -> None:
    """PlannedTask is an immutable value."""
    task = next(expand(load_text(tmp_path, "version: 1\nmodel: m\nprompt: p\n")))
    assert isinstance(task, PlannedTask)
    with pytest.raises(AttributeError):
        task.key = "x"  # type: ignore[misc]


def test_billion_task_matrix_is_refused_without_expanding(tmp_path: Path) -> None:
    """A 10^9 product is counted and refused in well under a second."""
    axes = "".join(f"  v{i}: [{', '.join(str(j) for j in range(10))}]\n" for i in range(9))
    prompt = " ".join(f"{{v{i}}}" for i in range(9))
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"1,000,000,000 tasks, more than limits.max_tasks"):
        load_text(tmp_path, f"version: 1\nmodel: m\nprompt: '{prompt}'\nmatrix:\n{axes}")
    assert time.perf_counter() - started < 0.9


def test_count_of_huge_product_with_entries_is_fast() -> None:
    """Counting a 10^12 product with excludes and includes takes milliseconds."""
    axes = {f"v{i}": [str(j) for j in range(10)] for i in range(12)}
    matrix = make_matrix(
        axes,
        exclude=[{"v0": "1", "v11": "2"}, {"v3": "4"}],
        include=[{"v0": "1", "v11": "2"}, {"v5": "5", "extra": "x"}, {"v1": "99"}],
    )
    started = time.perf_counter()
    counts = count_combinations(matrix)
    assert time.perf_counter() - started < 0.2
    excluded = 10**10 + 10**11 - 10**9  # |A| + |B| - |A and B|
    assert (counts.product, counts.excluded, counts.added) == (10**12, excluded, 2)


# --- templates ------------------------------------------------------------------------------


def test_template_parse_and_render() -> None:
    """Placeholders are plain names; doubled braces are literal."""
    template = parse_template("a {x} and {y-z} {{literal}} {x}")
    assert template.fields == {"x", "y-z"}
    assert template.render({"x": "1", "y-z": "2"}) == "a 1 and 2 {literal} 1"
    assert parse_template("no fields").render({}) == "no fields"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a {", "unbalanced"),
        ("a }", "unbalanced"),
        ("{}", "empty placeholder"),
        ("{a.b}", "not a plain variable name"),
        ("{a[0]}", "not a plain variable name"),
        ("{0}", "not a plain variable name"),
        ("{a!r}", "conversion or format"),
        ("{a:>5}", "conversion or format"),
    ],
)
def test_template_errors(text: str, fragment: str) -> None:
    """Attribute, index, positional and formatted placeholders are refused clearly."""
    with pytest.raises(TemplateError, match=fragment):
        parse_template(text)
