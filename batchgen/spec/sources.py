"""Files a spec points at: row files (``.txt``, ``.csv``, ``.jsonl``) and reference images.

Row files are read whole at load time (they are the job's input; the *matrix* built
from them is what is never held in memory). Reference images are hashed once per
file; requests carry a ``file:<path>#sha256=<hex>`` placeholder, and
:func:`image_data_uri` turns it into a data URI at send time after checking that the
bytes still match.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from batchgen.errors import ConfigError, SpecError, SpecIssue
from batchgen.i18n import _
from batchgen.spec.placeholders import variable_name

__all__ = [
    "MAX_ROW_FILE_BYTES",
    "ImageRef",
    "ImageResolver",
    "Row",
    "RowTable",
    "SourceError",
    "Where",
    "image_data_uri",
    "read_rows",
    "scalar_text",
]

#: Row files larger than this are refused (256 MiB).
MAX_ROW_FILE_BYTES = 256 * 1024 * 1024
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a file (1-based line and column), for messages."""

    file: str
    line: int
    column: int

    def issue(self, message: str, severity: str = "error") -> SpecIssue:
        """A :class:`SpecIssue` at this place."""
        return SpecIssue(self.file, self.line, self.column, message, severity)


class SourceError(Exception):
    """A referenced file is unusable; ``message`` is for the user, ``where`` is optional."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(message)


def scalar_text(value: object) -> str:
    """The variable text of a YAML/JSON scalar: ``true``/``false`` for booleans, else ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- reference images -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One reference image: a local file (hashed) or an http(s) URL (sent as is)."""

    written: str
    location: str  # absolute file path, or the URL
    digest: str  # sha256 hex of the file's bytes; the URL for URLs
    is_url: bool
    mime: str = ""
    size: int = 0

    @property
    def placeholder(self) -> str:
        """What a planned request carries: the URL, or ``file:<path>#sha256=<hex>``."""
        return self.location if self.is_url else f"file:{self.location}#sha256={self.digest}"


class ImageResolver:
    """Resolves image references against the spec's folder, hashing each file once."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._cache: dict[str, ImageRef] = {}

    def digests(self) -> list[str]:
        """The digests of every local image resolved so far."""
        return [ref.digest for ref in self._cache.values()]

    def resolve(self, written: str) -> ImageRef:
        """The :class:`ImageRef` for ``written``; raises :class:`SourceError` if unusable."""
        text = written.strip()
        if not text:
            raise SourceError("empty image reference")
        if text.lower().startswith("data:"):
            raise SourceError("inline data: URIs are not accepted; save the image to a file")
        if _URL_LIKE.match(text):
            parts = urllib.parse.urlsplit(text)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise SourceError(f"image URL must be http(s) with a host: {text!r}")
            return ImageRef(written, text, text, True)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        # Absolute and without "..", symlinks kept: the user's path is what they meant.
        path = Path(os.path.normpath(path.absolute()))
        cached = self._cache.get(str(path))
        if cached is not None:
            return ImageRef(
                written, cached.location, cached.digest, False, cached.mime, cached.size
            )
        try:
            digest, mime, size = _hash_image(path)
        except FileNotFoundError:
            message = _("reference image not found: {image} (looked for {path})")
            raise SourceError(message.format(image=text, path=path)) from None
        except IsADirectoryError:
            raise SourceError(f"reference image is a folder: {text}") from None
        except OSError as exc:
            raise SourceError(f"cannot read reference image {text}: {exc.strerror}") from None
        if not mime:
            message = _("reference image {image} is not a PNG, JPEG, WebP or GIF file")
            raise SourceError(message.format(image=text))
        ref = ImageRef(written, str(path), digest, False, mime, size)
        self._cache[str(path)] = ref
        return ref


def _sniff(head: bytes) -> str:
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return ""


def _hash_image(path: Path) -> tuple[str, str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        head = handle.read(16)
        sha.update(head)
        size += len(head)
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), _sniff(head), size


def image_data_uri(path: str, digest: str) -> str:
    """The ``data:image/...;base64,...`` form of the file at ``path``.

    Raises :class:`~batchgen.errors.ConfigError` if the file is gone, or if its bytes
    no longer hash to ``digest`` (the task's key was computed from the old bytes).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"reference image {path} cannot be read: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ConfigError(
            f"reference image {path} changed after the job was planned "
            f"(sha256 {actual[:12]}…, expected {digest[:12]}…); the tasks that use it "
            "would no longer match their keys: plan the job again"
        )
    mime = _sniff(data[:16]) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --- row files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a row file: values aligned with :attr:`RowTable.columns`."""

    values: tuple[str, ...]
    where: Where


@dataclass(frozen=True, slots=True)
class RowTable:
    """The rows of a row file. A ``.txt`` file has one column, named after its axis."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    digest: str = ""  # sha256 of the file's bytes


def read_rows(
    path: Path,
    display: str,
    *,
    axis: str,
    fmt: str | None = None,
    delimiter: str | None = None,
    max_rows: int,
) -> RowTable:
    """Read the rows of ``path`` (shown as ``display`` in messages).

    Blank lines are skipped; values are stripped of surrounding whitespace. Raises
    :class:`SourceError` for problems with the file as a whole and :class:`SpecError`
    with one issue per bad row (located in the row file) otherwise. More than
    ``max_rows`` rows is refused.
    """
    suffix = path.suffix.lower()
    kind = fmt or {".txt": "txt", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl"}.get(suffix)
    if kind is None:
        raise SourceError(
            f"cannot tell the format of {display}: use .txt, .csv, .tsv or .jsonl, "
            "or set format: txt|csv|jsonl"
        )
    try:
        size = path.stat().st_size
        if size > MAX_ROW_FILE_BYTES:
            raise SourceError(f"row file {display} is larger than {MAX_ROW_FILE_BYTES:,} bytes")
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        looked = "" if str(path) == display else f" (looked for {path})"
        message = _("row file not found: {file}").format(file=display)
        raise SourceError(message + looked) from None
    except IsADirectoryError:
        raise SourceError(f"row file {display} is a folder") from None
    except UnicodeDecodeError:
        raise SourceError(f"row file {display} is not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(f"cannot read row file {display}: {exc.strerror}") from None
    if kind == "txt":
        table = _read_txt(text, display, axis, max_rows)
    elif kind == "csv":
        sep = delimiter or ("\t" if suffix == ".tsv" else ",")
        table = _read_csv(text, display, sep, max_rows)
    else:
        table = _read_jsonl(text, display, max_rows)
    if not table.rows:
        raise SourceError(f"row file {display} has no rows")
    # Columns were checked by _check_columns: each names a variable, in its NFKC form.
    columns = tuple(variable_name(c) or c for c in table.columns)
    return RowTable(columns, table.rows, hashlib.sha256(raw).hexdigest())


def _too_many(display: str, max_rows: int, line: int) -> SpecError:
    return SpecError(
        [
            Where(display, line, 1).issue(
                f"more than {max_rows:,} rows (limits.max_tasks); raise max_tasks to use them all"
            )
        ]
    )


def _read_txt(text: str, display: str, axis: str, max_rows: int) -> RowTable:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if value:
            if len(rows) >= max_rows:
                raise _too_many(display, max_rows, number)
            rows.append(Row((value,), Where(display, number, 1)))
    return RowTable((axis,), tuple(rows))


def _check_columns(columns: list[str], where: Where) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    seen: set[str] = set()
    for written in columns:
        name = variable_name(written)
        if name is None:
            issues.append(
                where.issue(
                    _(
                        "column {name!r} cannot be a variable name "
                        "(letters, digits, '_' and '-', not starting with a digit)"
                    ).format(name=written)
                )
            )
        elif name in seen:
            issues.append(where.issue(f"column {written!r} appears twice"))
        seen.add(name or written)
    return issues


def _read_csv(text: str, display: str, sep: str, max_rows: int) -> RowTable:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    issues: list[SpecIssue] = []
    columns: list[str] | None = None
    rows: list[Row] = []
    start = 1
    try:
        for record in reader:
            where = Where(display, start, 1)
            start = reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            cells = [cell.strip() for cell in record]
            if columns is None:
                columns = cells
                issues.extend(_check_columns(columns, where))
                continue
            if len(cells) != len(columns):
                issues.append(
                    where.issue(
                        _("row has {count} fields, the header has {columns}").format(
                            count=len(cells), columns=len(columns)
                        )
                    )
                )
                continue
            if len(rows) >= max_rows:
                raise _too_many(display, max_rows, where.line)
            rows.append(Row(tuple(cells), where))
    except csv.Error as exc:
        issues.append(Where(display, reader.line_num, 1).issue(f"CSV error: {exc}"))
    if issues:
        raise SpecError(issues)
    if columns is None:
        raise SourceError(f"row file {display} is empty (a CSV needs a header row)")
    return RowTable(tuple(columns), tuple(rows))


def _read_jsonl(text: str, display: str, max_rows: int) -> RowTable:
    issues: list[SpecIssue] = []
    columns: tuple[str, ...] | None = None
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = Where(display, number, 1)
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(Where(display, number, exc.colno).issue(f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(item, dict):
            issues.append(where.issue("each line must be a JSON object"))
            continue
        bad = [k for k, v in item.items() if not _is_json_scalar(v)]
        if bad:
            issues.append(where.issue(f"value of {bad[0]!r} must be a string, number or boolean"))
            continue
        if columns is None:
            columns = tuple(item)
            issues.extend(_check_columns(list(columns), where))
        elif set(item) != set(columns):
            missing = sorted(set(columns) - set(item))
            extra = sorted(set(item) - set(columns))
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unexpected {', '.join(extra)}" if extra else "",
                )
                if part
            )
            issues.append(where.issue(f"keys differ from the first row ({detail})"))
            continue
        if len(rows) >= max_rows:
            raise _too_many(display, max_rows, number)
        rows.append(Row(tuple(scalar_text(item[c]) for c in columns), where))
    if issues:
        raise SpecError(issues)
    return RowTable(columns or (), tuple(rows))


def _is_json_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)
