"""Unit tests for batchgen.output.tree: safe names, layouts that never escape, atomic writes."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import AsyncIterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.errors import ConfigError
from batchgen.output.tree import (
    DEFAULT_LAYOUT,
    MAX_COMPONENT_BYTES,
    MAX_FIELD_BYTES,
    METADATA_NAME,
    layout_relpath,
    resolve_inside,
    slug,
    write_atomic,
    write_metadata,
)

KEY = "3f9a2c1d5e6b7a8c9d0e1f2a3b4c5d6e"
OTHER_KEY = "77aa0c1d5e6b7a8c9d0e1f2a3b4c5d6e"

HOSTILE = [
    "../../etc/passwd",
    "..",
    ".",
    " . ",
    "a/b\\c",
    "\x00",
    "a\x00b",
    "CON",
    "nul.txt",
    "/",
    "\\\\server\\share",
    "C:\\Windows\\system32",
    "~/.ssh/id_rsa",
    "\u202e\u200b\t\r\n",
    ".hidden",
    "",
]


def components(relpath: str) -> list[str]:
    """The ``/``-separated parts of a relative path, kept raw (no normalisation)."""
    return relpath.split("/")


def assert_safe(relpath: str) -> None:
    """A relative path with no empty, dot or dot-dot part, no hidden part, parts ≤ 255 bytes."""
    assert not relpath.startswith("/")
    assert "\\" not in relpath
    assert "\x00" not in relpath
    assert not PurePosixPath(relpath).is_absolute()
    for part in components(relpath):
        assert part
        assert part not in (".", "..")
        assert not part.startswith(".")
        assert part == part.strip()
        assert len(part.encode("utf-8")) <= MAX_COMPONENT_BYTES
        assert all(ch.isprintable() for ch in part)


# --- slug --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("A cat, in watercolor!", "A-cat-in-watercolor"),
        (
            "\uff46\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48",
            "full-width",
        ),  # NFKC folds compatibility forms
        ("ﬁle ①", "file-1"),
        ("16:9", "16x9"),  # ratios stay readable
        ("a/b\\c", "a-b-c"),
        ("a\x00b\x07c", "a-b-c"),
        ("line\nbreak\ttab", "line-break-tab"),
        ("../../etc/passwd", "etc-passwd"),
        ("...leading dots", "leading-dots"),
        ("trailing dots...", "trailing-dots"),
        ("v1.5 model", "v1.5-model"),
        ("猫 cat кошка قطة", "猫-cat-кошка-قطة"),
        ("snake_case-and-dash", "snake_case-and-dash"),
        ("cat 😀 party", "cat-party"),  # symbols are not letters
        (42, "42"),
    ],
)
def test_slug_examples(value: object, expected: str) -> None:
    """Separators, punctuation and control characters become single dashes; letters stay."""
    assert slug(value) == expected


@pytest.mark.parametrize("value", ["", " ", "..", ".", "...", "///", "\x00", "\x01\x02", "-._-"])
def test_slug_is_never_empty(value: str) -> None:
    """Inputs with nothing usable slug to ``_``."""
    assert slug(value) == "_"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CON", "_CON"),
        ("con", "_con"),
        ("NUL", "_NUL"),
        ("aux.txt", "_aux.txt"),
        ("COM1", "_COM1"),
        ("COM¹", "_COM1"),  # NFKC turns the superscript into a digit
        ("LPT9", "_LPT9"),
        ("conin$", "conin"),  # without its $ the name is not a device
        ("CONSOLE", "CONSOLE"),
        ("COM10", "COM10"),
        ("my con", "my-con"),
    ],
)
def test_slug_prefixes_windows_reserved_names(value: str, expected: str) -> None:
    """Windows device names (with or without an extension) get a ``_`` prefix."""
    assert slug(value) == expected


def test_slug_caps_fields_at_120_utf8_bytes() -> None:
    """A long field is cut to at most 120 bytes on a character boundary."""
    for text in ["x" * 500, "é" * 300, "猫" * 300, "𠀋" * 300, "a" + "é" * 300]:
        result = slug(text)
        assert 0 < len(result.encode("utf-8")) <= MAX_FIELD_BYTES
        assert text.startswith(result)


def test_slug_max_chars_shortens_without_a_trailing_dash() -> None:
    """max_chars cuts to that many characters and drops a dash left at the end."""
    assert slug("abcd efgh", max_chars=5) == "abcd"
    assert slug("abcdefgh", max_chars=3) == "abc"


@pytest.mark.parametrize("word", ["हिन्दी", "สวัสดี", "தமிழ்", "שָׁלוֹם"])
def test_slug_keeps_scripts_with_combining_marks(word: str) -> None:
    """Words in scripts that use combining marks survive slugging intact."""
    assert slug(word) == unicodedata.normalize("NFKC", word)


@settings(derandomize=True, max_examples=300)
@given(st.text(max_size=300))
def test_slug_is_always_a_safe_single_component(text: str) -> None:
    """Any text slugs to a non-empty, printable name with no separator, dot prefix or dash ends."""
    result = slug(text)
    assert result
    assert len(result.encode("utf-8")) <= MAX_FIELD_BYTES + 1  # + the reserved-name prefix
    assert not any(ch in result for ch in "/\\\x00")
    assert all(ch.isprintable() and not ch.isspace() for ch in result)
    assert not result.startswith((".", "-"))
    assert not result.endswith((".", "-"))
    assert result.split(".")[0].lower() not in {"con", "prn", "aux", "nul", "com1", "lpt1"}


# --- layout_relpath ----------------------------------------------------------------------

FIELDS: Mapping[str, object] = {
    "model": "nano-banana-pro",
    "aspect_ratio": "16:9",
    "prompt": "cat, watercolor",
    "image_size": "2K",
}


def test_default_layout() -> None:
    """The default layout is model/aspect/prompt-key8.png."""
    assert DEFAULT_LAYOUT == "{model}/{aspect_ratio}/{prompt}-{key8}.png"
    assert layout_relpath(DEFAULT_LAYOUT, FIELDS, key=KEY) == (
        "nano-banana-pro/16x9/cat-watercolor-3f9a2c1d.png"
    )


def test_prompt_is_shortened_to_60_characters() -> None:
    """{prompt} keeps its first 60 characters; other fields keep theirs (up to 120 bytes)."""
    prompt = "word " * 40
    style = "s" * 100
    rel = layout_relpath("{prompt}/{style}", {"prompt": prompt, "style": style}, key=KEY)
    first, second = components(rel)
    assert first == slug(prompt[:60])
    assert len(first) <= 60
    assert second == style + "-3f9a2c1d.png"


def test_key_is_added_when_the_layout_has_none() -> None:
    """A layout without {key} or {key8} gets ``-<key8>`` before ``.png`` so names stay unique."""
    assert layout_relpath("{model}/{prompt}.png", FIELDS, key=KEY) == (
        "nano-banana-pro/cat-watercolor-3f9a2c1d.png"
    )
    assert layout_relpath("{model}/{prompt}-{key}", FIELDS, key=KEY) == (
        f"nano-banana-pro/cat-watercolor-{KEY}.png"
    )
    assert layout_relpath("{key8}/{prompt}", FIELDS, key=KEY) == "3f9a2c1d/cat-watercolor.png"


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("{prompt}-{key8}", "cat-watercolor-3f9a2c1d.png"),
        ("{prompt}-{key8}.png", "cat-watercolor-3f9a2c1d.png"),
        ("{prompt}-{key8}.PNG", "cat-watercolor-3f9a2c1d.PNG"),
        ("{prompt}-{key8}.jpg", "cat-watercolor-3f9a2c1d.jpg.png"),
    ],
)
def test_png_extension_is_ensured(layout: str, expected: str) -> None:
    """The file name always ends in .png (any case), never doubled."""
    assert layout_relpath(layout, FIELDS, key=KEY) == expected


def test_missing_fields_and_variant_default() -> None:
    """An unknown field renders as ``_``; {variant} defaults to 0."""
    assert layout_relpath("{nope}/{variant}-{key8}", FIELDS, key=KEY) == "_/0-3f9a2c1d.png"
    assert layout_relpath("{variant}-{key8}", {"variant": 3}, key=KEY) == "3-3f9a2c1d.png"


def test_key_field_cannot_be_overridden_by_the_plan() -> None:
    """A matrix variable named ``key`` does not replace the task key in the name."""
    assert layout_relpath("{key8}", {"key": "../evil", "key8": "../evil"}, key=KEY) == (
        "3f9a2c1d.png"
    )


@pytest.mark.parametrize("prompt", HOSTILE)
def test_hostile_prompts_give_safe_paths(prompt: str) -> None:
    """Traversal, separators, NUL, device names and blanks in a prompt yield a safe path."""
    rel = layout_relpath(DEFAULT_LAYOUT, {**FIELDS, "prompt": prompt}, key=KEY)
    assert_safe(rel)
    assert len(components(rel)) == 3
    assert components(rel)[-1].endswith("-3f9a2c1d.png")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_in_every_field_give_safe_paths(value: str) -> None:
    """The same hostile text in every directory field still yields a safe path."""
    fields = {"model": value, "aspect_ratio": value, "prompt": value, "image_size": value}
    rel = layout_relpath("{model}/{aspect_ratio}/{image_size}/{prompt}", fields, key=KEY)
    assert_safe(rel)
    assert len(components(rel)) == 4


@pytest.mark.parametrize(
    "layout",
    [
        "../../{prompt}",
        "/abs/{model}/{prompt}",
        "a\\..\\..\\{prompt}",
        "./{model}//{prompt}",
        " .. /{prompt}",
        "...{prompt}",
        ".{prompt}",
        "CON/{prompt}",
        "{model}/./../{prompt}",
    ],
)
def test_hostile_layouts_give_safe_paths(layout: str, tmp_path: Path) -> None:
    """Dot-dot, absolute and backslash layouts are neutralised into a path under the root."""
    rel = layout_relpath(layout, FIELDS, key=KEY)
    assert_safe(rel)
    assert tmp_path.resolve() in resolve_inside(tmp_path, rel).parents


@pytest.mark.parametrize("layout", ["/", ".", "..", "./.."])
def test_empty_layout_falls_back_to_the_default_layout(layout: str) -> None:
    """A layout with no usable component renders exactly like the default layout."""
    assert layout_relpath(layout, FIELDS, key=KEY) == layout_relpath(
        DEFAULT_LAYOUT, FIELDS, key=KEY
    )


@pytest.mark.parametrize("char", ["x", "é", "猫", "𠀋"])
def test_components_stay_under_255_bytes_with_300_byte_inputs(char: str) -> None:
    """Long single- and multibyte fields, alone or several per part, fit in 255 bytes each."""
    value = char * (300 // len(char.encode("utf-8")) + 1)
    fields = {"model": value, "aspect_ratio": value, "prompt": value, "style": value}
    for layout in [
        DEFAULT_LAYOUT,
        "{model}-{style}-{aspect_ratio}/{prompt}-{style}-{model}-{key}.png",
        "{style}{style}{style}{style}",
    ]:
        rel = layout_relpath(layout, fields, key=KEY)
        assert_safe(rel)
        assert rel.endswith(".png")


@pytest.mark.parametrize(
    "layout", ["{prompt}-{style}-{model}-{key8}.png", "{style}-{model}-{aspect_ratio}"]
)
def test_long_names_keep_the_key(layout: str) -> None:
    """Even when a file name must be shortened, it keeps the key, so tasks never collide."""
    long = "é" * 200
    fields = {"prompt": long, "style": long, "model": long, "aspect_ratio": long}
    one = layout_relpath(layout, fields, key=KEY)
    two = layout_relpath(layout, fields, key=OTHER_KEY)
    assert KEY[:8] in components(one)[-1]
    assert one != two


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output root shared by the property tests (they never write into it)."""
    return tmp_path_factory.mktemp("out").resolve()


FIELD_NAMES = ["model", "aspect_ratio", "prompt", "image_size", "style", "variant", "index"]
LAYOUTS = [
    DEFAULT_LAYOUT,
    "{model}/{prompt}",
    "{style}/{aspect_ratio}/{image_size}/{prompt}-{variant}-{key8}.png",
    "{prompt}",
    "../{model}/../../{prompt}",
    "{model}{style}{prompt}",
]


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    fields=st.dictionaries(st.sampled_from(FIELD_NAMES), st.text(max_size=400), max_size=7),
    key=st.text(alphabet="0123456789abcdef", min_size=8, max_size=64),
)
def test_layout_never_escapes_the_root(
    out_root: Path, layout: str, fields: dict[str, str], key: str
) -> None:
    """For any field text the path is safe, resolves inside the root, parts ≤ 255 bytes."""
    rel = layout_relpath(layout, fields, key=key)
    assert_safe(rel)
    target = resolve_inside(out_root, rel)
    assert out_root in target.parents
    assert rel.endswith(".png")
    if layout == DEFAULT_LAYOUT:
        assert components(rel)[-1].endswith(f"-{key[:8]}.png")


# --- resolve_inside ----------------------------------------------------------------------


def test_resolve_inside_accepts_paths_under_the_root(tmp_path: Path) -> None:
    """Relative paths that stay inside resolve to their absolute location."""
    root = tmp_path.resolve()
    assert resolve_inside(tmp_path, "a/b.png") == root / "a" / "b.png"
    assert resolve_inside(tmp_path, "a/../b.png") == root / "b.png"
    assert resolve_inside(tmp_path, "") == root


@pytest.mark.parametrize(
    "relpath", ["../x.png", "a/../../x.png", "/etc/passwd", "..", "a/b/../../../x"]
)
def test_resolve_inside_refuses_escapes(tmp_path: Path, relpath: str) -> None:
    """Any path that lands outside the root raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="escapes the output folder"):
        resolve_inside(tmp_path / "root", relpath)


def test_resolve_inside_refuses_a_symlink_that_leads_outside(tmp_path: Path) -> None:
    """A link inside the root pointing outside cannot carry a write out of the tree."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file-link").symlink_to(outside / "victim.png")
    with pytest.raises(ConfigError):
        resolve_inside(root, "link/x.png")
    with pytest.raises(ConfigError):
        resolve_inside(root, "file-link")


def test_resolve_inside_allows_links_that_stay_inside(tmp_path: Path) -> None:
    """Links within the tree, and a root that is itself a link, are fine."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "alias").symlink_to(real / "sub", target_is_directory=True)
    link_root = tmp_path / "root-link"
    link_root.symlink_to(real, target_is_directory=True)
    assert resolve_inside(link_root, "alias/x.png") == real.resolve() / "sub" / "x.png"


# --- write_atomic --------------------------------------------------------------------------


def test_write_atomic_writes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """write_atomic creates parents, writes the text, replaces old content, leaves no temp."""
    path = tmp_path / "deep" / "dir" / "summary.json"
    write_atomic(path, "first")
    write_atomic(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(path.parent) == ["summary.json"]


def test_failed_write_atomic_keeps_the_old_file(tmp_path: Path) -> None:
    """If writing fails midway, the destination keeps its previous content."""
    path = tmp_path / "summary.json"
    write_atomic(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \udc80")
    assert path.read_text(encoding="utf-8") == "old"


def test_failed_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    """A failed write cleans up its temporary file."""
    path = tmp_path / "summary.json"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \udc80")
    assert os.listdir(tmp_path) == []


# --- write_metadata ------------------------------------------------------------------------


async def rows_of(items: list[dict[str, Any]]) -> AsyncIterator[Mapping[str, Any]]:
    """Yield the given rows asynchronously."""
    for item in items:
        yield item


@pytest.mark.anyio
async def test_write_metadata_writes_one_json_line_per_row(tmp_path: Path) -> None:
    """Each row becomes one JSON line, file_name first-class, non-ASCII kept as UTF-8."""
    rows: list[dict[str, Any]] = [
        {"file_name": "m/16x9/cat-3f9a2c1d.png", "prompt": "猫, watercolor", "key": KEY},
        {"file_name": "m/1x1/dog-77aa0c1d.png", "prompt": "dog\nnewline", "vars": {"n": 2}},
    ]
    assert await write_metadata(tmp_path, rows_of(rows)) == 2
    text = (tmp_path / METADATA_NAME).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 2
    assert text.endswith("\n")
    assert [json.loads(line) for line in lines] == rows
    assert all("file_name" in json.loads(line) for line in lines)
    assert "猫" in text
    assert sorted(os.listdir(tmp_path)) == [METADATA_NAME]


@pytest.mark.anyio
async def test_write_metadata_replaces_the_file_only_when_complete(tmp_path: Path) -> None:
    """While rows stream, readers still see the old manifest; then the new one appears whole."""
    manifest = tmp_path / METADATA_NAME
    manifest.write_text('{"file_name": "old.png"}\n', encoding="utf-8")
    seen_mid_way: list[str] = []

    async def rows() -> AsyncIterator[Mapping[str, Any]]:
        for i in range(3):
            yield {"file_name": f"{i}.png"}
            seen_mid_way.append(manifest.read_text(encoding="utf-8"))

    assert await write_metadata(tmp_path, rows()) == 3
    assert seen_mid_way == ['{"file_name": "old.png"}\n'] * 3
    assert [json.loads(x)["file_name"] for x in manifest.read_text().splitlines()] == [
        "0.png",
        "1.png",
        "2.png",
    ]
    assert sorted(os.listdir(tmp_path)) == [METADATA_NAME]


@pytest.mark.anyio
async def test_write_metadata_with_no_rows_writes_an_empty_file(tmp_path: Path) -> None:
    """No rows: an empty manifest (and the root folder) still exist."""
    root = tmp_path / "new-root"
    assert await write_metadata(root, rows_of([]), name="other.jsonl") == 0
    assert (root / "other.jsonl").read_text() == ""


@pytest.mark.anyio
async def test_failed_write_metadata_keeps_the_old_manifest(tmp_path: Path) -> None:
    """If the rows fail midway, the previous manifest is untouched."""
    manifest = tmp_path / METADATA_NAME
    manifest.write_text("old\n", encoding="utf-8")

    async def rows() -> AsyncIterator[Mapping[str, Any]]:
        yield {"file_name": "0.png"}
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError, match="ledger went away"):
        await write_metadata(tmp_path, rows())
    assert manifest.read_text(encoding="utf-8") == "old\n"


@pytest.mark.anyio
async def test_failed_write_metadata_leaves_no_temp_file(tmp_path: Path) -> None:
    """A failed manifest write cleans up its temporary file."""

    async def rows() -> AsyncIterator[Mapping[str, Any]]:
        yield {"file_name": "0.png"}
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError):
        await write_metadata(tmp_path, rows())
    assert os.listdir(tmp_path) == []
