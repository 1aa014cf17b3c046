"""Parameters inside every saved image: how it was made, readable without the manifest.

With ``embed: parameters`` in the spec, each image carries its prompt, model, aspect
ratio, size, variables and task key twice: as the ``parameters`` text that the common
Stable Diffusion front ends write and image hosts and taggers read (the prompt, then
one line of ``Key: value`` settings; :func:`parameters_text`), and as JSON for programs
(:func:`provenance_json`). Where they go:

- PNG: a ``parameters`` text chunk (``tEXt``, or ``iTXt`` when the text is not
  Latin-1) and a ``batchgen`` ``iTXt`` chunk, right after ``IHDR``;
- JPEG: the EXIF ``UserComment`` (``UNICODE`` + UTF-16, as those front ends write it)
  and an XMP packet with the JSON, as ``APP1`` segments after ``APP0``;
- WebP: the same EXIF and XMP as RIFF chunks (a ``VP8X`` header is added when needed).

The chunks are spliced into the bytes the service served: pixels and compression are
untouched (no re-encoding), and a text chunk of an earlier embedding is replaced, not
repeated. Other formats (GIF) are left as served. The caller records both digests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

from PIL import ExifTags, Image

from batchgen.errors import NotAnImageError
from batchgen.output.fetch import part_path

__all__ = [
    "Provenance",
    "embed_bytes",
    "embed_file",
    "parameters_text",
    "provenance_json",
]

_PNG: Final = b"\x89PNG\r\n\x1a\n"
_KEYWORDS: Final = (b"parameters", b"batchgen")
_XMP_NS: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_EXIF_HEAD: Final = b"Exif\x00\x00"
#: The most an APP1 segment's payload may hold.
_MAX_SEGMENT: Final = 65533


def _generator() -> str:
    # Read from the installed package: importing batchgen's __init__ here would be a cycle.
    try:
        return f"batchgen {importlib.metadata.version('batchgen')}"
    except importlib.metadata.PackageNotFoundError:
        return "batchgen"


GENERATOR: Final = _generator()


@dataclass(frozen=True, slots=True)
class Provenance:
    """What an image says about itself."""

    prompt: str
    model: str
    aspect_ratio: str
    image_size: str
    key: str
    vars: Mapping[str, str] = field(default_factory=dict)
    job: str = ""
    width: int = 0
    height: int = 0


def parameters_text(p: Provenance) -> str:
    """The ``parameters`` text: the prompt, then one line of ``Key: value`` settings.

    Values with a comma, colon or quote are written as JSON strings, as the front ends
    that read this line expect. Variables that repeat a setting are left out.
    """
    settings = [
        ("Model", p.model),
        ("Size", f"{p.width}x{p.height}" if p.width and p.height else ""),
        ("Aspect ratio", p.aspect_ratio),
        ("Image size", p.image_size),
        ("Key", p.key),
    ]
    own = {"model", "aspect_ratio", "image_size", "prompt", "images"}
    settings += [(f"Var {name}", value) for name, value in p.vars.items() if name not in own]
    settings += [("Job", p.job), ("Generator", GENERATOR)]
    line = ", ".join(f"{name}: {_quoted(str(value))}" for name, value in settings if value)
    return f"{p.prompt}\n{line}"


def _quoted(value: str) -> str:
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def provenance_json(p: Provenance) -> str:
    """The same, as one JSON object (the ``batchgen`` chunk)."""
    return json.dumps(
        {
            "prompt": p.prompt,
            "model": p.model,
            "aspect_ratio": p.aspect_ratio,
            "image_size": p.image_size,
            "width": p.width,
            "height": p.height,
            "key": p.key,
            "vars": dict(p.vars),
            "job": p.job,
            "generator": GENERATOR,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def embed_bytes(data: bytes, p: Provenance) -> bytes:
    """``data`` (a PNG, JPEG or WebP) with ``p`` spliced in; other formats unchanged.

    Raises NotAnImageError when the container cannot be read.
    """
    params, doc = parameters_text(p), provenance_json(p)
    try:
        if data.startswith(_PNG):
            return _png(data, params, doc)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data, params, doc)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data, params, doc)
    except (struct.error, IndexError, ValueError) as exc:
        raise NotAnImageError(f"cannot add the parameters: {exc}") from None
    return data


def embed_file(
    path: Path, p: Provenance, *, durable: bool = True, part_tag: str = ""
) -> tuple[int, str]:
    """Rewrite the image at ``path`` with ``p`` embedded, atomically (a hidden partial
    file, fsynced, renamed); return the new size and sha256."""
    data = embed_bytes(path.read_bytes(), p)
    part = part_path(path, part_tag)
    try:
        with part.open("wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return len(data), hashlib.sha256(data).hexdigest()


# --- PNG --------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _text_chunk(keyword: bytes, text: str, *, utf8: bool = False) -> bytes:
    if not utf8:
        try:
            return _chunk(b"tEXt", keyword + b"\x00" + text.encode("latin-1"))
        except UnicodeEncodeError:
            pass  # not Latin-1: iTXt, as Pillow's add_text does
    # keyword, NUL, no compression (flag 0, method 0), no language, no translated keyword
    return _chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def _png(data: bytes, params: str, doc: str) -> bytes:
    out = [data[:8]]
    pos = 8
    ours = _text_chunk(b"parameters", params) + _text_chunk(b"batchgen", doc, utf8=True)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("a PNG chunk runs past the end of the file")
        body = data[pos + 8 : pos + 8 + length]
        earlier = kind in (b"tEXt", b"iTXt", b"zTXt") and body.split(b"\x00", 1)[0] in _KEYWORDS
        if not earlier:
            out.append(data[pos:end])
        if kind == b"IHDR":
            out.append(ours)
        pos = end
    return b"".join(out)


# --- JPEG and WebP: EXIF UserComment and XMP --------------------------------------------


def _exif(existing: bytes | None, params: str) -> bytes:
    exif = Image.Exif()
    if existing:
        exif.load(existing)
    # UserComment: 8 bytes naming the charset, then the text. Pillow writes big-endian
    # TIFF ("MM"), so UTF-16BE is the byte order every reader expects.
    room = (_MAX_SEGMENT - 200 - len(exif.tobytes())) // 2
    text = params if len(params) <= room else params[: max(0, room - 1)] + "\u2026"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\x00" + text.encode(
        "utf-16-be"
    )
    return exif.tobytes()  # starts with Exif\0\0


def _xmp(doc: str) -> bytes:
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:batchgen="https://batchgen.invalid/ns/1.0/">'
        f"<batchgen:parameters>{escape(doc)}</batchgen:parameters>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    ).encode()
    if len(packet) + len(_XMP_NS) > _MAX_SEGMENT:
        raise ValueError("the parameters are too long for an XMP segment")
    return packet


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > _MAX_SEGMENT:
        raise ValueError("a JPEG segment would be too long")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg(data: bytes, params: str, doc: str) -> bytes:
    head: list[bytes] = []  # APP0 (JFIF) stays first
    rest: list[bytes] = []
    existing: bytes | None = None
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise ValueError("a JPEG segment does not start with 0xFF")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker in range(0xD0, 0xD8) or marker == 0xD9:
            tail = data[pos:]  # the scan and everything after it, as served
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos : pos + 2 + length]
        payload = segment[4:]
        if marker == 0xE1 and payload.startswith(_EXIF_HEAD):
            existing = payload
        elif not (marker == 0xE1 and payload.startswith(_XMP_NS)):
            (head if marker == 0xE0 and not rest else rest).append(segment)
        pos += 2 + length
    ours = _segment(0xE1, _exif(existing, params)) + _segment(0xE1, _XMP_NS + _xmp(doc))
    return b"\xff\xd8" + b"".join(head) + ours + b"".join(rest) + tail


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def _webp(data: bytes, params: str, doc: str) -> bytes:
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size % 2)
    existing = next((body for kind, body in chunks if kind == b"EXIF"), None)
    kept = [(k, b) for k, b in chunks if k not in (b"EXIF", b"XMP ")]
    if kept[0][0] == b"VP8X":
        flagged = bytearray(kept[0][1])
        flagged[0] |= 0x08 | 0x04  # EXIF and XMP present
        kept[0] = (b"VP8X", bytes(flagged))
    else:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            alpha = img.mode in ("RGBA", "LA") or any(k == b"ALPH" for k, _ in kept)
        flags = 0x08 | 0x04 | (0x10 if alpha else 0)
        header = bytes((flags, 0, 0, 0)) + (width - 1).to_bytes(3, "little")
        kept.insert(0, (b"VP8X", header + (height - 1).to_bytes(3, "little")))
    exif = _exif(_EXIF_HEAD + existing.removeprefix(_EXIF_HEAD) if existing else None, params)
    kept += [(b"EXIF", exif.removeprefix(_EXIF_HEAD)), (b"XMP ", _xmp(doc))]
    body = b"WEBP" + b"".join(_riff_chunk(k, b) for k, b in kept)
    return b"RIFF" + struct.pack("<I", len(body)) + body
