"""Turning a structurally valid spec into a resolved matrix: axes, rows, images, templates.

Every problem becomes a :class:`~batchgen.errors.SpecIssue` at the YAML node (or the
row-file line) it comes from; nothing here raises for a bad spec. Checks that need the
combinations (placeholders, model families) live in :mod:`batchgen.spec.checks`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.errors import SpecError, SpecIssue
from batchgen.i18n import _
from batchgen.spec.combos import Axis, AxisValue, MatrixDef, MatrixEntry
from batchgen.spec.lock import GeneratedAxis, GeneratedAxisModel, Lockfile, resolve_generated
from batchgen.spec.model import MatrixModel, RowSourceModel, did_you_mean
from batchgen.spec.placeholders import Template, TemplateError, parse_template, variable_name
from batchgen.spec.sources import (
    ImageRef,
    ImageResolver,
    RowTable,
    SourceError,
    Where,
    read_rows,
    scalar_text,
)
from batchgen.spec.yamlsrc import NodePath, YamlDocument

__all__ = [
    "REQUEST_VARS",
    "RESERVED_NAMES",
    "Context",
    "TemplateUse",
    "did_you_mean",
    "resolve_matrix",
]

#: Variables that set request fields rather than (only) filling placeholders.
REQUEST_VARS = frozenset({"model", "aspect_ratio", "image_size", "prompt", "images"})
#: Names a matrix variable may not take: they are layout fields of their own.
RESERVED_NAMES = frozenset({"variant", "key", "key8", "index"})


@dataclass(frozen=True, slots=True)
class TemplateUse:
    """A template found in the spec, where it was written and what it fills."""

    template: Template
    where: Where
    what: str  # "prompt", "params 'quality'", ...


@dataclass
class Context:
    """What resolution needs and collects: the document, issues, caches."""

    doc: YamlDocument
    spec_dir: Path
    max_rows: int
    issues: list[SpecIssue] = field(default_factory=list)
    broken: bool = False  # the matrix could not be resolved: skip combination checks
    templates: list[TemplateUse] = field(default_factory=list)
    file_digests: dict[str, str] = field(default_factory=dict)
    lock: Lockfile | None = None  # the spec's lockfile, for generated axes
    generated: list[GeneratedAxis] = field(default_factory=list)
    images: ImageResolver = field(init=False)

    def __post_init__(self) -> None:
        self.images = ImageResolver(self.spec_dir)

    def where(self, path: NodePath, *, at_key: bool = False) -> Where:
        """The place of the node at ``path`` (its key if ``at_key``)."""
        line, column = self.doc.key_position(path) if at_key else self.doc.value_position(path)
        return Where(self.doc.file, line, column)

    def error(self, path: NodePath, message: str, *, at_key: bool = False) -> None:
        """Record an error at ``path``."""
        self.issues.append(self.doc.issue(path, message, at_key=at_key))

    def warn(self, path: NodePath, message: str, *, at_key: bool = False) -> None:
        """Record a warning at ``path``."""
        self.issues.append(self.doc.issue(path, message, at_key=at_key, severity="warning"))

    def template(self, text: str, where: Where, what: str) -> Template | None:
        """Parse ``text`` as a template, recording it (or the error) at ``where``."""
        try:
            parsed = parse_template(text)
        except TemplateError as exc:
            self.issues.append(where.issue(f"{what}: {exc}"))
            return None
        if what == "prompt" and {"prompt", "images"} & parsed.fields:
            bad = sorted({"prompt", "images"} & parsed.fields)[0]
            self.issues.append(where.issue(f"a prompt cannot use {{{bad}}}"))
            return None
        self.templates.append(TemplateUse(parsed, where, what))
        return parsed

    def image(self, written: str, where: Where) -> ImageRef | None:
        """Resolve one reference image, recording an error at ``where`` if unusable."""
        try:
            return self.images.resolve(written)
        except SourceError as exc:
            self.issues.append(where.issue(exc.message))
            return None

    def image_set(self, written: list[str], where: Where) -> tuple[ImageRef, ...]:
        """Resolve several reference images (unusable ones are reported and left out)."""
        refs = (self.image(item, where) for item in written)
        return tuple(ref for ref in refs if ref is not None)


def _image_list(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    return [scalar_text(value)]


def _images_text(value: object) -> str:
    # How an images value appears among the variables (and in exclude/include matching).
    return ", ".join(_image_list(value))


def _check_name(ctx: Context, written: str, path: NodePath, what: str) -> str | None:
    """The variable ``written`` names (NFKC, see ``variable_name``), or None after an error."""
    name = variable_name(written)
    if name is None:
        message = _(
            "{what} {name!r} cannot be used as a variable: use letters, digits, '_' and"
            " '-', not starting with a digit"
        )
        ctx.error(path, message.format(what=what, name=written), at_key=True)
        return None
    if name in RESERVED_NAMES:
        message = _("{what} {name!r} is reserved (it is a layout field)")
        ctx.error(path, message.format(what=what, name=written), at_key=True)
        return None
    return name


def resolve_matrix(ctx: Context, matrix: MatrixModel) -> MatrixDef:
    """Resolve the axes, exclude and include entries of ``matrix`` into a :class:`MatrixDef`."""
    axes: list[Axis] = []
    owner: dict[str, str] = {}
    for written, definition in (matrix.model_extra or {}).items():
        path: NodePath = ("matrix", written)
        if written.lower() in ("includes", "excludes", "exlude", "inclde", "exclue", "incude"):
            hint = did_you_mean(written, ("include", "exclude"))
            ctx.error(path, f"unknown key {written!r}" + hint)
            ctx.broken = True
            continue
        name = _check_name(ctx, written, path, _("axis"))
        if name is None:
            ctx.broken = True
            continue
        axis = _resolve_axis(ctx, name, definition, path)
        if axis is None:
            ctx.broken = True
            continue
        clash = [n for n in axis.names if n in owner]
        if clash:
            ctx.error(
                path,
                f"variable {clash[0]!r} is set by both axis {owner[clash[0]]!r} and axis {name!r}",
                at_key=True,
            )
            ctx.broken = True
            continue
        owner.update(dict.fromkeys(axis.names, name))
        axes.append(axis)
    original = frozenset(owner)
    values_of: dict[str, set[str]] = {}
    for axis in axes:
        for i, name in enumerate(axis.names):
            values_of.setdefault(name, set()).update(v.values[i] for v in axis.values)
    exclude = [
        entry
        for i, raw in enumerate(matrix.exclude)
        if (entry := _exclude_entry(ctx, raw, ("matrix", "exclude", i), values_of)) is not None
    ]
    include = [
        entry
        for i, raw in enumerate(matrix.include)
        if (entry := _include_entry(ctx, raw, ("matrix", "include", i), original)) is not None
    ]
    # Only now are all templates known (axes, rows and include entries add some).
    _check_unused(ctx, axes)
    axes = [_dedupe_rows(ctx, axis) for axis in axes]
    return MatrixDef(tuple(axes), tuple(exclude), tuple(include))


def _resolve_axis(
    ctx: Context,
    name: str,
    definition: list[object] | RowSourceModel | GeneratedAxisModel,
    path: NodePath,
) -> Axis | None:
    where = ctx.where(path, at_key=True)
    if isinstance(definition, RowSourceModel):
        return _file_axis(ctx, name, definition, path, where)
    if isinstance(definition, GeneratedAxisModel):
        return _generated_axis(ctx, name, definition, path, where)
    if not definition:
        ctx.error(path, _("axis {name!r} has no values").format(name=name))
        return None
    rows = [item for item in definition if isinstance(item, dict)]
    if rows and len(rows) != len(definition):
        first = next(i for i, item in enumerate(definition) if not isinstance(item, dict))
        ctx.error((*path, first), "an axis is either all plain values or all rows (mappings)")
        return None
    if rows:
        return _inline_rows(ctx, name, rows, path, where)
    values: list[AxisValue] = []
    seen: dict[str, Where] = {}
    for i, item in enumerate(definition):
        item_where = ctx.where((*path, i))
        if isinstance(item, list) and name != "images":
            ctx.error((*path, i), "a list value is only allowed in the images axis")
            return None
        text = _images_text(item) if name == "images" else scalar_text(item)
        if text in seen:
            earlier = seen[text]
            message = _("duplicate value {value!r} (already at line {line}, column {column})")
            ctx.error(
                (*path, i), message.format(value=text, line=earlier.line, column=earlier.column)
            )
            continue
        seen[text] = item_where
        images: tuple[ImageRef, ...] | None = None
        if name == "images":
            images = ctx.image_set(_image_list(item), item_where)
        elif name == "prompt":
            ctx.template(text, item_where, "prompt")
        values.append(AxisValue((text,), item_where, images))
    return Axis(name, (name,), tuple(values), where)


def _generated_axis(
    ctx: Context, name: str, definition: GeneratedAxisModel, path: NodePath, where: Where
) -> Axis | None:
    if name in REQUEST_VARS - {"prompt"}:
        ctx.error(path, f"a generated axis fills a template variable or prompt, not {name!r}")
        return None
    values, generated, issues = resolve_generated(name, definition, where, ctx.lock)
    ctx.issues.extend(issues)
    ctx.generated.append(generated)
    if ctx.lock is not None and generated.locked is not None:
        ctx.file_digests[f"{ctx.lock.display}#{name}"] = ctx.lock.values_digest(name)
    if name == "prompt" and generated.locked is not None:
        for text, value_where in values:
            ctx.template(text, value_where, "prompt")
    return Axis(name, (name,), tuple(AxisValue((t,), w) for t, w in values), where)


def _row_value(
    ctx: Context, columns: tuple[str, ...], cells: tuple[str, ...], where: Where
) -> AxisValue:
    images: tuple[ImageRef, ...] | None = None
    for column, cell in zip(columns, cells, strict=True):
        if column == "prompt":
            ctx.template(cell, where, "prompt")
        elif column == "images":
            images = ctx.image_set([cell], where) if cell else ()
    return AxisValue(cells, where, images)


def _inline_rows(
    ctx: Context, name: str, rows: list[dict[str, object]], path: NodePath, where: Where
) -> Axis | None:
    written = tuple(rows[0])
    names = tuple(_check_name(ctx, c, (*path, 0, c), _("variable")) for c in written)
    ok = None not in names and len(set(names)) == len(names)
    if None not in names and not ok:
        ctx.error((*path, 0), "a row names the same variable twice")
    columns = tuple(n or "" for n in names)
    values: list[AxisValue] = []
    for i, row in enumerate(rows):
        if tuple(row) != written and set(row) != set(written):
            ctx.error((*path, i), f"row keys differ from the first row ({', '.join(written)})")
            ok = False
            continue
        cells = tuple(scalar_text(row[c]) for c in written)
        values.append(_row_value(ctx, columns, cells, ctx.where((*path, i))))
    return Axis(name, columns, tuple(values), where) if ok else None


def _file_axis(
    ctx: Context, name: str, source: RowSourceModel, path: NodePath, where: Where
) -> Axis | None:
    file = Path(source.from_).expanduser()
    file = file if file.is_absolute() else ctx.spec_dir / file
    display = os.path.normpath(os.path.join(os.path.dirname(ctx.doc.file), source.from_))
    try:
        table: RowTable = read_rows(
            file,
            display,
            axis=name,
            fmt=source.format,
            delimiter=source.delimiter,
            max_rows=ctx.max_rows,
        )
    except SourceError as exc:
        ctx.error((*path, "from"), exc.message)
        return None
    except SpecError as exc:
        ctx.issues.extend(exc.issues)
        return None
    ctx.file_digests[display] = table.digest
    if len(table.columns) == 1 and table.columns[0] == name:
        # A .txt file: one variable, named after the axis.
        values = []
        for row in table.rows:
            images = None
            if name == "images":
                images = ctx.image_set([row.values[0]], row.where)
            elif name == "prompt":
                ctx.template(row.values[0], row.where, "prompt")
            values.append(AxisValue(row.values, row.where, images))
        return Axis(name, (name,), tuple(values), where, display)
    values = [_row_value(ctx, table.columns, row.values, row.where) for row in table.rows]
    return Axis(name, table.columns, tuple(values), where, display)


def _is_rows(axis: Axis) -> bool:
    """Whether the axis's values are rows of several variables (CSV, JSONL, mappings)."""
    return axis.names != (axis.name,)


#: Why include and exclude may not name a generated axis.
_GENERATED_ENTRY = (
    "{0!r} is a generated axis: its values come from the lock, so include and exclude"
    " cannot name them; edit the values in the lockfile instead"
)
#: Duplicate rows reported one by one; the rest are summed up in one warning.
_MAX_ROW_WARNINGS = 10


def _check_unused(ctx: Context, axes: list[Axis]) -> None:
    """A plain axis that no template uses multiplies identical requests: refuse it."""
    used = frozenset().union(*(use.template.fields for use in ctx.templates))
    for axis in axes:
        if _is_rows(axis) or axis.name in REQUEST_VARS or axis.name in used:
            continue
        if len(axis.values) < 2:
            continue
        hint = did_you_mean(axis.name, sorted(REQUEST_VARS))
        # At the axis's own key (``axis.where``): its name may be the NFKC form of it.
        message = _(
            "axis {name!r} is not used: no prompt or params placeholder uses {{{name}}}, so"
            " its {count} values would give identical requests (use `repeat` for variants)"
        )
        ctx.issues.append(
            axis.where.issue(message.format(name=axis.name, count=len(axis.values)) + hint)
        )


def _dedupe_rows(ctx: Context, axis: Axis) -> Axis:
    """Drop rows that would give the same tasks as an earlier row, with a warning.

    Two rows give the same tasks when they agree on every column a request depends on
    (request fields and columns some template uses); the key would be the same.
    """
    if axis.rows_from is None and not _is_rows(axis):
        return axis  # inline plain values: duplicates are errors, reported already
    used = REQUEST_VARS.union(*(use.template.fields for use in ctx.templates))
    picks = [i for i, column in enumerate(axis.names) if column in used]
    first: dict[tuple[str, ...], AxisValue] = {}
    kept: list[AxisValue] = []
    skipped = 0
    for value in axis.values:
        projection = tuple(value.values[i] for i in picks)
        earlier = first.get(projection)
        if earlier is None:
            first[projection] = value
            kept.append(value)
            continue
        skipped += 1
        if skipped <= _MAX_ROW_WARNINGS:
            same = "is the same as" if value.values == earlier.values else "gives the same tasks as"
            ctx.issues.append(
                value.where.issue(
                    f"row {same} line {earlier.where.line} (in every column a request uses); "
                    "skipped",
                    "warning",
                )
            )
    if skipped > _MAX_ROW_WARNINGS:
        ctx.issues.append(
            axis.where.issue(
                f"axis {axis.name!r}: {skipped:,} duplicate rows skipped in all", "warning"
            )
        )
    if len(kept) == len(axis.values):
        return axis
    return Axis(axis.name, axis.names, tuple(kept), axis.where, axis.rows_from)


def _exclude_entry(
    ctx: Context, raw: Mapping[str, object], path: NodePath, values_of: dict[str, set[str]]
) -> MatrixEntry | None:
    if not raw:
        ctx.error(path, "exclude entry is empty")
        return None
    match: list[tuple[str, str]] = []
    ok = True
    generated = {axis.name for axis in ctx.generated}
    for written, value in raw.items():
        key = variable_name(written) or written
        if key in generated:
            ctx.error((*path, written), _GENERATED_ENTRY.format(written), at_key=True)
            ok = False
            continue
        if key not in values_of:
            message = _("exclude key {key!r} is not a matrix variable").format(key=written)
            ctx.error((*path, written), message + did_you_mean(key, values_of), at_key=True)
            ok = False
            continue
        text = scalar_text(value)
        if text not in values_of[key]:
            known = sorted(values_of[key])
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            message = _("exclude value {value!r} matches no value of {key!r} ({known})")
            ctx.error(
                (*path, written),
                message.format(value=text, key=written, known=shown) + did_you_mean(text, known),
            )
            ok = False
            continue
        match.append((key, text))
    return MatrixEntry(tuple(match), (), ctx.where(path)) if ok else None


def _include_entry(
    ctx: Context, raw: Mapping[str, object], path: NodePath, original: frozenset[str]
) -> MatrixEntry | None:
    if not raw:
        ctx.error(path, "include entry is empty")
        return None
    where = ctx.where(path)
    match: list[tuple[str, str]] = []
    adds: list[tuple[str, str]] = []
    images: tuple[ImageRef, ...] | None = None
    ok = True
    generated = {axis.name for axis in ctx.generated}
    for written, value in raw.items():
        if (variable_name(written) or written) in generated:
            ctx.error((*path, written), _GENERATED_ENTRY.format(written), at_key=True)
            ok = False
            continue
        key = _check_name(ctx, written, (*path, written), _("include key"))
        if key is None:
            ok = False
            continue
        if isinstance(value, list) and key != "images":
            ctx.error((*path, written), "only 'images' takes a list")
            ok = False
            continue
        text = _images_text(value) if key == "images" else scalar_text(value)
        if key in original:
            match.append((key, text))
            continue
        adds.append((key, text))
        if key == "images":
            images = ctx.image_set(_image_list(value), where)
        elif key == "prompt":
            ctx.template(text, ctx.where((*path, written)), "prompt")
    return MatrixEntry(tuple(match), tuple(adds), where, images) if ok else None
