"""The output tree: safe file names, the manifest (``metadata.jsonl``) and the summary.

File names come from a layout template filled with prompt text and matrix values, so
they are untrusted: every component is slugged (no separators, no control or NUL
characters, no leading dots, no Windows reserved names), capped at 255 bytes, and the
whole path must stay inside the output folder. The task key is always part of the
file name, so two tasks never share a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import unicodedata
from collections.abc import AsyncIterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final

from batchgen.errors import ConfigError

__all__ = [
    "DEFAULT_LAYOUT",
    "METADATA_NAME",
    "SUMMARY_NAME",
    "file_sha256",
    "layout_relpath",
    "resolve_inside",
    "slug",
    "write_atomic",
    "write_metadata",
]

DEFAULT_LAYOUT: Final = "{model}/{aspect_ratio}/{prompt}-{key8}.png"
METADATA_NAME: Final = "metadata.jsonl"
SUMMARY_NAME: Final = "summary.json"
PROMPT_CHARS: Final = 60
MAX_COMPONENT_BYTES: Final = 255
MAX_FIELD_BYTES: Final = 120

_WINDOWS_RESERVED: Final = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(10)]
    + [f"lpt{i}" for i in range(10)]
    + ["conin$", "conout$"]
)
_DASHES: Final = re.compile(r"-{2,}")


def _truncate_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def slug(value: object, *, max_chars: int | None = None) -> str:
    """A file-name-safe form of ``value``: letters of any script, digits, ``.-_``.

    Whitespace and punctuation become ``-``; leading dots and dashes go (no hidden
    files, no ``..``); the result is never empty and never a Windows reserved name.
    """
    text = unicodedata.normalize("NFKC", str(value))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    if _looks_like_ratio(text):
        text = text.replace(":", "x")
    # Letters and digits of any script, their combining marks (Devanagari vowel signs,
    # Hebrew points: \w alone drops them), and ._- ; everything else becomes a dash.
    text = "".join(
        ch if ch.isalnum() or ch in "._-" or unicodedata.category(ch)[0] == "M" else "-"
        for ch in text
    )
    text = _DASHES.sub("-", text).strip("-. ")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip("-. ")
    text = _truncate_bytes(text, MAX_FIELD_BYTES).rstrip("-. ")
    if not text:
        text = "_"
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def _looks_like_ratio(text: str) -> bool:
    return bool(re.fullmatch(r"\d+:\d+", text))


def _component(text: str, *, keep: str = "") -> str:
    """Final safety pass on one path component built from a template.

    A name over 255 bytes is shortened before ``keep`` (the task key), never through
    it, so names stay unique.
    """
    text = "".join(ch for ch in text if ch.isprintable() and ch not in "/\\\0")
    text = text.strip(" ")
    while text.startswith("."):
        text = text[1:]
    if not text or text in (".", ".."):
        text = "_"
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    if len(text.encode("utf-8")) > MAX_COMPONENT_BYTES:
        stem, dot, ext = text.rpartition(".")
        if not dot or len(ext) > 10:
            stem, ext = text, ""
        tail = ""
        if keep and keep in stem:
            cut = stem.rindex(keep)
            stem, tail = stem[:cut], stem[cut:]
        room = MAX_COMPONENT_BYTES - len((tail + ("." + ext if ext else "")).encode("utf-8"))
        text = _truncate_bytes(stem, max(0, room)).rstrip("-. ") + tail + ("." + ext if ext else "")
    return text


def layout_relpath(layout: str, fields: Mapping[str, object], *, key: str) -> str:
    """Fill ``layout`` with slugged ``fields``; return a safe relative POSIX path.

    ``{prompt}`` is shortened to 60 characters; ``{key}``, ``{key8}`` are the task key.
    When the layout has no key field, ``-<key8>`` is added to the file name so names
    stay unique. The result always ends in ``.png``.
    """
    values: dict[str, str] = {}
    for name, value in fields.items():
        values[name] = slug(value, max_chars=PROMPT_CHARS if name == "prompt" else None)
    values["key"] = key
    values["key8"] = key[:8]
    values.setdefault("variant", "0")
    parts = [p for p in layout.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        parts = DEFAULT_LAYOUT.split("/")
    formatter = string.Formatter()
    used = {f for part in parts for _, f, _, _ in formatter.parse(part) if f}
    rendered = [_component(p.format_map(_Missing(values))) for p in parts]
    name = parts[-1].format_map(_Missing(values))
    if not name.lower().endswith(".png"):
        name += ".png"
    if not used & {"key", "key8"}:
        name = name[: -len(".png")] + f"-{key[:8]}.png"
    rendered[-1] = _component(name, keep=key[:8])
    return str(PurePosixPath(*rendered))


class _Missing(dict[str, str]):
    def __missing__(self, name: str) -> str:
        return "_"


def resolve_inside(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing any path that would land outside ``root``.

    Symbolic links inside the tree are resolved before the check, so a link cannot
    lead a write outside either. Raises ConfigError.
    """
    base = root.resolve()
    target = (base / relpath).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"output path {relpath!r} escapes the output folder {base}")
    return target


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def write_metadata(
    root: Path, rows: AsyncIterator[Mapping[str, Any]], *, name: str = METADATA_NAME
) -> int:
    """Write ``metadata.jsonl`` (Hugging Face imagefolder) atomically; return the lines.

    Each row becomes one line per image with ``file_name`` relative to ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            async for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, separators=(", ", ": ")) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / name)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks (OSError if unreadable)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
