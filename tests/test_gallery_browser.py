"""The gallery in a real browser: Debian's headless Chromium, driven by Playwright.

``python3 tasks.py test`` runs them whenever a Chromium can be found or installed (as
root with apt, ``apt-get install chromium``); alone: ``pytest -m browser
tests/test_gallery_browser.py``. The browser is ``$BATCHGEN_CHROMIUM`` or the first
``chromium`` on PATH; Playwright drives it, and its own browser download is never
used. The screenshot is kept at ``tests/artifacts/gallery.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchgen.fonts import system_fonts
from batchgen.gallery.build import build_gallery
from batchgen.spec.load import Spec, load_spec
from tests.test_gallery import MODELS, RATIOS, run_job, write_spec

EXAMPLE_ZH = Path(__file__).resolve().parents[1] / "examples" / "zh-astronaut-cat.yaml"

pytestmark = pytest.mark.browser


def _chromium() -> Path | None:
    named = os.environ.get("BATCHGEN_CHROMIUM")
    if named:
        return Path(named)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return Path(found)
    return None


CHROMIUM = _chromium()
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOT = ARTIFACTS / "gallery.png"
# Without the background-networking flags Chromium keeps trying to reach Google's
# services, which a closed network answers with a flood of errors.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TASKS = 12


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, Path]:
    """The test job, run against the simulator, with its gallery (and contact sheets) built."""
    folder = tmp_path_factory.mktemp("gallery-browser")
    spec = load_spec(write_spec(folder))
    anyio.run(run_job, spec, 0.25, backend="asyncio")  # 256 px images: a readable screenshot
    index = anyio.run(lambda: build_gallery(spec, png=True), backend="asyncio")
    return spec, index


@pytest.fixture(scope="module")
def zh_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Chinese example job, run against the simulator, with its gallery built."""
    folder = tmp_path_factory.mktemp("gallery-zh")
    spec = load_spec(shutil.copy(EXAMPLE_ZH, folder / EXAMPLE_ZH.name))
    anyio.run(run_job, spec, 0.25, backend="asyncio")
    return anyio.run(lambda: build_gallery(spec, png=True), backend="asyncio")


@pytest.fixture(scope="module")
def browser(gallery: tuple[Spec, Path], zh_gallery: Path) -> Iterator[Any]:
    """Headless Chromium from Debian (the galleries are built first: Playwright's sync API
    owns the event loop while it runs)."""
    if CHROMIUM is None or not CHROMIUM.exists():
        pytest.skip(
            "no Chromium: `apt-get install chromium` (or set BATCHGEN_CHROMIUM) to run the"
            " browser tests"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )
    # Playwright gives every launch a fresh temporary profile of its own.
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page with every console error, uncaught exception and failed request recorded."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("requestfailed", lambda req: self.problems.append(f"failed: {req.url}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def open(self, index: Path, fragment: str = "") -> Any:
        """Load the gallery from the file system and wait until it has settled."""
        self.page.goto(index.as_uri() + fragment)
        self.page.wait_for_load_state("load")
        return self.page

    def visible(self, selector: str) -> int:
        """How many elements matching ``selector`` are displayed."""
        return int(
            self.page.evaluate(
                "s => [...document.querySelectorAll(s)].filter(e => e.offsetParent !== null)"
                ".length",
                selector,
            )
        )


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    """A fresh watched page, closed afterwards."""
    w = Watched(browser)
    yield w
    w.context.close()


def test_page_loads_clean_with_every_task_and_labels(
    gallery: tuple[Spec, Path], watched: Watched
) -> None:
    """The page loads without console errors, shows one figure per task and the axis
    labels, its thumbnails decode, and a screenshot is kept."""
    _, index = gallery
    page = watched.open(index)
    assert page.locator("figure.task").count() == TASKS
    assert watched.visible("figure.task") == TASKS
    assert page.locator("section.grid").first.locator("th.xval").all_inner_texts() == list(MODELS)
    assert page.locator("section.grid").first.locator("th.yval").all_inner_texts() == list(RATIOS)
    assert "aspect_ratio" in page.locator("th.corner").first.inner_text()
    first = page.locator("figure[data-state=done] img").first
    first.scroll_into_view_if_needed()
    loaded = "img => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=first.element_handle())
    assert (
        page.locator("figure[data-state=failed] .err").inner_text().startswith("output_moderation")
    )
    # Lazy images load as they scroll into view: show them all before the screenshot.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(
        "[...document.querySelectorAll('figure img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert watched.problems == []


def test_filters_show_one_grid_and_one_state(gallery: tuple[Spec, Path], watched: Watched) -> None:
    """The subject filter leaves one grid, the state filter one task; the view survives a reload."""
    _, index = gallery
    page = watched.open(index)
    page.select_option("select[data-filter='0']", "1")
    assert watched.visible("section.grid") == 1
    assert watched.visible("figure.task") == TASKS // 2
    assert page.locator("#shown").inner_text() == f"{TASKS // 2} tasks shown"
    page.select_option("select[data-filter='0']", "")
    page.select_option("#state-filter", "failed")
    assert watched.visible("figure.task") == 1
    assert page.locator("#shown").inner_text() == "1 task shown"
    assert page.evaluate("location.hash") == "#state=failed"
    page = watched.open(index, "#f0=0")
    page.reload()
    assert page.locator("select[data-filter='0']").input_value() == "0"
    assert watched.visible("figure.task") == TASKS // 2
    assert watched.problems == []


def test_click_opens_full_image(gallery: tuple[Spec, Path], watched: Watched) -> None:
    """Clicking a thumbnail shows the full-size image in the lightbox; Escape closes it."""
    _, index = gallery
    page = watched.open(index)
    link = page.locator("a.img").first
    href = link.get_attribute("href")
    link.click()
    assert page.locator("#lightbox").is_visible()
    assert page.locator("#lb-img").get_attribute("src") == href
    page.wait_for_function(
        "() => document.getElementById('lb-img').complete"
        " && document.getElementById('lb-img').naturalWidth > 0"
    )
    assert "A studio photo of" in page.locator("#lb-cap").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#lightbox").is_visible()
    assert watched.problems == []


def test_a_chinese_page_is_drawn_with_a_cjk_font(zh_gallery: Path, watched: Watched) -> None:
    """The Chinese job's page declares zh-CN, and Chromium draws its prompts with the
    machine's CJK font (from the page's font stack), not a fallback box."""
    cjk = system_fonts().cjk
    if cjk is None:
        pytest.skip("no CJK font on this machine: `apt-get install fonts-wqy-microhei`")
    page = watched.open(zh_gallery)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert "一只戴着宇航服的猫" in page.locator("figure.task .prompt").first.inner_text()
    # Checked before DevTools is asked: its inspection of a file: page logs "unsafe
    # attempt to load URL" notices of its own.
    assert watched.problems == []
    cdp = watched.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "figure.task .prompt"})
    cdp.send("CSS.enable")
    used = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})["fonts"]
    family = cjk.load(16).getname()[0]
    assert any(f["familyName"] == family and f["glyphCount"] > 0 for f in used), used
