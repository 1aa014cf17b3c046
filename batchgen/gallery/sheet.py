"""Contact sheets: one labelled PNG per grid (``gallery --png``), for sharing.

Each sheet is drawn by Pillow from the gallery's thumbnails (never from the full
images, so it is cheap): a title naming the job and the grid's filter values, the x
values across the top, the y values down the left, and one box per cell holding the
cell's variants; a task without an image gets a box naming its state and error code.
A grid larger than :data:`MAX_ROWS` x :data:`MAX_COLS` cells is cut into several
sheets, so no sheet becomes too large to open.

Text is drawn with the system's real fonts (:mod:`batchgen.fonts`), a Latin and a CJK
face with per-character fallback, so Chinese prompts and values are readable on the
sheet people share; when no installed font has CJK glyphs, the build says once what to
install.

Sheets are incremental: each PNG carries a digest of what it shows (and of the fonts it
is drawn with, so installing a CJK font redraws them) in a text chunk, and a sheet whose
digest is unchanged is not drawn again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio.lowlevel
from PIL import Image, ImageDraw, PngImagePlugin

from batchgen.fonts import Typeface, missing_notice, system_fonts
from batchgen.gallery.model import Choice, Grid, SheetLink, TaskView
from batchgen.output.tree import slug

__all__ = ["CELL", "DIGEST_KEY", "MAX_COLS", "MAX_ROWS", "SHEETS_DIR", "write_contact_sheets"]

SHEETS_DIR: Final = "contact-sheets"
#: The text chunk holding the digest of what a sheet shows.
DIGEST_KEY: Final = "batchgen-gallery"
CELL: Final = 200
MAX_ROWS: Final = 20
MAX_COLS: Final = 16
_GAP: Final = 6
_TITLE_H: Final = 30
_HEADER_H: Final = 40
_LABEL_W: Final = 180
_VERSION: Final = 3  # bump when the drawing changes, so old sheets are redrawn

_BG: Final = (255, 255, 255)
_INK: Final = (29, 29, 31)
_MUTE: Final = (110, 110, 115)
_LINE: Final = (210, 210, 215)
_STATE_INK: Final = {
    "failed": (207, 34, 46),
    "unknown": (188, 76, 0),
    "missing": (130, 80, 223),
}


@dataclass(frozen=True, slots=True)
class _Sheet:
    name: str
    title: str
    xs: tuple[int, ...]
    ys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Pens:
    """The typefaces of one build: their :attr:`~batchgen.fonts.Typeface.missing`
    characters make the build's one warning."""

    small: Typeface
    label: Typeface
    big: Typeface

    @classmethod
    def new(cls) -> _Pens:
        fonts = system_fonts()
        return cls(Typeface(11, fonts), Typeface(13, fonts), Typeface(16, fonts))

    def notice(self) -> str | None:
        return missing_notice(self.small.missing | self.label.missing | self.big.missing)


def _plan(grid: Grid, title: str, stem: str) -> list[_Sheet]:
    row_chunks = [grid.ys[i : i + MAX_ROWS] for i in range(0, len(grid.ys), MAX_ROWS)]
    col_chunks = [grid.xs[i : i + MAX_COLS] for i in range(0, len(grid.xs), MAX_COLS)]
    sheets = []
    # Zero-padded numbers, so the files of a grid list in order.
    r_width, c_width = len(str(len(row_chunks))), len(str(len(col_chunks)))
    for r, ys in enumerate(row_chunks, 1):
        for c, xs in enumerate(col_chunks, 1):
            name = stem
            suffix = []
            if len(row_chunks) > 1:
                suffix.append(f"rows {r}/{len(row_chunks)}")
                name += f"-r{r:0{r_width}d}"
            if len(col_chunks) > 1:
                suffix.append(f"columns {c}/{len(col_chunks)}")
                name += f"-c{c:0{c_width}d}"
            full = title + (f" ({', '.join(suffix)})" if suffix else "")
            sheets.append(_Sheet(name + ".png", full, tuple(xs), tuple(ys)))
    return sheets


def _digest(sheet: _Sheet, grid: Grid, choice: Choice, thumbs: dict[str, Path]) -> str:
    cells = [
        [
            [t.state, t.error[:60], [i.sha256 for i in t.images if i.sha256 in thumbs]]
            for t in grid.cells.get((y, x), ())
        ]
        for y in sheet.ys
        for x in sheet.xs
    ]
    labels = [
        [choice.x.label(choice.x.values[x]) for x in sheet.xs] if choice.x else [],
        [choice.y.label(choice.y.values[y]) for y in sheet.ys] if choice.y else [],
    ]
    fonts = repr(system_fonts())  # a newly installed font redraws the sheets
    blob = json.dumps([_VERSION, CELL, fonts, sheet.title, labels, cells], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _current_digest(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            value = im.info.get(DIGEST_KEY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return value if isinstance(value, str) else None


async def write_contact_sheets(
    output: Path,
    grids: Sequence[Grid],
    choice: Choice,
    *,
    job: str,
    titles: Sequence[str],
    thumbs: dict[str, Path],
) -> tuple[dict[int, list[SheetLink]], int, str | None]:
    """Draw the sheets of ``grids`` under ``<output>/contact-sheets/``.

    ``job`` names the job in every sheet's title; ``titles`` holds one title per grid;
    ``thumbs`` maps an image's sha256 to its thumbnail file. Returns the sheets per grid
    number (paths relative to ``output``), how many were drawn (the others were
    unchanged), and the warning to give when CJK text had no font (else None). PNG
    files in the folder that belong to no current sheet are removed: the folder is the
    gallery's own.
    """
    pens = _Pens.new()
    folder = output / SHEETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    result: dict[int, list[SheetLink]] = {}
    keep: set[str] = set()
    for grid, title in zip(grids, titles, strict=True):
        stem = f"{grid.number:03d}-{slug(title, max_chars=60)}"
        for sheet in _plan(grid, f"{job} \u00b7 {title}", stem):
            path = folder / sheet.name
            keep.add(sheet.name)
            link = SheetLink(f"{SHEETS_DIR}/{sheet.name}", sheet.ys)
            result.setdefault(grid.number, []).append(link)
            digest = _digest(sheet, grid, choice, thumbs)
            if _current_digest(path) == digest:
                continue
            image = _draw(sheet, grid, choice, thumbs, pens)
            info = PngImagePlugin.PngInfo()
            info.add_text(DIGEST_KEY, digest)
            tmp = folder / f".{sheet.name}.tmp"
            try:
                image.save(tmp, format="PNG", pnginfo=info, optimize=False)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            made += 1
            await anyio.lowlevel.checkpoint()
    for stale in folder.glob("*.png"):
        if stale.name not in keep and stale.is_file():
            stale.unlink()
    return result, made, pens.notice()


def _draw(
    sheet: _Sheet, grid: Grid, choice: Choice, thumbs: dict[str, Path], pens: _Pens
) -> Image.Image:
    label_w = _LABEL_W if choice.y is not None else 0
    header_h = _HEADER_H if choice.x is not None else 0
    pitch = CELL + _GAP
    width = max(label_w + _GAP + len(sheet.xs) * pitch, 480)
    height = _TITLE_H + header_h + _GAP + len(sheet.ys) * pitch
    image = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(image)
    small, label, big = pens.small, pens.label, pens.big
    for line in big.wrap(sheet.title, width - 2 * _GAP, 1):
        big.draw(draw, (_GAP, 6), line, _INK)
    if choice.x is not None and choice.y is not None:
        corner = f"rows: {choice.y.name}, columns: {choice.x.name}"
        for i, line in enumerate(small.wrap(corner, label_w - 2 * _GAP, 2)):
            small.draw(draw, (_GAP, _TITLE_H + 2 + i * 14), line, _MUTE)
    if choice.x is not None:
        for col, x in enumerate(sheet.xs):
            left = label_w + _GAP + col * pitch
            text = choice.x.label(choice.x.values[x])
            for i, line in enumerate(label.wrap(text, CELL, 2)):
                label.draw(draw, (left, _TITLE_H + 2 + i * 17), line, _INK)
    if choice.y is not None:
        for row, y in enumerate(sheet.ys):
            top = _TITLE_H + header_h + _GAP + row * pitch
            text = choice.y.label(choice.y.values[y])
            for i, line in enumerate(label.wrap(text, _LABEL_W - 2 * _GAP, 10)):
                label.draw(draw, (_GAP, top + 4 + i * 17), line, _INK)
    for row, y in enumerate(sheet.ys):
        for col, x in enumerate(sheet.xs):
            left = label_w + _GAP + col * pitch
            top = _TITLE_H + header_h + _GAP + row * pitch
            tasks = grid.cells.get((y, x), [])
            draw.rectangle((left, top, left + CELL - 1, top + CELL - 1), outline=_LINE)
            if not tasks:
                small.draw(draw, (left + 8, top + CELL // 2 - 8), "no task", _MUTE)
                continue
            _draw_cell(image, draw, tasks, (left, top), thumbs, small)
    return image


def _draw_cell(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    tasks: Sequence[TaskView],
    origin: tuple[int, int],
    thumbs: dict[str, Path],
    font: Typeface,
) -> None:
    per_side = math.ceil(math.sqrt(len(tasks)))
    box = (CELL - 4 - (per_side - 1) * 2) // per_side
    for i, task in enumerate(tasks):
        left = origin[0] + 2 + (i % per_side) * (box + 2)
        top = origin[1] + 2 + (i // per_side) * (box + 2)
        thumb = next((thumbs[im.sha256] for im in task.images if im.sha256 in thumbs), None)
        if thumb is not None:
            try:
                with Image.open(thumb) as source:
                    source.thumbnail((box, box))
                    tile = source.convert("RGBA")
            except (OSError, ValueError, Image.DecompressionBombError):
                thumb = None
            else:
                at = (left + (box - tile.width) // 2, top + (box - tile.height) // 2)
                image.paste(tile, at, tile)
                continue
        ink = _STATE_INK.get(task.state, _MUTE)
        draw.rectangle((left, top, left + box - 1, top + box - 1), outline=ink, width=2)
        text = task.state.upper()
        if task.error and box >= 60:
            text += " " + task.error.split(":", 1)[0]
        lines = font.wrap(text, box - 8, max(1, (box - 8) // 14))
        for n, line in enumerate(lines):
            font.draw(draw, (left + 4, top + 4 + n * 14), line, ink)
