"""Matrix combinations with GitHub Actions' ``strategy.matrix`` semantics, counted without
enumerating them.

A matrix is a list of axes. Each axis value sets one or more variables (a plain axis
sets one; a row axis sets one per column). The combinations are built exactly as
GitHub's own ``MatrixBuilder`` does:

1. the cross product of the axes, first axis outermost; no axes means no product;
2. every combination matching an ``exclude`` entry is dropped (an entry matches when
   all of its keys equal the combination's values);
3. each ``include`` entry is split into *match* keys (variables some axis sets) and
   *added* keys (all others). It is merged into every remaining combination its match
   keys agree with, in order, so later entries overwrite values added by earlier ones
   but never an axis value;
4. every include entry that matched no combination is appended as a combination of
   its own.

With no axes and no include entries, the matrix is one empty combination (the spec's
defaults). Exclude and include matching is turned into one bitmask per axis value, so
a combination is tested with a few integer ANDs, and counting walks the axes
depth-first, grouping values that no entry tells apart; a product of 10^9 is counted
in microseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from batchgen.spec.sources import ImageRef, Where

__all__ = [
    "Axis",
    "AxisValue",
    "ComboClass",
    "Counts",
    "MatrixDef",
    "MatrixEntry",
    "count_combinations",
    "iter_combinations",
    "walk_classes",
]


@dataclass(frozen=True, slots=True)
class AxisValue:
    """One value of an axis: the texts of the axis's variables, in ``Axis.names`` order."""

    values: tuple[str, ...]
    where: Where
    images: tuple[ImageRef, ...] | None = None  # set when the value chooses reference images


@dataclass(frozen=True, slots=True)
class Axis:
    """A named axis; ``names`` are the variables each value sets."""

    name: str
    names: tuple[str, ...]
    values: tuple[AxisValue, ...]
    where: Where
    rows_from: str | None = None  # the row file, for row axes


@dataclass(frozen=True, slots=True)
class MatrixEntry:
    """An ``include`` or ``exclude`` entry.

    ``match`` holds the keys some axis sets (for exclude: all keys); ``adds`` the other
    keys of an include entry; ``images`` the reference images an include entry adds.
    """

    match: tuple[tuple[str, str], ...]
    adds: tuple[tuple[str, str], ...]
    where: Where
    images: tuple[ImageRef, ...] | None = None


@dataclass(frozen=True, slots=True)
class MatrixDef:
    """A resolved matrix: axes in spec order, then exclude and include entries in order."""

    axes: tuple[Axis, ...] = ()
    exclude: tuple[MatrixEntry, ...] = ()
    include: tuple[MatrixEntry, ...] = ()
    _masks: tuple[tuple[tuple[int, int], ...], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # Bit e of an exclude mask (bit i of an include mask) says that entry e (i)
        # agrees with the value on this axis's variables; a combination matches an entry
        # when every axis agrees, i.e. when the AND over its values keeps the bit.
        masks = []
        for axis in self.axes:
            per_value = []
            for value in axis.values:
                own = dict(zip(axis.names, value.values, strict=True))
                per_value.append((_agreeing(self.exclude, own), _agreeing(self.include, own)))
            masks.append(tuple(per_value))
        object.__setattr__(self, "_masks", tuple(masks))

    @property
    def original_names(self) -> frozenset[str]:
        """The variables set by axes (the "original matrix values" of GitHub's rule)."""
        return frozenset(name for axis in self.axes for name in axis.names)

    @property
    def product(self) -> int:
        """The size of the cross product (0 with no axes)."""
        if not self.axes:
            return 0
        size = 1
        for axis in self.axes:
            size *= len(axis.values)
        return size


def _agreeing(entries: tuple[MatrixEntry, ...], own: dict[str, str]) -> int:
    mask = 0
    for bit, entry in enumerate(entries):
        if all(own.get(k, v) == v for k, v in entry.match):
            mask |= 1 << bit
    return mask


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass(frozen=True, slots=True)
class Counts:
    """How a matrix's combinations come about: ``product - excluded + added``."""

    product: int
    excluded: int
    added: int  # include entries that matched nothing
    matched_includes: int  # bitmask of include entries merged into some combination
    default_only: bool  # no axes and no include entries: one empty combination

    @property
    def total(self) -> int:
        """The number of combinations."""
        return 1 if self.default_only else self.product - self.excluded + self.added


def count_combinations(matrix: MatrixDef) -> Counts:
    """Count the combinations of ``matrix`` exactly, without enumerating the product."""
    if not matrix.axes:
        return Counts(0, 0, len(matrix.include), 0, not matrix.include)
    kept = _count_kept(matrix, None)
    matched = 0
    for bit in range(len(matrix.include)):
        # Does any kept combination agree with include entry `bit`? Count the kept
        # combinations among the values that agree with it on every axis.
        allowed = [
            frozenset(i for i, (_, inc) in enumerate(axis_masks) if inc >> bit & 1)
            for axis_masks in matrix._masks
        ]
        if _count_kept(matrix, allowed):
            matched |= 1 << bit
    added = sum(1 for bit in range(len(matrix.include)) if not matched >> bit & 1)
    return Counts(matrix.product, matrix.product - kept, added, matched, False)


def _count_kept(matrix: MatrixDef, allowed: list[frozenset[int]] | None) -> int:
    """How many product combinations (of the ``allowed`` value indices) no entry excludes.

    Depth-first over the axes; values that leave the same exclude entries alive are
    counted as one group, and once no entry is alive the rest is a plain product.
    """
    masks = [
        [ex for i, (ex, _) in enumerate(axis_masks) if allowed is None or i in allowed[level]]
        for level, axis_masks in enumerate(matrix._masks)
    ]
    n = len(masks)
    suffix = [1] * (n + 1)
    for level in range(n - 1, -1, -1):
        suffix[level] = suffix[level + 1] * len(masks[level])
    memo: dict[tuple[int, int], int] = {}

    def kept(level: int, alive: int) -> int:
        if not alive:
            return suffix[level]
        if level == n:
            return 0
        found = memo.get((level, alive))
        if found is None:
            groups: dict[int, int] = {}
            for ex_mask in masks[level]:
                groups[alive & ex_mask] = groups.get(alive & ex_mask, 0) + 1
            found = sum(size * kept(level + 1, sub) for sub, size in groups.items())
            memo[(level, alive)] = found
        return found

    return kept(0, (1 << len(matrix.exclude)) - 1)


ComboClass = tuple[int, tuple[int | None, ...], int]
"""``(count, chosen, include_mask)``: ``count`` kept combinations that share the value
index ``chosen[a]`` on every branched axis ``a`` (``None`` elsewhere) and are merged
with exactly the include entries in ``include_mask``."""


def walk_classes(matrix: MatrixDef, branch: frozenset[int]) -> Iterator[ComboClass]:
    """Partition the kept (not excluded) product combinations into classes.

    Combinations in one class agree on every axis in ``branch`` (by index) and match
    the same include entries. Axes outside ``branch`` are walked in groups of values
    that no remaining entry tells apart, so the work depends on the entries and the
    branched axes, not on the product size.
    """
    axes = matrix.axes
    if not axes:
        return
    n = len(axes)
    suffix = [1] * (n + 1)
    for level in range(n - 1, -1, -1):
        suffix[level] = suffix[level + 1] * len(axes[level].values)
    last_branch = max(branch, default=-1)
    masks = matrix._masks
    blank: tuple[int | None, ...] = (None,) * n

    def walk(level: int, ex: int, inc: int, chosen: tuple[int | None, ...]) -> Iterator[ComboClass]:
        if level == n:
            if not ex:
                yield (1, chosen, inc)
            return
        if not ex and not inc and level > last_branch:
            yield (suffix[level], chosen, 0)
            return
        if level in branch:
            for index, (ex_mask, inc_mask) in enumerate(masks[level]):
                picked = (*chosen[:level], index, *chosen[level + 1 :])
                yield from walk(level + 1, ex & ex_mask, inc & inc_mask, picked)
            return
        groups: dict[tuple[int, int], int] = {}
        for ex_mask, inc_mask in masks[level]:
            group = (ex & ex_mask, inc & inc_mask)
            groups[group] = groups.get(group, 0) + 1
        for (sub_ex, sub_inc), size in groups.items():
            for count, picked, include_mask in walk(level + 1, sub_ex, sub_inc, chosen):
                yield (count * size, picked, include_mask)

    yield from walk(0, (1 << len(matrix.exclude)) - 1, (1 << len(matrix.include)) - 1, blank)


Combination = tuple[dict[str, str], tuple[ImageRef, ...] | None]
"""The variables of one combination and the reference images it chose (None: defaults)."""


def iter_combinations(matrix: MatrixDef) -> Iterator[Combination]:
    """Yield every combination in order: the kept product (first axis outermost), then
    the include entries that matched nothing. Memory does not grow with the matrix."""
    include = matrix.include
    if not matrix.axes:
        if not include:
            yield {}, None
        for entry in include:
            yield dict(entry.match + entry.adds), entry.images
        return
    prepared = [
        [
            (masks[0], masks[1], tuple(zip(axis.names, value.values, strict=True)), value.images)
            for value, masks in zip(axis.values, axis_masks, strict=True)
        ]
        for axis, axis_masks in zip(matrix.axes, matrix._masks, strict=True)
    ]
    all_ex = (1 << len(matrix.exclude)) - 1
    all_inc = (1 << len(include)) - 1
    matched = 0
    for combo in itertools.product(*prepared):
        ex, inc = all_ex, all_inc
        if ex or inc:
            for ex_mask, inc_mask, _, _ in combo:
                ex &= ex_mask
                inc &= inc_mask
            if ex:
                continue
        variables: dict[str, str] = {}
        images: tuple[ImageRef, ...] | None = None
        for _, _, pairs, value_images in combo:
            variables.update(pairs)
            if value_images is not None:
                images = value_images
        if inc:
            matched |= inc
            for bit in _bits(inc):
                entry = include[bit]
                variables.update(entry.adds)
                if entry.images is not None:
                    images = entry.images
        yield variables, images
    for bit, entry in enumerate(include):
        if not matched >> bit & 1:
            yield dict(entry.match + entry.adds), entry.images
