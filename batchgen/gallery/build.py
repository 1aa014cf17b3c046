"""``batchgen gallery``: a static, offline HTML gallery of a job's images.

:func:`build_gallery` reads the job's ledger, lays its tasks out on labelled grids
(:mod:`batchgen.gallery.model`), makes the missing thumbnails, writes ``index.html``
(and ``index-2.html``, ... when the job is larger than a page) into the output folder
(:mod:`batchgen.gallery.html`) and, with ``png=True``, one contact sheet per grid
(:mod:`batchgen.gallery.sheet`). The grid follows the spec: every task of the current
spec gets one place, whether or not it has run; tasks the ledger holds but the spec no
longer lists are counted, not shown.

Rebuilding is incremental. Thumbnails live in ``<output>/thumbs/`` named by the
sha256 of the image they show, so a file that was thumbnailed once never is again,
and a new image (regenerated, or retried) gets a new name instead of a stale
preview. Pages are rewritten only when their text changes, contact sheets only when
what they show changes. Thumbnails are never deleted (they are a cache; removing the
folder is always safe).

The library never prints; :func:`configure_parser` and :func:`run_from_args` are the
command line's edge.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
import webbrowser
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
from PIL import Image, features

from batchgen.errors import ConfigError, UsageError
from batchgen.gallery.html import PageContext, page_language, render_page
from batchgen.gallery.model import (
    ImageView,
    Page,
    SheetLink,
    TaskView,
    build_grids,
    choose_axes,
    dimensions,
    grid_title,
    paginate,
    variant_dimension,
)
from batchgen.gallery.sheet import write_contact_sheets
from batchgen.i18n import _
from batchgen.ledger.job import open_job
from batchgen.ledger.paths import job_ledgers, ledger_path
from batchgen.ledger.schema import TaskRow, TaskState
from batchgen.output.tree import file_sha256, resolve_inside, write_atomic
from batchgen.spec.load import Spec, load_spec
from batchgen.spec.matrix import PlannedTask, expand

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "INDEX_NAME",
    "THUMBS_DIR",
    "THUMB_BOX",
    "GalleryResult",
    "build_gallery",
    "configure_parser",
    "make_gallery",
    "run_from_args",
    "thumb_relpath",
]

INDEX_NAME: Final = "index.html"
THUMBS_DIR: Final = "thumbs"
#: Longest side of a thumbnail, in pixels.
THUMB_BOX: Final = 256
#: Tasks per HTML page; a larger job is split over several pages.
DEFAULT_PAGE_SIZE: Final = 2000
# WEBP is about a third of a JPEG of the same quality and keeps transparency; a Pillow
# built without it still gets thumbnails.
_THUMB_FORMAT, _THUMB_EXT = ("WEBP", "webp") if features.check("webp") else ("JPEG", "jpg")
_EXTRA_PAGE: Final = re.compile(r"index-([0-9]+)\.html")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class GalleryResult:
    """What a build did: the first page, every page, counts of work done."""

    index: Path
    pages: tuple[Path, ...]
    tasks: int
    thumbs_made: int
    thumbs_failed: int
    sheets: tuple[Path, ...]
    sheets_made: int
    #: Warnings for the user (a contact sheet's CJK text with no font to draw it).
    notes: tuple[str, ...] = ()


async def build_gallery(
    spec: Spec,
    *,
    x: str | None = None,
    y: str | None = None,
    png: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Path:
    """Write the gallery of ``spec``'s job into its output folder; return ``index.html``.

    ``x`` and ``y`` name the axes across and down (defaults: see
    :func:`batchgen.gallery.model.choose_axes`); ``png`` also writes contact sheets.
    Raises UsageError for an axis the job does not have (before touching any file),
    ConfigError when the job has no ledger yet, LedgerError when it cannot be read.
    """
    result = await make_gallery(spec, x=x, y=y, png=png, page_size=page_size)
    return result.index


async def make_gallery(
    spec: Spec,
    *,
    x: str | None = None,
    y: str | None = None,
    png: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> GalleryResult:
    """:func:`build_gallery`, returning what the build did (same contract)."""
    if page_size < 1:
        raise UsageError(f"page_size must be at least 1, not {page_size}")
    output = Path(spec.output_dir)
    planned = list(expand(spec))
    # Lay out first, from the spec alone: a bad --x fails before any file is touched.
    skeleton = [_view(task, None, output) for task in planned]
    dims = dimensions(spec.matrix.axes, skeleton)
    variant = variant_dimension(skeleton) if spec.repeat > 1 else None
    choice = choose_axes(dims, x=x, y=y, variant=variant)
    path = ledger_path(spec)
    if not job_ledgers(spec):
        # A simulator job's folder is ``<output>-sim`` (Spec.for_simulator).
        sim = " --sim" if output.name.endswith("-sim") else ""
        hint = _("run `batchgen run {spec}` first").format(spec=f"{spec.display_path}{sim}")
        if ledger_path(spec.for_simulator()).is_file():
            hint = _("only a simulator run exists: add --sim")
        raise ConfigError(
            _("no ledger at {path}: the job has not run yet ({hint})").format(path=path, hint=hint),
            code="no_ledger",
        )
    rows: dict[str, TaskRow] = {}
    spent = 0.0
    async with open_job(spec) as job:  # every shard's ledger, read only
        async for row in job.iter_rows():
            rows[row.key] = row
        for _shard, ledger in job.ledgers:
            spent += (await ledger.totals())["spent"]
    planned_keys = {task.key for task in planned}
    not_in_spec = sum(1 for key in rows if key not in planned_keys)

    views = [_view(task, rows.get(task.key), output) for task in planned]
    views, thumbs, made, failed = await _with_thumbnails(output, views)
    grids = build_grids(views, choice)
    pages = paginate(grids, page_size)
    titles = [grid_title(choice, grid.filter_values) for grid in grids]
    sheet_links: dict[int, list[SheetLink]] = {}
    sheets_made = 0
    notes: list[str] = []
    if png:
        sheet_links, sheets_made, notice = await write_contact_sheets(
            output, grids, choice, job=spec.name, titles=titles, thumbs=thumbs
        )
        notes += [notice] if notice else []
    counts: dict[str, int] = {}
    for view in views:
        counts[view.state] = counts.get(view.state, 0) + 1
    ctx = PageContext(
        job=spec.name,
        description=spec.description,
        currency=spec.currency,
        choice=choice,
        pages=pages,
        counts=counts,
        spent=spent,
        not_in_spec=not_in_spec,
        show_variant=spec.repeat > 1,
        sheets=sheet_links,
        lang=page_language(task.prompt for task in planned),
    )
    written = [_write_if_changed(output / page.filename, render_page(ctx, page)) for page in pages]
    _remove_extra_pages(output, pages)
    return GalleryResult(
        index=written[0],
        pages=tuple(written),
        tasks=len(views),
        thumbs_made=made,
        thumbs_failed=failed,
        sheets=tuple(output / link.path for links in sheet_links.values() for link in links),
        sheets_made=sheets_made,
        notes=tuple(notes),
    )


# --- tasks ---------------------------------------------------------------------------


def _view(task: PlannedTask, row: TaskRow | None, output: Path) -> TaskView:
    """The gallery's view of ``task`` as ``row`` records it (None: not in the ledger)."""
    base: dict[str, Any] = {
        "key": task.key,
        "index": task.index,
        "variant": task.variant,
        "prompt": task.prompt,
        "model": task.model,
        "aspect_ratio": task.aspect_ratio,
        "image_size": task.image_size,
        "vars": task.vars,
    }
    if row is None:
        return TaskView(**base, state="pending", error="", cost=task.price, cost_is_estimate=True)
    error = ": ".join(p for p in (row.error_code, row.error_message) if p)
    if row.state is TaskState.DONE:
        images, problem = _images(row, output)
        if problem:
            return TaskView(**base, state="missing", error=problem, cost=row.charged)
        return TaskView(**base, state="done", cost=row.charged, images=images)
    if row.state is TaskState.FAILED:
        return TaskView(**base, state="failed", error=error or "failed", cost=row.charged)
    if row.state is TaskState.UNKNOWN:
        error = error or "the answer to the submission was lost"
        return TaskView(
            **base,
            state="unknown",
            error=f"{error} (may have been charged)",
            cost=row.price,
            cost_is_estimate=True,
        )
    # Pending or in flight; an error here is the last attempt's, before a retry.
    return TaskView(
        **base,
        state=row.state.value,
        error=f"last attempt: {error}" if error else "",
        cost=row.price,
        cost_is_estimate=True,
    )


def _images(row: TaskRow, output: Path) -> tuple[tuple[ImageView, ...], str]:
    """The files of a done task, or the reason one of them cannot be shown."""
    entries: list[Mapping[str, Any]] = list(row.files)
    if not entries and row.path:
        entries = [{"path": row.path, "bytes": row.bytes, "sha256": row.sha256}]
    if not entries:
        return (), "the ledger records no file for this task"
    images = []
    for entry in entries:
        rel = str(entry.get("path") or "")
        try:
            path = resolve_inside(output, rel)
        except ConfigError:
            return (), f"the recorded path {rel!r} is outside the output folder"
        try:
            size = path.stat().st_size
        except OSError:
            return (), f"file not found: {rel}"
        expected = entry.get("bytes")
        if isinstance(expected, int) and size != expected:
            return (), f"file changed on disk: {rel} ({size} bytes, the ledger says {expected})"
        width, height = entry.get("width"), entry.get("height")
        images.append(
            ImageView(
                href=Path(rel).as_posix(),
                sha256=str(entry.get("sha256") or ""),
                width=width if isinstance(width, int) else None,
                height=height if isinstance(height, int) else None,
            )
        )
    return tuple(images), ""


# --- thumbnails ------------------------------------------------------------------------


def thumb_relpath(sha256: str) -> str:
    """Where the thumbnail of the image with this digest lives, relative to the output."""
    return f"{THUMBS_DIR}/{sha256}-{THUMB_BOX}.{_THUMB_EXT}"


def _thumb_size(width: int, height: int, box: int = THUMB_BOX) -> tuple[int, int]:
    """The size ``Image.thumbnail((box, box))`` gives a ``width`` x ``height`` image."""
    if width <= box and height <= box:
        return width, height
    if width >= height:
        return box, max(1, round(height * box / width))
    return max(1, round(width * box / height)), box


async def _with_thumbnails(
    output: Path, views: list[TaskView]
) -> tuple[list[TaskView], dict[str, Path], int, int]:
    """``views`` with thumbnails filled in, making those not on disk yet.

    Returns the views, the thumbnail file of each image digest, and how many
    thumbnails were made and could not be made.
    """
    folder = output / THUMBS_DIR
    thumbs: dict[str, Path] = {}
    failed_digests: set[str] = set()
    made = failed = 0
    out: list[TaskView] = []
    for view in views:
        if not view.images:
            out.append(view)
            continue
        images = []
        for image in view.images:
            source = output / image.href
            # The digest names a file: one that is not plain hex (a damaged or edited
            # ledger) is recomputed from the image rather than trusted in a path.
            digest = image.sha256 if _SHA256.fullmatch(image.sha256) else _sha256_of(source)
            if digest and digest not in thumbs and digest not in failed_digests:
                target = output / thumb_relpath(digest)
                if not target.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    if _make_thumbnail(source, target):
                        made += 1
                    else:
                        failed += 1
                        failed_digests.add(digest)
                    # Pillow runs on the event loop: let other tasks (and Ctrl-C) in.
                    await anyio.lowlevel.checkpoint()
                if digest not in failed_digests:
                    thumbs[digest] = target
            if digest in thumbs:
                size = (
                    _thumb_size(image.width, image.height)
                    if image.width and image.height
                    else _size_of(thumbs[digest])
                )
                image = dataclasses.replace(
                    image, sha256=digest, thumb=thumb_relpath(digest), thumb_size=size
                )
            images.append(image)
        out.append(dataclasses.replace(view, images=tuple(images)))
    return out, thumbs, made, failed


def _sha256_of(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return ""


def _size_of(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _make_thumbnail(source: Path, target: Path) -> bool:
    """Write the thumbnail of ``source`` to ``target`` atomically; False if it cannot be
    decoded (the cell then links the file without a preview)."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with Image.open(source) as im:
            im.draft("RGB", (THUMB_BOX, THUMB_BOX))  # JPEG decodes at a fraction of the size
            # reducing_gap: resample from a cheap 2x reduction, nearly as sharp, much faster
            im.thumbnail((THUMB_BOX, THUMB_BOX), Image.Resampling.LANCZOS, reducing_gap=2.0)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            mode = "RGBA" if has_alpha and _THUMB_FORMAT == "WEBP" else "RGB"
            small = im.convert(mode)
        small.save(tmp, format=_THUMB_FORMAT, quality=80)
        os.replace(tmp, target)
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    finally:
        tmp.unlink(missing_ok=True)


# --- pages -----------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> Path:
    """Write ``text`` atomically unless ``path`` already holds it (its mtime then stays)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, text)
    return path


def _remove_extra_pages(output: Path, pages: Sequence[Page]) -> None:
    """Remove ``index-<n>.html`` pages a larger earlier build left beyond the last page."""
    for path in output.glob("index-*.html"):
        match = _EXTRA_PAGE.fullmatch(path.name)
        if match and int(match.group(1)) > len(pages) and path.is_file():
            path.unlink()


# --- command line ----------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``batchgen gallery`` arguments: SPEC, --x, --y, --png, --open, --sim."""
    p.add_argument("spec", metavar="SPEC", help="the job spec (YAML)")
    p.add_argument("--x", metavar="AXIS", help="the axis across (default: chosen from the matrix)")
    p.add_argument("--y", metavar="AXIS", help="the axis down (default: chosen from the matrix)")
    p.add_argument(
        "--png",
        action="store_true",
        help="also write a contact-sheet PNG per grid under <output>/contact-sheets/",
    )
    p.add_argument("--open", action="store_true", help="open the gallery in a web browser")
    p.add_argument(
        "--sim",
        action="store_true",
        help="use the job's simulator output folder (<output>-sim), as `run --sim` wrote it",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Build the gallery ``args`` describe, print the path of ``index.html``; return 0.

    Library errors (SpecError, UsageError, ConfigError, LedgerError) propagate for the
    CLI's ``main`` to report with its exit codes.
    """
    spec = load_spec(args.spec, simulated=bool(args.sim))
    for warning in spec.warnings:
        print(str(warning), file=sys.stderr)
    if args.sim:
        spec = spec.for_simulator()
    build = functools.partial(make_gallery, spec, x=args.x, y=args.y, png=args.png)
    result = anyio.run(build, backend="asyncio")
    for note in result.notes:
        print(f"warning: {note}", file=sys.stderr)
    extra = f" (+{len(result.pages) - 1} more pages)" if len(result.pages) > 1 else ""
    print(
        f"{result.index}{extra}: {result.tasks} task(s), {result.thumbs_made} new thumbnail(s)"
        + (f", {len(result.sheets)} contact sheet(s)" if args.png else ""),
        file=sys.stderr,
    )
    print(result.index)
    if args.open:
        webbrowser.open(result.index.as_uri())
    return 0
