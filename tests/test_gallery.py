"""Tests for batchgen.gallery: grid layout, cells, escaping, incremental thumbnails, sheets.

The job is run once per module by the real runner against the in-process simulator
(2 models x 3 ratios x 2 subjects, one combination forced to fail moderation, one
subject a hostile string); each test works on its own copy of the output folder.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import anyio
import pytest
from PIL import Image

from batchgen.errors import ConfigError, UsageError
from batchgen.gallery.build import (
    THUMBS_DIR,
    build_gallery,
    configure_parser,
    make_gallery,
    run_from_args,
)
from batchgen.gallery.model import (
    Dimension,
    TaskView,
    build_grids,
    choose_axes,
    dimensions,
    paginate,
    variant_dimension,
)
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.schema import TaskState
from batchgen.ledger.store import Ledger
from batchgen.runner.job import RunOptions, arun, sim_session
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import expand

HOSTILE = "<script>alert(1)</script>"
MODELS = ("nano-banana-fast", "gpt-image-2")
RATIOS = ("1:1", "3:2", "2:3")
SUBJECTS = ("a ceramic teapot", f'{HOSTILE} & "friends"')

SPEC = textwrap.dedent(
    """\
    version: 1
    name: gallery-test
    output: out/gallery-test
    prompt: "A studio photo of {subject}"
    matrix:
      model: [nano-banana-fast, gpt-image-2]
      aspect_ratio: ["1:1", "3:2", "2:3"]
      subject: ["a ceramic teapot", '<script>alert(1)</script> & "friends"']
      include:
        - model: gpt-image-2
          aspect_ratio: "3:2"
          subject: a ceramic teapot
          prompt: "A studio photo of {subject} [sim:fail=output_moderation]"
    """
)


def write_spec(folder: Path, text: str = SPEC) -> Path:
    """Write the test spec into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def run_job(spec: Spec, image_scale: float = 0.05) -> None:
    """Run ``spec`` to the end against the in-process simulator (tiny images: fast)."""
    async with sim_session(latency=0.02, image_scale=image_scale) as (base_url, auth):
        await arun(spec, RunOptions(base_url=base_url, auth=auth, seed=0, first_poll=0.02))


@pytest.fixture(scope="module")
def ran_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the test spec and the output of one finished run of it."""
    folder = tmp_path_factory.mktemp("gallery-job")
    spec = load_spec(write_spec(folder))
    anyio.run(run_job, spec, backend="asyncio")
    return folder


@pytest.fixture
def job(ran_job: Path, tmp_path: Path) -> Spec:
    """A private copy of the finished job, loaded."""
    copy = tmp_path / "job"
    shutil.copytree(ran_job, copy)
    return load_spec(copy / "job.yaml")


def build(spec: Spec, *, x: str | None = None, y: str | None = None) -> Path:
    """Run :func:`build_gallery` to completion."""
    return anyio.run(lambda: build_gallery(spec, x=x, y=y), backend="asyncio")


@dataclass
class Node:
    """An element of a parsed page: tag, attributes, text inside, children."""

    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def classes(self) -> set[str]:
        """The element's CSS classes."""
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Iterator[Node]:
        """This element and every element under it, in document order."""
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        """Elements under this one with ``tag`` (and the class ``cls``)."""
        return [n for n in self.iter() if n.tag == tag and (cls is None or cls in n.classes())]

    def all_text(self) -> str:
        """The text of this element and everything under it."""
        return self.text + "".join(child.all_text() for child in self.children)


_VOID = {"meta", "link", "img", "input", "br", "hr"}


class TreeBuilder(HTMLParser):
    """A small DOM built with html.parser, enough to check the page's structure."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Open an element (void elements close at once)."""
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        """Close the innermost open element of this tag."""
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        """Keep text as a text child, so order is preserved."""
        self.stack[-1].children.append(Node("#text", {}, text=data))


def parse(path: Path) -> Node:
    """Parse the page at ``path``."""
    builder = TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    return builder.root


def figures(page: Node) -> list[Node]:
    """The task figures of a page."""
    return page.find_all("figure", "task")


def texts(nodes: list[Node]) -> list[str]:
    """The stripped text of each node."""
    return [n.all_text().strip() for n in nodes]


# --- the page --------------------------------------------------------------------------


def test_one_figure_per_task(job: Spec) -> None:
    """The page shows every task of the spec exactly once, by key."""
    page = parse(build(job))
    keys = [f.attrs["data-key"] for f in figures(page)]
    assert sorted(keys) == sorted(task.key for task in expand(job))
    assert len(keys) == 12


def test_default_axes_and_labels(job: Spec) -> None:
    """By default the three ratios run down, the two models across, one grid per subject."""
    page = parse(build(job))
    grids = page.find_all("section", "grid")
    assert len(grids) == 2
    for grid in grids:
        assert texts(grid.find_all("th", "xval")) == list(MODELS)
        assert texts(grid.find_all("th", "yval")) == list(RATIOS)
        corner = grid.find_all("th", "corner")[0].all_text()
        assert "aspect_ratio" in corner
        assert "model" in corner
    select = next(s for s in page.find_all("select") if "data-filter" in s.attrs)
    assert texts(select.find_all("option")) == ["all", *SUBJECTS]
    assert [g.attrs["data-f0"] for g in grids] == ["0", "1"]


def test_explicit_axes(job: Spec) -> None:
    """--x and --y choose the axes; the remaining one becomes the grids and the filter."""
    page = parse(build(job, x="subject", y="model"))
    grids = page.find_all("section", "grid")
    assert len(grids) == 3  # one per aspect ratio
    assert texts(grids[0].find_all("th", "xval")) == list(SUBJECTS)
    assert texts(grids[0].find_all("th", "yval")) == list(MODELS)
    assert len(figures(page)) == 12


def test_hostile_prompt_is_escaped(job: Spec) -> None:
    """A prompt and an axis value holding markup stay text: the page's only script is ours."""
    index = build(job)
    raw = index.read_text(encoding="utf-8")
    assert HOSTILE not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;friends&quot;" in raw
    page = parse(index)
    scripts = page.find_all("script")
    assert len(scripts) == 1
    assert "alert(1)" not in scripts[0].all_text()
    prompts = texts(page.find_all("p", "prompt"))
    assert f'A studio photo of {HOSTILE} & "friends"' in prompts
    assert f'{HOSTILE} & "friends"' in texts(page.find_all("th", "yval")) + texts(
        page.find_all("option")
    )


def test_failed_cell_shows_state_and_error(job: Spec) -> None:
    """The task the simulator failed shows its state and error code instead of an image."""
    page = parse(build(job))
    failed = [f for f in figures(page) if f.attrs["data-state"] == "failed"]
    assert len(failed) == 1
    assert not failed[0].find_all("img")
    assert "output_moderation" in failed[0].find_all("p", "err")[0].all_text()
    assert "failed" in failed[0].find_all("div", "ph")[0].all_text()


def test_done_cells_link_image_and_thumbnail(job: Spec) -> None:
    """Done cells link the full image and a lazy thumbnail, both relative and on disk."""
    index = build(job)
    page = parse(index)
    done = [f for f in figures(page) if f.attrs["data-state"] == "done"]
    assert len(done) == 11
    for fig in done:
        link = fig.find_all("a", "img")[0]
        img = link.find_all("img")[0]
        assert img.attrs["loading"] == "lazy"
        assert img.attrs["src"].startswith(f"{THUMBS_DIR}/")
        for url in (link.attrs["href"], img.attrs["src"]):
            assert "://" not in url
            assert not url.startswith("/")
            assert (index.parent / urllib.parse.unquote(url)).is_file()
        meta = fig.find_all("p", "meta")[0].all_text()
        assert fig.attrs["data-key"][:8] in meta
        assert "CNY" in meta
        assert "done" in meta


def test_missing_file_shows_missing(job: Spec) -> None:
    """A done task whose image was deleted is shown as missing, with the path."""
    first = parse(build(job))
    fig = next(f for f in figures(first) if f.attrs["data-state"] == "done")
    href = urllib.parse.unquote(fig.find_all("a", "img")[0].attrs["href"])
    (job.output_dir / href).unlink()
    page = parse(build(job))
    missing = [f for f in figures(page) if f.attrs["data-state"] == "missing"]
    assert [f.attrs["data-key"] for f in missing] == [fig.attrs["data-key"]]
    assert "file not found" in missing[0].all_text()
    assert "1 missing" in page.find_all("p", "summary")[0].all_text()


def test_unknown_task_shows_it_may_have_been_charged(job: Spec) -> None:
    """A task whose submission answer was lost is shown as unknown, with its error."""
    key = next(task.key for task in expand(job) if task.index == 0)

    async def lose_answer() -> None:
        async with Ledger.open(ledger_path(job), create=False) as ledger:
            await ledger.bulk_set_state(
                from_states=[TaskState.DONE],
                to_state=TaskState.UNKNOWN,
                detail="test",
                where="key = ?",
                params=[key],
                error=("interrupted", "the run stopped before the answer was recorded"),
            )

    anyio.run(lose_answer, backend="asyncio")
    page = parse(build(job))
    (unknown,) = [f for f in figures(page) if f.attrs["data-state"] == "unknown"]
    assert unknown.attrs["data-key"] == key
    error = unknown.find_all("p", "err")[0].all_text()
    assert error.startswith("interrupted: the run stopped")
    assert "may have been charged" in error


def test_task_not_run_yet_is_pending(job: Spec) -> None:
    """A task the spec gained after the run shows as pending, with its estimated price."""
    spec_path = job.path
    spec_path.write_text(SPEC.replace("'<script>", "a brass lamp, '<script>"), encoding="utf-8")
    page = parse(build(load_spec(spec_path)))
    pending = [f for f in figures(page) if f.attrs["data-state"] == "pending"]
    assert len(pending) == 6
    assert all("est." in f.all_text() for f in pending)


def test_thumbnails_are_incremental(job: Spec) -> None:
    """A second build makes no thumbnail and leaves every file it wrote untouched."""
    first = anyio.run(lambda: make_gallery(job), backend="asyncio")
    assert first.thumbs_made == 11
    assert first.thumbs_failed == 0
    written = [*sorted((job.output_dir / THUMBS_DIR).iterdir()), first.index]
    stamps = {p: p.stat().st_mtime_ns for p in written}
    second = anyio.run(lambda: make_gallery(job), backend="asyncio")
    assert second.thumbs_made == 0
    assert [*sorted((job.output_dir / THUMBS_DIR).iterdir()), second.index] == written
    assert {p: p.stat().st_mtime_ns for p in written} == stamps
    with Image.open(written[0]) as thumb:
        assert max(thumb.size) <= 256


def test_contact_sheets_decode(job: Spec) -> None:
    """--png writes one decodable sheet per grid, linked from the page, redrawn only on change."""
    result = anyio.run(lambda: make_gallery(job, png=True), backend="asyncio")
    assert len(result.sheets) == 2
    assert result.sheets_made == 2
    for sheet in result.sheets:
        with Image.open(sheet) as image:
            image.verify()
        with Image.open(sheet) as image:
            assert image.format == "PNG"
            assert image.width > 400
            assert image.height > 600
    links = parse(result.index).find_all("a", "sheet")
    assert [link.attrs["href"] for link in links] == [
        f"contact-sheets/{p.name}" for p in result.sheets
    ]
    again = anyio.run(lambda: make_gallery(job, png=True), backend="asyncio")
    assert again.sheets_made == 0


def test_large_job_splits_into_pages(job: Spec) -> None:
    """Past the page size the gallery spreads over linked pages; a rebuild drops extra ones."""
    # Each subject's grid holds 6 tasks in rows of 2: at 4 a page, each is cut in two.
    small = anyio.run(lambda: make_gallery(job, page_size=4), backend="asyncio")
    assert [p.name for p in small.pages] == [
        "index.html",
        "index-2.html",
        "index-3.html",
        "index-4.html",
    ]
    assert "(rows 1\u20132 of 3)" in small.index.read_text(encoding="utf-8")
    keys: list[str] = []
    for path in small.pages:
        page = parse(path)
        keys += [f.attrs["data-key"] for f in figures(page)]
        nav = page.find_all("nav", "pages")[0]
        assert [a.attrs["href"] for a in nav.find_all("a")] == [p.name for p in small.pages]
    assert sorted(keys) == sorted(task.key for task in expand(job))
    whole = anyio.run(lambda: make_gallery(job), backend="asyncio")
    assert whole.pages == (whole.index,)
    assert not (job.output_dir / "index-2.html").exists()


# --- errors and the command line ---------------------------------------------------------


def test_unknown_axis_is_a_usage_error(job: Spec) -> None:
    """An axis the job lacks is refused with the job's axes listed, before any file is written."""
    with pytest.raises(UsageError, match=r"--x 'colour' is not an axis.*model, aspect_ratio"):
        build(job, x="colour")
    with pytest.raises(UsageError, match="both 'model'"):
        build(job, x="model", y="model")
    assert not (job.output_dir / "index.html").exists()


def test_no_ledger_is_a_config_error(tmp_path: Path, job: Spec) -> None:
    """A job that never ran has no gallery: ConfigError says to run it (or to add --sim)."""
    spec = load_spec(write_spec(tmp_path / "fresh"))
    with pytest.raises(ConfigError, match=r"has not run yet \(run `batchgen run"):
        build(spec)
    sim_output = job.for_simulator().output_dir
    job.output_dir.rename(sim_output)
    with pytest.raises(ConfigError, match="only a simulator run exists: add --sim"):
        build(job)
    assert build(job.for_simulator()).is_file()


def test_cli_builds_and_prints_the_path(job: Spec, capsys: pytest.CaptureFixture[str]) -> None:
    """`gallery SPEC --x ... --png` builds the page and prints its path on stdout."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args([str(job.path), "--x", "subject", "--png"])
    assert run_from_args(args) == 0
    index = job.output_dir / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    assert (job.output_dir / "contact-sheets").is_dir()


# --- layout rules (no job needed) ------------------------------------------------------------


def view(key: str, variant: int = 0, **values: str) -> TaskView:
    """A done task view with these variables."""
    return TaskView(
        key=key,
        index=0,
        variant=variant,
        prompt="p",
        model=values.get("model", "m"),
        aspect_ratio=values.get("aspect_ratio", "1:1"),
        image_size="1K",
        vars=values,
        state="done",
    )


def dim(name: str, *values: str) -> Dimension:
    """A single-variable dimension."""
    return Dimension(name, (name,), tuple((v,) for v in values))


def test_default_axes_prefer_most_values_fewer_across() -> None:
    """The two largest axes are used, the smaller across; ties put model across."""
    dims = [
        dim("aspect_ratio", "1:1", "3:2"),
        dim("subject", "a", "b", "c"),
        dim("model", "x", "y"),
    ]
    choice = choose_axes(dims, x=None, y=None)
    assert (choice.x and choice.x.name, choice.y and choice.y.name) == ("model", "subject")
    assert [f.name for f in choice.filters] == ["aspect_ratio"]
    tie = choose_axes([dim("aspect_ratio", "1", "2"), dim("model", "x", "y")], x=None, y=None)
    assert (tie.x and tie.x.name, tie.y and tie.y.name) == ("model", "aspect_ratio")


def test_matrix_without_axes_uses_varying_variables() -> None:
    """With include entries only, each variable that differs between tasks is an axis."""
    tasks = [
        view("k1", site="prod", datacenter="a", model="m"),
        view("k2", site="staging", datacenter="b", model="m"),
    ]
    dims = dimensions([], tasks)
    assert [(d.name, d.values) for d in dims] == [
        ("site", (("prod",), ("staging",))),
        ("datacenter", (("a",), ("b",))),
    ]


def test_single_axis_gives_one_row() -> None:
    """A job with one axis is one row across; single-valued axes are fixed, not filters."""
    tasks = [view("k1", subject="a"), view("k2", subject="b")]
    dims = [dim("subject", "a", "b"), dim("model", "m")]
    choice = choose_axes(dims, x=None, y=None)
    assert choice.x is not None
    assert choice.x.name == "subject"
    assert choice.y is None
    assert [d.name for d in choice.fixed] == ["model"]
    assert not choice.filters
    (grid,) = build_grids(tasks, choice)
    assert grid.ys == [0]
    assert grid.xs == [0, 1]


def test_variants_stack_in_a_cell_unless_laid_out() -> None:
    """Repeat variants share their combination's cell, or get a column with --x variant."""
    tasks = [view(f"k{v}", variant=v, subject="a") for v in range(3)]
    dims = [dim("subject", "a")]
    (grid,) = build_grids(tasks, choose_axes(dims, x=None, y=None))
    assert [t.key for t in grid.cells[(0, 0)]] == ["k0", "k1", "k2"]
    spread = choose_axes(dims, x="variant", y=None, variant=variant_dimension(tasks))
    (grid,) = build_grids(tasks, spread)
    assert grid.xs == [0, 1, 2]
    assert all(len(c) == 1 for c in grid.cells.values())


def test_paginate_keeps_grids_whole_and_chunks_big_ones() -> None:
    """Small grids share pages; a grid over the page size is cut into row chunks."""
    tasks = [view(f"k{i}", subject=str(i % 5), group=str(i // 10)) for i in range(30)]
    dims = [dim("subject", *"01234"), dim("group", "0", "1", "2")]
    choice = choose_axes(dims, x="group", y="subject")
    (grid,) = build_grids(tasks, choice)
    pages = paginate([grid], 12)
    assert [p.task_count for p in pages] == [12, 12, 6]
    assert [part.chunk for p in pages for part in p.parts] == [1, 2, 3]
    assert sum(p.task_count for p in paginate([grid], 100)) == 30
