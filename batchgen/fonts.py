"""Fonts for the text batchgen draws into pictures, so that Chinese renders as Chinese.

Two stages draw text: the gallery's contact sheets (:mod:`batchgen.gallery.sheet`) and
the simulator's images (:mod:`batchgen.sim.images`). Both need the same thing, so it
lives here, at the top of the package beside :mod:`batchgen.errors`, rather than in
one stage for the other to import. Pillow's built-in font has no CJK glyphs: every
Chinese character it draws is an empty box. This module finds real fonts on the
system and draws with them:

- **Discovery** (:func:`find_fonts`, once per process): a font named by
  ``BATCHGEN_CJK_FONT`` / ``BATCHGEN_LATIN_FONT``; else fontconfig's choice for the
  language (``fc-match 'sans-serif:lang=zh-cn'``, ``'sans-serif:lang=en'``) where
  ``fc-match`` exists; else the usual font folders of Linux, macOS and Windows, by
  preference (Noto Sans CJK, Source Han Sans, WenQuanYi, PingFang, Microsoft YaHei,
  SimHei for CJK; DejaVu Sans, Noto Sans, Liberation Sans, Arial for Latin). A font
  collection (``.ttc``) is opened at its Simplified Chinese face when it has one.
  Every candidate is checked to really have the glyphs (fontconfig answers with its
  best match even when nothing covers the language).
- **Per-character fallback** (:class:`Typeface`): text is split into runs by the
  first font that covers each character (Latin first, then CJK), so mixed prompts
  render whole. Coverage is Pillow's own answer: a missing glyph renders as the
  font's ``.notdef`` box, the same mask as a code point no font has.
- **Wrapping** (:meth:`Typeface.wrap`) measures each run with its own font and may
  break between any two CJK characters (never before closing punctuation).
- **One warning** (:meth:`Typeface.notice`) names what to install when no font
  covers CJK text; the text is then drawn as well as possible.

Loaded fonts and coverage answers are cached; the same fonts give the same pixels, so
the simulator's images stay deterministic for a seed on a given machine.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CJK_PACKAGE_HINT",
    "FontFace",
    "Fonts",
    "Typeface",
    "covers",
    "find_fonts",
    "is_cjk",
    "missing_notice",
    "system_fonts",
    "typeface",
]

AnyFont = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: What to install when no font has CJK glyphs.
CJK_PACKAGE_HINT: Final = (
    "install a CJK font (Debian/Ubuntu: apt-get install fonts-noto-cjk, or the smaller"
    " fonts-wqy-microhei; Fedora: google-noto-sans-cjk-fonts; macOS and Windows have one),"
    " or name one in BATCHGEN_CJK_FONT"
)
#: The usual font folders of Linux, macOS and Windows, searched when fc-match is absent.
FONT_DIRS: Final = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
    "/System/Library/Fonts",
    "/Library/Fonts",
    "~/Library/Fonts",
    "C:\\Windows\\Fonts",
)
#: File-name fragments (lower case, no separators) in order of preference.
CJK_PREFERRED: Final = (
    "notosanscjk",
    "sourcehansans",
    "wqy-microhei",
    "wqy-zenhei",
    "pingfang",
    "msyh",
    "simhei",
    "hiraginosansgb",
    "stheiti",
    "notoserifcjk",
    "droidsansfallback",
)
LATIN_PREFERRED: Final = (
    "dejavusans.ttf",
    "notosans-regular",
    "liberationsans-regular",
    "arial.ttf",
    "helvetica",
    "verdana",
)
_FONT_SUFFIXES: Final = (".ttf", ".otf", ".ttc", ".otc")
_NOT_REGULAR: Final = ("bold", "italic", "oblique", "mono", "condensed", "light", "thin", "black")
_MAX_FILES: Final = 20_000  # a font folder scan stops here: never walk a whole disk
_PROBE_SIZE: Final = 24  # coverage does not depend on size: probe once, at this one
_MISSING: Final = "\U0010fffd"  # a private-use code point no font draws
_CLOSING: Final = frozenset("，。、；：！？）》」』】〉,.;:!?)]}…")
_PROBE_CJK: Final = "中文猫"


def is_cjk(ch: str) -> bool:
    """Whether ``ch`` is a CJK character (ideographs, kana, Hangul, CJK punctuation and
    full-width forms): text that needs a CJK font."""
    code = ord(ch)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, punctuation, kana, CJK ideographs (and ext. A)
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFE30 <= code <= 0xFE4F  # vertical forms
        or 0xFF00 <= code <= 0xFFEF  # full-width and half-width forms
        or 0x1100 <= code <= 0x11FF  # Hangul jamo
        or 0x20000 <= code <= 0x3FFFF  # ideographs, extensions B and later
    )


@dataclass(frozen=True, slots=True)
class FontFace:
    """One face of a font file: ``path`` and its ``index`` in a collection."""

    path: str
    index: int = 0

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        """The face at ``size`` pixels (cached; raises OSError for an unusable file)."""
        return _load(self.path, self.index, size)


@dataclass(frozen=True, slots=True)
class Fonts:
    """The faces text is drawn with: ``latin`` then ``cjk`` (None: not found)."""

    latin: FontFace | None
    cjk: FontFace | None


@functools.lru_cache(maxsize=256)
def _load(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=index)


@functools.lru_cache(maxsize=64)
def _notdef(path: str, index: int) -> tuple[object, ...]:
    return _signature(_load(path, index, _PROBE_SIZE), _MISSING)


def _signature(font: ImageFont.FreeTypeFont, ch: str) -> tuple[object, ...]:
    """What ``font`` draws for ``ch``: its box, its pixels and its advance."""
    box = tuple(int(v) for v in font.getbbox(ch))
    image = Image.new("L", (max(1, box[2] - box[0]), max(1, box[3] - box[1])))
    ImageDraw.Draw(image).text((-box[0], -box[1]), ch, font=font, fill=255)
    return (box, image.tobytes(), font.getlength(ch))


_coverage: dict[tuple[str, int, str], bool] = {}


def covers(face: FontFace, ch: str) -> bool:
    """Whether ``face`` has a glyph for ``ch`` (cached per face and character)."""
    key = (face.path, face.index, ch)
    known = _coverage.get(key)
    if known is None:
        try:
            font = face.load(_PROBE_SIZE)
            known = _signature(font, ch) != _notdef(face.path, face.index)
        except OSError:
            known = False
        _coverage[key] = known
    return known


def _usable(face: FontFace, probe: str) -> bool:
    try:
        face.load(_PROBE_SIZE)
    except OSError:
        return False
    return all(covers(face, ch) for ch in probe)


def _collection_face(path: str) -> FontFace:
    """The face of ``path`` to use: in a collection, the Simplified Chinese one
    (``... SC``) when there is one, else the first."""
    if not path.lower().endswith((".ttc", ".otc")):
        return FontFace(path)
    for index in range(32):
        try:
            family = _load(path, index, _PROBE_SIZE).getname()[0] or ""
        except OSError:
            break
        if family.endswith((" SC", " GB")) or "Simplified" in family:
            return FontFace(path, index)
    return FontFace(path)


def _fc_match(pattern: str) -> FontFace | None:
    fc = shutil.which("fc-match")
    if fc is None:
        return None
    try:
        done = subprocess.run(
            [fc, "-f", "%{file}\n%{index}\n", pattern],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.splitlines()
    if done.returncode or not lines or not lines[0]:
        return None
    index = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0
    return FontFace(lines[0], index)


def _font_files(dirs: Iterable[str]) -> Iterator[Path]:
    seen = 0
    for folder in dirs:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for base, _dirs, files in os.walk(root):
            for name in sorted(files):
                if name.lower().endswith(_FONT_SUFFIXES):
                    seen += 1
                    if seen > _MAX_FILES:
                        return
                    yield Path(base) / name


def _ranked(files: Sequence[Path], preferred: Sequence[str]) -> list[Path]:
    """``files`` whose names match a preference, best first (regular faces first)."""

    def flat(path: Path) -> str:
        return path.name.lower().replace(" ", "").replace("_", "")

    ranked = []
    for path in files:
        name = flat(path)
        rank = next((i for i, part in enumerate(preferred) if part in name), None)
        if rank is not None:
            styled = any(word in name for word in _NOT_REGULAR)
            ranked.append(((rank, styled, name), path))
    return [path for _, path in sorted(ranked)]


def _candidates(
    named: str | None,
    fc_pattern: str | None,
    files: Callable[[], Sequence[Path]],
    preferred: Sequence[str],
) -> Iterator[FontFace]:
    if named:
        yield _collection_face(named)
    if fc_pattern is not None:
        matched = _fc_match(fc_pattern)
        if matched is not None:
            yield matched
    # Only walked when neither the environment nor fontconfig gave a usable face.
    for path in _ranked(files(), preferred):
        yield _collection_face(str(path))


def _pick(candidates: Iterator[FontFace], probe: str) -> FontFace | None:
    return next((face for face in candidates if _usable(face, probe)), None)


def find_fonts(
    *,
    environ: Mapping[str, str] | None = None,
    dirs: Sequence[str] = FONT_DIRS,
    use_fontconfig: bool = True,
) -> Fonts:
    """The Latin and CJK faces this machine has (see the module docstring for the order
    of the search). Never raises: a face that cannot be found is None."""
    env = os.environ if environ is None else environ
    files = functools.cache(lambda: list(_font_files(dirs)))
    fc_zh = "sans-serif:lang=zh-cn" if use_fontconfig else None
    fc_en = "sans-serif:lang=en" if use_fontconfig else None
    cjk = _pick(_candidates(env.get("BATCHGEN_CJK_FONT"), fc_zh, files, CJK_PREFERRED), _PROBE_CJK)
    latin = _pick(_candidates(env.get("BATCHGEN_LATIN_FONT"), fc_en, files, LATIN_PREFERRED), "Aa")
    return Fonts(latin, cjk)


@functools.cache
def system_fonts() -> Fonts:
    """:func:`find_fonts` for this machine, searched once per process."""
    return find_fonts()


class Typeface:
    """Text at one size drawn with per-character fallback between a Latin and a CJK
    face (either may be missing: Pillow's default font stands in for Latin)."""

    def __init__(self, size: int, fonts: Fonts) -> None:
        self.size = size
        self.fonts = fonts
        self.faces: list[tuple[FontFace | None, AnyFont]] = []
        for face in (fonts.latin, fonts.cjk):
            if face is not None:
                try:
                    self.faces.append((face, face.load(size)))
                except OSError:
                    continue
        if fonts.latin is None or not self.faces:
            self.faces.insert(0, (None, _default_font(size)))
        self.primary = self.faces[0][1]
        cjk = fonts.cjk
        self._cjk_font = next((f for face, f in self.faces if cjk and face == cjk), None)
        #: CJK characters that no face covered (drawn as boxes): see :meth:`notice`.
        self.missing: set[str] = set()

    # --- runs ------------------------------------------------------------------------

    def _font_for(self, ch: str) -> AnyFont | None:
        """The first font that covers ``ch``; None for whitespace (any font will do)."""
        if ch.isspace() or not ch.isprintable():
            return None
        for face, font in self.faces:
            if face is None:
                if not is_cjk(ch):
                    return font  # Pillow's own font: trust it for non-CJK text
                continue
            if covers(face, ch):
                return font
        if is_cjk(ch):
            self.missing.add(ch)
            return self._cjk_font or self.primary
        return self.primary

    def runs(self, text: str) -> list[tuple[str, AnyFont]]:
        """``text`` cut into runs that one font draws each, in order."""
        out: list[tuple[str, AnyFont]] = []
        current: list[str] = []
        font: AnyFont | None = None
        for ch in text:
            chosen = self._font_for(ch)
            if chosen is None or chosen is font or font is None:
                current.append(ch)
                font = font or chosen
                continue
            out.append(("".join(current), font))
            current, font = [ch], chosen
        if current:
            out.append(("".join(current), font or self.primary))
        return out

    def length(self, text: str) -> float:
        """The width of ``text`` in pixels, each run measured with its own font."""
        return sum(font.getlength(run) for run, font in self.runs(text))

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        xy: tuple[float, float],
        text: str,
        fill: tuple[int, int, int],
    ) -> None:
        """Draw ``text`` with its top-left at ``xy``, every run on one baseline."""
        x, y = xy
        if not isinstance(self.primary, ImageFont.FreeTypeFont):
            draw.text((x, y), text, font=self.primary, fill=fill)  # a bitmap font: no runs
            return
        baseline = y + self.primary.getmetrics()[0]
        for run, font in self.runs(text):
            draw.text((x, baseline), run, font=font, fill=fill, anchor="ls")
            x += font.getlength(run)

    # --- wrapping ----------------------------------------------------------------------

    def wrap(self, text: str, width: float, max_lines: int, *, ellipsis: bool = True) -> list[str]:
        """``text`` in at most ``max_lines`` lines of ``width`` pixels: broken at spaces
        and between CJK characters, a word wider than a line cut, and (with
        ``ellipsis``) the last line ending in "..." when the text does not fit."""
        lines: list[str] = []
        line = ""
        tokens = _tokens(text)
        i = 0
        while i < len(tokens) and len(lines) < max_lines:
            token = tokens[i]
            if token.isspace():
                i += 1
                if line and i < len(tokens):
                    line += " "
                continue
            trial = line + token
            if self.length(trial) <= width:
                line = trial
                i += 1
                continue
            if line.strip():
                lines.append(line.rstrip())
                line = ""
                continue
            cut = token  # one token wider than the line: cut it
            while len(cut) > 1 and self.length(cut) > width:
                cut = cut[:-1]
            lines.append(cut)
            tokens[i] = token[len(cut) :]
            if not tokens[i]:
                i += 1
        if line.strip() and len(lines) < max_lines:
            lines.append(line.rstrip())
        rest = "".join(tokens[i:]).strip()
        if ellipsis and rest and lines:
            last = lines[-1]
            while last and self.length(last + "...") > width:
                last = last[:-1]
            lines[-1] = last + "..."
        return lines

    def notice(self) -> str | None:
        """The warning to give once when CJK text had no font, else None."""
        return missing_notice(self.missing)


def missing_notice(missing: Iterable[str]) -> str | None:
    """The one warning for CJK characters that no font covered (None when there are none):
    which, and what to install."""
    chars = sorted(set(missing))
    if not chars:
        return None
    more = f" and {len(chars) - 8} more" if len(chars) > 8 else ""
    return (
        f"no installed font has glyphs for {''.join(chars[:8])}{more}, so they are drawn as"
        f" boxes: {CJK_PACKAGE_HINT}"
    )


def _tokens(text: str) -> list[str]:
    """Words, single spaces and single CJK characters (closing punctuation stays with
    the character before it, so no line starts with it)."""
    out: list[str] = []
    word = ""
    for ch in text:
        if ch.isspace():
            if word:
                out.append(word)
                word = ""
            if out and not out[-1].isspace():
                out.append(" ")
        elif ch in _CLOSING and not word and out and not out[-1].isspace():
            out[-1] += ch  # 。after 猫: one token
        elif is_cjk(ch) and ch not in _CLOSING:
            if word:
                out.append(word)
                word = ""
            out.append(ch)
        else:
            word += ch
    if word:
        out.append(word)
    return out


def _default_font(size: int) -> AnyFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


@functools.lru_cache(maxsize=64)
def typeface(size: int) -> Typeface:
    """The system's fonts at ``size`` pixels, shared by every caller in the process (make
    a :class:`Typeface` of your own to collect :attr:`~Typeface.missing` for one job)."""
    return Typeface(size, system_fonts())
