"""Text in pictures: real system fonts, per-character fallback, CJK glyphs that are glyphs.

The glyph tests need a CJK font on the machine (`python3 tasks.py test` installs Debian's
fonts-wqy-microhei when it runs as root with apt); elsewhere they skip, saying how to
get one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from batchgen.cli import main
from batchgen.fonts import (
    FontFace,
    Fonts,
    Typeface,
    covers,
    find_fonts,
    is_cjk,
    missing_notice,
    system_fonts,
)
from batchgen.gallery import sheet
from batchgen.gallery.html import page_language
from batchgen.sim.images import RenderParams, render_png

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "zh-astronaut-cat.yaml"
PROMPT = "一只戴着宇航服的猫，水彩画"
NO_CJK_FONT = (
    "no CJK font on this machine: install one (Debian: apt-get install fonts-wqy-microhei"
    " or fonts-noto-cjk) to run the glyph tests"
)
needs_cjk_font = pytest.mark.skipif(system_fonts().cjk is None, reason=NO_CJK_FONT)
#: No font found at all: Pillow's own font stands in (it has no CJK glyphs).
NOTHING = Fonts(latin=None, cjk=None)


def _drawn(face: Typeface, text: str) -> bytes:
    """The pixels of ``text`` drawn alone in black on white."""
    image = Image.new("RGB", (face.size * 4, face.size * 2), (255, 255, 255))
    face.draw(ImageDraw.Draw(image), (2, 2), text, (0, 0, 0))
    return image.tobytes()


def assert_real_glyphs(face: Typeface, text: str) -> None:
    """Every CJK character of ``text`` draws its own glyph: ink, different from the
    missing-glyph box, and different from every other character (boxes are all alike)."""
    box = _drawn(face, "\U0010fffd")
    blank = _drawn(face, " ")
    seen: dict[bytes, str] = {}
    for ch in sorted({c for c in text if is_cjk(c)}):
        pixels = _drawn(face, ch)
        assert pixels != blank, f"{ch!r} draws nothing"
        assert pixels != box, f"{ch!r} draws the missing-glyph box"
        assert pixels not in seen, f"{ch!r} draws the same as {seen.get(pixels)!r}"
        seen[pixels] = ch
    assert not face.missing


def test_is_cjk() -> None:
    """Ideographs, kana, Hangul, CJK and full-width punctuation are CJK; Latin is not."""
    assert all(is_cjk(ch) for ch in "猫の고，。！")
    assert not any(is_cjk(ch) for ch in "aZ é,.!-€")


@needs_cjk_font
def test_a_chinese_prompt_renders_real_glyphs() -> None:
    """With the system's fonts, each character of a Chinese prompt is a real glyph."""
    face = Typeface(24, system_fonts())
    assert_real_glyphs(face, PROMPT)


@needs_cjk_font
def test_mixed_text_falls_back_per_character() -> None:
    """Latin runs use the Latin face and CJK runs the CJK face; widths add up per run."""
    fonts = system_fonts()
    face = Typeface(20, fonts)
    runs = face.runs("猫 cat 狗, dog")
    assert "".join(run for run, _ in runs) == "猫 cat 狗, dog"
    assert len(runs) >= 3
    assert fonts.cjk is not None
    cjk_font = fonts.cjk.load(20)
    assert all((font is cjk_font) == any(is_cjk(c) for c in run) for run, font in runs)
    by_run = sum(font.getlength(run) for run, font in face.runs("猫 cat"))
    assert face.length("猫 cat") == pytest.approx(by_run)
    assert covers(fonts.cjk, "猫")


@needs_cjk_font
def test_wrapping_breaks_between_cjk_characters() -> None:
    """Chinese text wraps between characters, within the width, never starting a line with
    closing punctuation; the cut-off end gets an ellipsis."""
    face = Typeface(16, system_fonts())
    text = "一只戴着宇航服的猫，在月球上喝咖啡。它看着地球，想起了家。"
    lines = face.wrap(text, 100, 3)
    assert len(lines) == 3
    assert all(face.length(line) <= 100 for line in lines)
    assert not any(line[0] in "，。" for line in lines)
    assert lines[-1].endswith("...")
    assert "".join(face.wrap(text, 10_000, 1)) == text


def test_without_fonts_text_is_still_drawn_and_one_notice_says_what_to_install() -> None:
    """With no font found, Latin text uses Pillow's font, CJK characters are recorded as
    missing, and the notice names a package to install."""
    face = Typeface(16, NOTHING)
    assert face.wrap("a cat 一只猫", 1000, 1) == ["a cat 一只猫"]
    _drawn(face, "a cat 一只猫")
    assert face.missing == {"一", "只", "猫"}
    notice = face.notice()
    assert notice is not None
    assert "fonts-noto-cjk" in notice
    assert "一只猫" in notice
    assert missing_notice([]) is None


def test_discovery_finds_nothing_where_there_is_nothing(tmp_path: Path) -> None:
    """An empty font folder, no fontconfig and no variables: no faces, and no error."""
    assert find_fonts(environ={}, dirs=[str(tmp_path)], use_fontconfig=False) == NOTHING


def test_discovery_prefers_the_regular_face_and_honours_the_variables(tmp_path: Path) -> None:
    """A folder search picks the preferred family's regular face; BATCHGEN_CJK_FONT and
    BATCHGEN_LATIN_FONT name fonts directly; a file without the glyphs is passed over."""
    latin = system_fonts().latin
    if latin is None:
        pytest.skip("no Latin font on this machine")
    shutil.copy(latin.path, tmp_path / "DejaVuSans-Bold.ttf")
    shutil.copy(latin.path, tmp_path / "DejaVuSans.ttf")
    found = find_fonts(environ={}, dirs=[str(tmp_path)], use_fontconfig=False)
    assert found.latin == FontFace(str(tmp_path / "DejaVuSans.ttf"))
    assert found.cjk is None  # DejaVu has no CJK glyphs, whatever its name
    named = find_fonts(
        environ={"BATCHGEN_LATIN_FONT": str(tmp_path / "DejaVuSans-Bold.ttf")},
        dirs=[],
        use_fontconfig=False,
    )
    assert named.latin == FontFace(str(tmp_path / "DejaVuSans-Bold.ttf"))


@needs_cjk_font
def test_simulated_images_show_the_prompt_deterministically() -> None:
    """A Chinese prompt renders into the simulator's image the same bytes every time,
    and its text is drawn (not Pillow's boxes: the image differs from one without a
    CJK font)."""
    params = RenderParams("nano-banana", PROMPT, 512, 512)
    first = render_png(params)
    assert render_png(params) == first
    assert render_png(RenderParams("nano-banana", "一只戴着宇航服的狗，水彩画", 512, 512)) != first


def test_page_language_follows_the_prompts() -> None:
    """Mostly Chinese prompts make a zh-CN page; kana ja, Hangul ko; English stays en."""
    assert page_language(["一只戴着宇航服的猫", "a cat"]) == "zh-CN"
    assert page_language(["宇宙服を着た猫"]) == "ja"
    assert page_language(["우주복을 입은 고양이"]) == "ko"
    assert page_language(["a cat in a spacesuit, 水彩"]) == "en"
    assert page_language([]) == "en"


# --- the end to end: a spec written in Chinese, run, and its contact sheet --------------


def _copy_example(folder: Path) -> Path:
    spec = folder / EXAMPLE.name
    shutil.copy(EXAMPLE, spec)
    return spec


@needs_cjk_font
def test_a_chinese_job_runs_and_its_contact_sheet_shows_the_chinese(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Chinese example validates, plans, runs against the simulator and makes a
    gallery whose page says zh-CN and whose contact sheet draws its labels with real
    glyphs."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = _copy_example(tmp_path)
    assert main(["validate", str(spec)]) == 0
    assert "4 tasks (2 风格 \u00d7 2 场景)" in capsys.readouterr().out
    assert main(["plan", "--json", str(spec)]) == 0
    tasks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {t["vars"]["风格"] for t in tasks} == {"水彩画", "油画"}
    assert tasks[0]["prompt"] == "一只戴着宇航服的猫，漂浮在空间站里，水彩画"
    assert main(["run", "--sim", "--sim-latency", "0.05", "--quiet", str(spec)]) == 0
    out = tmp_path / "out" / "宇航猫-sim"
    assert (out / "水彩画").is_dir()
    assert len(list(out.rglob("*.png"))) == 4
    assert main(["gallery", "--sim", "--png", str(spec)]) == 0
    _, err = capsys.readouterr()
    assert "warning" not in err
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in page
    assert '"Noto Sans CJK SC"' in page
    assert "一只戴着宇航服的猫" in page
    sheets = sorted((out / "contact-sheets").glob("*.png"))
    assert len(sheets) == 1
    label = Typeface(13, system_fonts())
    with Image.open(sheets[0]) as image:
        drawn = image.convert("RGB")
    # The first row's label, where the sheet draws it, is exactly the label typeface's
    # drawing of it (the axes the gallery picked: 场景 down, 风格 across).
    top = sheet._TITLE_H + sheet._HEADER_H + sheet._GAP
    crop = drawn.crop((0, top, sheet._LABEL_W, top + 24))
    expected = Image.new("RGB", crop.size, (255, 255, 255))
    label.draw(ImageDraw.Draw(expected), (sheet._GAP, 4), "漂浮在空间站里", (29, 29, 31))
    assert crop.tobytes() == expected.tobytes()
    assert_real_glyphs(label, "漂浮在空间站里 站在月球上 水彩画 油画 宇航猫")


def test_without_a_cjk_font_the_gallery_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no CJK font, `gallery --png` still writes the sheet and prints one warning
    naming what to install; installing one later redraws the sheet."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = _copy_example(tmp_path)
    assert main(["run", "--sim", "--sim-latency", "0.05", "--quiet", str(spec)]) == 0
    capsys.readouterr()
    fonts = system_fonts()
    monkeypatch.setattr(sheet, "system_fonts", lambda: Fonts(fonts.latin, None))
    assert main(["gallery", "--sim", "--png", str(spec)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "fonts-noto-cjk" in warnings[0]
    assert (tmp_path / "out" / "宇航猫-sim" / "contact-sheets" / "001-all-tasks.png").is_file()
    if fonts.cjk is None:
        return
    monkeypatch.setattr(sheet, "system_fonts", lambda: fonts)
    assert main(["gallery", "--sim", "--png", str(spec)]) == 0
    err = capsys.readouterr().err
    assert "1 contact sheet(s)" in err
    assert "warning" not in err
