"""The gallery's grid model: which task goes in which cell of which grid, on which page.

Pure data, no I/O: :mod:`batchgen.gallery.build` reads the ledger into :class:`TaskView`
values, this module lays them out, and :mod:`batchgen.gallery.html` and
:mod:`batchgen.gallery.sheet` draw the result.

A *dimension* is what a grid can be laid out along: a matrix axis (a row axis is one
dimension, its value being the tuple of its columns), or, for a matrix without axes,
each variable whose value varies between tasks. ``variant`` (with ``repeat`` > 1) is a
dimension only when asked for; otherwise the variants of a combination stack in one
cell. One dimension runs across (``x``), one down (``y``); every other dimension with
more than one value splits the tasks into sub-grids, one per combination of their
values, which the page offers as filters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from batchgen.errors import UsageError
from batchgen.spec.combos import Axis

__all__ = [
    "VARIANT",
    "Choice",
    "Dimension",
    "Grid",
    "ImageView",
    "Page",
    "Part",
    "SheetLink",
    "TaskView",
    "Value",
    "build_grids",
    "choose_axes",
    "dimensions",
    "grid_title",
    "page_filename",
    "paginate",
    "variant_dimension",
]

#: A dimension's value: the texts of its variables (``None`` where a task lacks one).
Value = tuple[str | None, ...]
#: The name that lays out ``repeat`` variants instead of stacking them in a cell.
VARIANT: Final = "variant"
UNSET_LABEL: Final = "(unset)"

# Ties in the number of values: models compare best side by side (across), content
# variables (subjects, prompts, reference images) next; sizes and ratios last, as a
# split into sub-grids keeps the cells of one grid the same shape.
_RANK: Final = {"model": 0, "aspect_ratio": 2, "image_size": 3}
_CONTENT_RANK: Final = 1


@dataclass(frozen=True, slots=True)
class ImageView:
    """One image file of a done task: links relative to the gallery page."""

    href: str
    sha256: str
    width: int | None
    height: int | None
    thumb: str | None = None  # relative path of the thumbnail; None if it cannot be made
    thumb_size: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the gallery shows of one task.

    ``state`` is the ledger state, ``"missing"`` for a done task whose file is gone or
    changed size, and ``"pending"`` for a task of the spec the ledger does not know yet.
    ``cost`` is what was charged (done, failed) or the planned price (other states);
    ``cost_is_estimate`` tells them apart.
    """

    key: str
    index: int
    variant: int
    prompt: str
    model: str
    aspect_ratio: str
    image_size: str
    vars: Mapping[str, str]
    state: str
    error: str = ""
    cost: float = 0.0
    cost_is_estimate: bool = False
    images: tuple[ImageView, ...] = ()

    def value(self, variables: Sequence[str]) -> Value:
        """This task's value of a dimension over ``variables``."""
        return tuple(
            str(self.variant) if name == VARIANT else self.vars.get(name) for name in variables
        )


@dataclass(frozen=True, slots=True)
class Dimension:
    """A matrix axis (or varying variable) with the values tasks actually have, in order.

    ``values`` lists the axis's own values first, in spec order (those no task has are
    dropped), then values only include entries brought in, in task order.
    """

    name: str
    variables: tuple[str, ...]
    values: tuple[Value, ...]

    def label(self, value: Value) -> str:
        """The text of ``value`` for headings: one variable's text, or columns joined."""
        if len(value) == 1:
            return value[0] if value[0] is not None else UNSET_LABEL
        parts = [v for v in value if v is not None]
        return " · ".join(parts) if parts else UNSET_LABEL

    def index(self) -> dict[Value, int]:
        """Position of each value."""
        return {value: i for i, value in enumerate(self.values)}


@dataclass(frozen=True, slots=True)
class Choice:
    """The layout: ``x`` across, ``y`` down (either may be None), ``filters`` split the
    tasks into sub-grids, ``fixed`` are dimensions with a single value."""

    x: Dimension | None
    y: Dimension | None
    filters: tuple[Dimension, ...]
    fixed: tuple[Dimension, ...]


@dataclass(slots=True)
class Grid:
    """One sub-grid: the tasks sharing one value of every filter dimension.

    ``filter_values`` holds the index of that value in each filter's ``values``;
    ``xs`` and ``ys`` the indexes of the x and y values present, in order; ``cells``
    the tasks per ``(y, x)`` index pair (0 for an absent dimension), in task order.
    """

    number: int
    filter_values: tuple[int, ...]
    xs: list[int] = field(default_factory=list)
    ys: list[int] = field(default_factory=list)
    cells: dict[tuple[int, int], list[TaskView]] = field(default_factory=dict)

    def tasks_in_row(self, y: int) -> int:
        """How many tasks row ``y`` holds."""
        return sum(len(self.cells.get((y, x), ())) for x in self.xs)

    @property
    def task_count(self) -> int:
        """How many tasks the grid holds."""
        return sum(len(tasks) for tasks in self.cells.values())


@dataclass(frozen=True, slots=True)
class Part:
    """The rows ``ys`` of ``grid`` that go on one page (a whole grid, or a chunk of it)."""

    grid: Grid
    ys: tuple[int, ...]
    chunk: int = 0  # 0: the whole grid; 1, 2, ...: which chunk of a grid split over pages
    chunks: int = 1

    @property
    def task_count(self) -> int:
        """How many tasks these rows hold."""
        return sum(self.grid.tasks_in_row(y) for y in self.ys)


@dataclass(frozen=True, slots=True)
class SheetLink:
    """A contact sheet of one grid: its path relative to the output, and the rows
    (y indexes) it shows, so a page links only the sheets of the rows it holds."""

    path: str
    ys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """One HTML page: its number (1-based), file name, and the grid parts it shows."""

    number: int
    filename: str
    parts: tuple[Part, ...]

    @property
    def task_count(self) -> int:
        """How many tasks the page shows."""
        return sum(part.task_count for part in self.parts)


def dimensions(axes: Sequence[Axis], tasks: Sequence[TaskView]) -> list[Dimension]:
    """The dimensions of a job: one per axis, or (no axes) one per varying variable."""
    if axes:
        return [
            _dimension(axis.name, axis.names, [v.values for v in axis.values], tasks)
            for axis in axes
        ]
    names: dict[str, set[str | None]] = {}
    for task in tasks:
        for name, value in task.vars.items():
            names.setdefault(name, set()).add(value)
    # A variable some tasks lack counts as varying too: ``None`` is one of its values.
    for name in names:
        if any(name not in task.vars for task in tasks):
            names[name].add(None)
    return [
        _dimension(name, (name,), [], tasks) for name, values in names.items() if len(values) > 1
    ]


def _dimension(
    name: str,
    variables: tuple[str, ...],
    declared: list[tuple[str, ...]],
    tasks: Sequence[TaskView],
) -> Dimension:
    seen: dict[Value, None] = {}
    for task in tasks:
        seen.setdefault(task.value(variables), None)
    ordered: list[Value] = [v for v in declared if v in seen]
    listed = set(ordered)
    ordered += [v for v in seen if v not in listed]
    return Dimension(name, variables, tuple(ordered))


def variant_dimension(tasks: Sequence[TaskView]) -> Dimension:
    """The ``variant`` dimension: 0, 1, ... as the tasks have them."""
    variants = sorted({task.variant for task in tasks})
    return Dimension(VARIANT, (VARIANT,), tuple((str(v),) for v in variants))


def _rank(dim: Dimension) -> int:
    return _RANK.get(dim.name, _CONTENT_RANK)


def choose_axes(
    dims: Sequence[Dimension],
    *,
    x: str | None,
    y: str | None,
    variant: Dimension | None = None,
) -> Choice:
    """Lay out ``dims``: ``x`` and ``y`` by name, or chosen when not given.

    The defaults are the two dimensions with the most values; the one with fewer goes
    across (pages scroll down more easily than sideways); ties go by rank (``model``,
    then content variables, then ``aspect_ratio``, then ``image_size``), then spec
    order, the better-ranked across. One dimension gives a one-row grid; none, one
    cell. ``variant`` (given when ``repeat`` > 1) may be named, never chosen.

    Raises UsageError for a name that is not a dimension, or the same name twice.
    """
    by_name = {dim.name: dim for dim in dims}
    if variant is not None:
        by_name.setdefault(VARIANT, variant)
    for option, name in (("--x", x), ("--y", y)):
        if name is not None and name not in by_name:
            known = ", ".join(by_name) or "none"
            raise UsageError(f"{option} {name!r} is not an axis of this job (its axes: {known})")
    if x is not None and x == y:
        raise UsageError(f"--x and --y are both {x!r}: pick two different axes")
    chosen_x = by_name[x] if x is not None else None
    chosen_y = by_name[y] if y is not None else None
    taken = {d.name for d in (chosen_x, chosen_y) if d is not None}
    order = {dim.name: i for i, dim in enumerate(dims)}
    candidates = sorted(
        (d for d in dims if d.name not in taken and len(d.values) > 1),
        key=lambda d: (-len(d.values), _rank(d), order[d.name]),
    )
    if chosen_x is None and chosen_y is None:
        top = candidates[:2]
        if len(top) == 2:
            first, second = top
            # Fewer values across; on a tie ``top`` is already in rank order.
            if len(second.values) < len(first.values):
                first, second = second, first
            chosen_x, chosen_y = first, second
        elif top:
            chosen_x = top[0]
        elif dims:
            chosen_x = dims[0]  # every dimension has a single value: a one-cell row
    elif chosen_x is None:
        chosen_x = candidates[0] if candidates else None
    elif chosen_y is None:
        chosen_y = candidates[0] if candidates else None
    taken = {d.name for d in (chosen_x, chosen_y) if d is not None}
    rest = [d for d in dims if d.name not in taken]
    return Choice(
        x=chosen_x,
        y=chosen_y,
        filters=tuple(d for d in rest if len(d.values) > 1),
        fixed=tuple(d for d in rest if len(d.values) == 1),
    )


def build_grids(tasks: Sequence[TaskView], choice: Choice) -> list[Grid]:
    """Place every task in exactly one cell of one sub-grid; grids in filter-value order."""
    filter_index = [f.index() for f in choice.filters]
    x_index = choice.x.index() if choice.x is not None else {}
    y_index = choice.y.index() if choice.y is not None else {}
    grids: dict[tuple[int, ...], Grid] = {}
    for task in tasks:
        fv = tuple(
            idx[task.value(f.variables)]
            for f, idx in zip(choice.filters, filter_index, strict=True)
        )
        grid = grids.get(fv)
        if grid is None:
            grid = grids[fv] = Grid(number=0, filter_values=fv)
        xi = x_index[task.value(choice.x.variables)] if choice.x is not None else 0
        yi = y_index[task.value(choice.y.variables)] if choice.y is not None else 0
        grid.cells.setdefault((yi, xi), []).append(task)
    ordered = [grids[k] for k in sorted(grids)]
    for number, grid in enumerate(ordered, 1):
        grid.number = number
        grid.xs = sorted({xi for _, xi in grid.cells})
        grid.ys = sorted({yi for yi, _ in grid.cells})
    return ordered


def grid_title(choice: Choice, filter_values: Sequence[int]) -> str:
    """The title of the grid with these filter values: ``name: value · ...``."""
    names = [
        f"{f.name}: {f.label(f.values[v])}"
        for f, v in zip(choice.filters, filter_values, strict=True)
    ]
    return " · ".join(names) or "all tasks"


def page_filename(number: int) -> str:
    """``index.html`` for page 1, ``index-<n>.html`` after it."""
    return "index.html" if number == 1 else f"index-{number}.html"


def paginate(grids: Sequence[Grid], page_size: int) -> list[Page]:
    """Split ``grids`` over pages of at most ``page_size`` tasks (a single row may exceed it).

    Whole grids share a page while they fit; a grid larger than a page is cut into
    chunks of whole rows, each chunk on a page of its own. There is always one page.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    pages: list[list[Part]] = [[]]
    used = 0
    for grid in grids:
        size = grid.task_count
        if size <= page_size:
            if used + size > page_size and pages[-1]:
                pages.append([])
                used = 0
            pages[-1].append(Part(grid, tuple(grid.ys)))
            used += size
            continue
        chunks: list[list[int]] = [[]]
        in_chunk = 0
        for yi in grid.ys:
            row = grid.tasks_in_row(yi)
            if in_chunk + row > page_size and chunks[-1]:
                chunks.append([])
                in_chunk = 0
            chunks[-1].append(yi)
            in_chunk += row
        if pages[-1]:
            pages.append([])
        for i, ys in enumerate(chunks, 1):
            if i > 1:
                pages.append([])
            pages[-1].append(Part(grid, tuple(ys), chunk=i, chunks=len(chunks)))
        pages.append([])
        used = 0
    if len(pages) > 1 and not pages[-1]:
        pages.pop()
    return [Page(n, page_filename(n), tuple(parts)) for n, parts in enumerate(pages, 1)]
