"""The gallery's HTML: self-contained static pages that work from the file system.

Every page is one file with inline CSS and plain JavaScript (no framework, no CDN, no
server), linking images and thumbnails by relative URL, so the output folder can be
opened, copied or zipped as it is. Every piece of text (prompts are user text, axis
values come from row files) goes through :func:`html.escape`, and every link through
:func:`urllib.parse.quote`; the script reads only ``data-`` attributes and
``textContent``, never HTML. Output is a pure function of its input: no timestamps, so
an unchanged job renders byte-identical pages.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from batchgen.gallery.model import Choice, Page, Part, SheetLink, TaskView, grid_title

__all__ = ["STATE_ORDER", "PageContext", "page_language", "render_page"]

#: States in the order the summary and the state filter list them.
STATE_ORDER: Final = (
    "done",
    "failed",
    "unknown",
    "missing",
    "pending",
    "submitting",
    "running",
    "downloading",
)


@dataclass(frozen=True, slots=True)
class PageContext:
    """What every page of one gallery shares.

    ``counts`` are tasks per shown state; ``spent`` the money charged for the job's
    tasks; ``sheets`` the contact sheets of each grid, by grid number;
    ``not_in_spec`` the ledger's tasks the spec no longer lists (not shown); ``lang``
    the page's language (:func:`page_language`).
    """

    job: str
    description: str
    currency: str
    choice: Choice
    pages: Sequence[Page]
    counts: Mapping[str, int]
    spent: float
    not_in_spec: int = 0
    show_variant: bool = False
    sheets: Mapping[int, Sequence[SheetLink]] | None = None
    lang: str = "en"


def page_language(texts: Iterable[str]) -> str:
    """The ``lang`` of a page showing ``texts`` (the job's prompts): ``zh-CN`` when most
    of their letters are CJK ideographs, ``ja`` or ``ko`` when kana or Hangul are among
    them, else ``en``, the language of the page's own words. Browsers pick the CJK
    glyphs of a font by it, and screen readers their voice."""
    letters = cjk = kana = hangul = 0
    for text in texts:
        for ch in text:
            if not ch.isalpha():
                continue
            letters += 1
            code = ord(ch)
            if 0x3040 <= code <= 0x30FF:
                kana += 1
            elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
                hangul += 1
            elif 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or code >= 0x20000:
                cjk += 1
    if 2 * (cjk + kana + hangul) <= letters:
        return "en"
    return "ja" if kana else "ko" if hangul else "zh-CN"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _url(relpath: str) -> str:
    # Quote everything but "/": a ":" in the first part would otherwise read as a URL
    # scheme, and "#", "?" or "%" in a file name would cut the path short.
    return _e(urllib.parse.quote(relpath, safe="/"))


def _money(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def render_page(ctx: PageContext, page: Page) -> str:
    """The complete HTML of ``page``."""
    total = sum(ctx.counts.values())
    out: list[str] = [
        f'<!doctype html>\n<html lang="{_e(ctx.lang)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="batchgen gallery">\n'
        '<link rel="icon" href="data:,">\n',
        f"<title>{_e(ctx.job)} · gallery"
        + (f" · page {page.number}" if len(ctx.pages) > 1 else "")
        + "</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n<header>\n",
        f"<h1>{_e(ctx.job)}</h1>\n",
    ]
    if ctx.description:
        out.append(f'<p class="desc">{_e(ctx.description)}</p>\n')
    states = ", ".join(
        f'<span class="s-{_e(s)}">{ctx.counts[s]} {_e(s)}</span>'
        for s in _ordered_states(s for s, n in ctx.counts.items() if n)
    )
    out.append(
        f'<p class="summary">{total} task{"s" if total != 1 else ""}: {states}'
        f" · spent {_money(ctx.spent)} {_e(ctx.currency)}</p>\n"
    )
    if ctx.not_in_spec:
        out.append(
            f'<p class="note">{ctx.not_in_spec} task(s) in the ledger are no longer in the'
            " spec: not shown.</p>\n"
        )
    out.append(_axes_line(ctx.choice))
    if len(ctx.pages) > 1:
        out.append(_page_nav(ctx, page))
    out.append(_controls(ctx, page))
    out.append("</header>\n<main>\n")
    for part in page.parts:
        out.append(_section(ctx, part))
    out.append("</main>\n")
    if len(ctx.pages) > 1:
        out.append(f"<footer>{_page_nav(ctx, page)}</footer>\n")
    out.append(_LIGHTBOX)
    out.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(out)


def _ordered_states(present: Iterable[str]) -> list[str]:
    """``present`` in :data:`STATE_ORDER`, states it does not list last, sorted."""
    states = set(present)
    return [s for s in STATE_ORDER if s in states] + sorted(states - set(STATE_ORDER))


def _axes_line(choice: Choice) -> str:
    bits = []
    if choice.x is not None:
        bits.append(f'across: <b class="axis-name">{_e(choice.x.name)}</b>')
    if choice.y is not None:
        bits.append(f'down: <b class="axis-name">{_e(choice.y.name)}</b>')
    if choice.filters:
        names = ", ".join(f'<b class="axis-name">{_e(f.name)}</b>' for f in choice.filters)
        bits.append(f"one grid per {names}")
    for dim in choice.fixed:
        bits.append(f"{_e(dim.name)}: {_e(dim.label(dim.values[0]))} for every task")
    return f'<p class="axes">{" · ".join(bits)}</p>\n' if bits else ""


def _part_title(choice: Choice, part: Part) -> str:
    title = grid_title(choice, part.grid.filter_values)
    if part.chunks > 1:
        first = part.grid.ys.index(part.ys[0]) + 1
        title += f" (rows {first}\u2013{first + len(part.ys) - 1} of {len(part.grid.ys)})"
    return title


def _page_nav(ctx: PageContext, page: Page) -> str:
    links = []
    for other in ctx.pages:
        about = "; ".join(_part_title(ctx.choice, part) for part in other.parts[:4])
        if len(other.parts) > 4:
            about += f"; and {len(other.parts) - 4} more grids"
        current = ' aria-current="page"' if other.number == page.number else ""
        links.append(
            f'<a href="{_url(other.filename)}" title="{_e(about)}"{current}>{other.number}</a>'
        )
    return f'<nav class="pages">pages: {" ".join(links)}</nav>\n'


def _controls(ctx: PageContext, page: Page) -> str:
    out = ['<form class="controls" id="controls" onsubmit="return false">\n']
    for i, dim in enumerate(ctx.choice.filters):
        present = sorted({part.grid.filter_values[i] for part in page.parts})
        options = "".join(
            f'<option value="{v}">{_e(_short(dim.label(dim.values[v]), 80))}</option>'
            for v in present
        )
        out.append(
            f'<label>{_e(dim.name)} <select data-filter="{i}">'
            f'<option value="">all</option>{options}</select></label>\n'
        )
    page_states = {
        task.state
        for part in page.parts
        for y in part.ys
        for x in part.grid.xs
        for task in part.grid.cells.get((y, x), ())
    }
    options = "".join(
        f'<option value="{_e(s)}">{_e(s)}</option>' for s in _ordered_states(page_states)
    )
    out.append(
        f'<label>state <select id="state-filter"><option value="">all</option>{options}'
        "</select></label>\n"
        '<label><input type="checkbox" id="captions" checked> captions</label>\n'
        f'<output id="shown">{page.task_count} tasks</output>\n</form>\n'
    )
    return "".join(out)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _section(ctx: PageContext, part: Part) -> str:
    choice = ctx.choice
    grid = part.grid
    attrs = "".join(f' data-f{i}="{v}"' for i, v in enumerate(grid.filter_values))
    out = [
        f'<section class="grid" id="grid-{grid.number}"{attrs}>\n',
        f"<h2>{_e(_part_title(choice, part))}"
        f" <small>{part.task_count} task{'s' if part.task_count != 1 else ''}</small>",
        _sheet_links(ctx, part),
        "</h2>\n",
        '<div class="scroll"><table>\n',
        f'<caption class="axes">{_caption(choice)}</caption>\n',
    ]
    if choice.x is not None:
        out.append("<thead><tr>")
        if choice.y is not None:
            out.append(
                f'<th class="corner" scope="col"><span class="yname">{_e(choice.y.name)} ↓</span>'
                f' <span class="xname">{_e(choice.x.name)} →</span></th>'
            )
        for x in grid.xs:
            label = choice.x.label(choice.x.values[x])
            out.append(f'<th class="xval" scope="col" title="{_e(label)}">{_e(label)}</th>')
        out.append("</tr></thead>\n")
    out.append("<tbody>\n")
    for y in part.ys:
        out.append("<tr>")
        if choice.y is not None:
            label = choice.y.label(choice.y.values[y])
            out.append(f'<th class="yval" scope="row" title="{_e(label)}">{_e(label)}</th>')
        for x in grid.xs:
            out.append(_cell(ctx, grid.cells.get((y, x), [])))
        out.append("</tr>\n")
    out.append("</tbody></table></div>\n</section>\n")
    return "".join(out)


def _sheet_links(ctx: PageContext, part: Part) -> str:
    """Links to the contact sheets that show rows of ``part``."""
    sheets = list((ctx.sheets or {}).get(part.grid.number, ()))
    rows = set(part.ys)
    mine = [(n, sheet) for n, sheet in enumerate(sheets, 1) if rows.intersection(sheet.ys)]
    if not mine:
        return ""
    if len(sheets) == 1:
        return f' <a class="sheet" href="{_url(sheets[0].path)}">contact sheet</a>'
    links = " ".join(f'<a class="sheet" href="{_url(sheet.path)}">{n}</a>' for n, sheet in mine)
    return f' <span class="sheet">contact sheets: {links}</span>'


def _caption(choice: Choice) -> str:
    bits = []
    if choice.x is not None:
        bits.append(f"{_e(choice.x.name)} across")
    if choice.y is not None:
        bits.append(f"{_e(choice.y.name)} down")
    return ", ".join(bits) or "every task"


def _cell(ctx: PageContext, tasks: Sequence[TaskView]) -> str:
    """One table cell: a task, several (repeat variants, stacked), or none."""
    if not tasks:
        return '<td class="cell empty" title="no task here: excluded, or not in the matrix">—</td>'
    if len(tasks) == 1:
        return f'<td class="cell">{_figure(ctx, tasks[0], stacked=False)}</td>'
    # Variants of one combination: small tiles with their own key, cost and state, and
    # the prompt, model and size they share written once below.
    prompts = {task.prompt for task in tasks}
    shared_prompt = len(prompts) == 1
    per_row = min(len(tasks), _STACK_PER_ROW)
    out = [f'<td class="cell stack"><div class="variants" style="--per-row:{per_row}">']
    out.extend(_figure(ctx, task, stacked=True, with_prompt=not shared_prompt) for task in tasks)
    first = tasks[0]
    meta = " · ".join(_e(m) for m in (first.model, first.aspect_ratio, first.image_size))
    out.append('</div><div class="shared">')
    if shared_prompt:
        out.append(f'<p class="prompt">{_e(first.prompt)}</p>')
    out.append(f'<p class="meta">{meta} · {len(tasks)} variants</p></div></td>')
    return "".join(out)


def _fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, box / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _figure(ctx: PageContext, task: TaskView, *, stacked: bool, with_prompt: bool = True) -> str:
    state = task.state
    box = _STACK_BOX if stacked else None
    out = [f'<figure class="task" data-state="{_e(state)}" data-key="{_e(task.key)}">']
    if task.images:
        for image in task.images:
            out.append(f'<a class="img" href="{_url(image.href)}">')
            if image.thumb is not None:
                size = ""
                if image.thumb_size is not None:
                    # Width and height reserve the tile's space before it loads, so lazy
                    # loading fetches only what is on screen.
                    w, h = _fit(image.thumb_size, box) if box else image.thumb_size
                    size = f' width="{w}" height="{h}"'
                out.append(
                    f'<img src="{_url(image.thumb)}" loading="lazy" decoding="async"{size}'
                    f' alt="{_e(_short(task.prompt, 200))}">'
                )
            else:
                out.append('<span class="ph">no preview</span>')
            out.append("</a>")
    else:
        out.append(f'<div class="ph">{_e(state)}</div>')
    out.append("<figcaption>")
    if with_prompt:
        out.append(f'<p class="prompt">{_e(task.prompt)}</p>')
    meta = [] if stacked else [task.model, task.aspect_ratio, task.image_size]
    if task.images and task.images[0].width and task.images[0].height and not stacked:
        meta.append(f"{task.images[0].width}\u00d7{task.images[0].height}")
    if ctx.show_variant:
        meta.append(f"v{task.variant}")
    cost = f"{_money(task.cost)} {ctx.currency}" + (" est." if task.cost_is_estimate else "")
    out.append('<p class="meta">')
    out.append("".join(f"{_e(m)} · " for m in meta))
    out.append(
        f'<code title="{_e(task.key)}">{_e(task.key[:8])}</code>'
        f' · <span class="cost">{_e(cost)}</span>'
        f' · <span class="state">{_e(state)}</span></p>'
    )
    if task.error:
        out.append(f'<p class="err">{_e(task.error)}</p>')
    out.append("</figcaption></figure>")
    return "".join(out)


_STACK_BOX: Final = 120
_STACK_PER_ROW: Final = 4

_CSS: Final = """
:root{color-scheme:light dark;--bg:#fafafa;--fg:#1d1d1f;--mute:#6e6e73;--line:#d2d2d7;
--card:#fff;--done:#1a7f37;--failed:#cf222e;--unknown:#bc4c00;--missing:#8250df;--other:#57606a}
@media (prefers-color-scheme:dark){:root{--bg:#111;--fg:#eee;--mute:#a1a1a6;--line:#333;
--card:#1c1c1e;--done:#3fb950;--failed:#ff7b72;--unknown:#f0883e;--missing:#bc8cff}}
*{box-sizing:border-box}[hidden]{display:none!important}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC",
"Source Han Sans SC","PingFang SC","Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;
background:var(--bg);color:var(--fg)}
header{padding:12px 16px;border-bottom:1px solid var(--line)}
h1{margin:0 0 4px;font-size:20px}h2{font-size:16px;margin:16px 16px 8px}
h2 small{color:var(--mute);font-weight:normal}.desc,.note,.axes{color:var(--mute);margin:2px 0}
.summary{margin:2px 0}.s-done{color:var(--done)}.s-failed{color:var(--failed)}
.s-unknown{color:var(--unknown)}.s-missing{color:var(--missing)}
figure[data-state=failed]{--ink:var(--failed)}figure[data-state=unknown]{--ink:var(--unknown)}
figure[data-state=missing]{--ink:var(--missing)}figure[data-state=done]{--ink:var(--done)}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-top:8px}
.controls select{max-width:24em}nav.pages a{padding:0 4px}
nav.pages a[aria-current]{font-weight:bold;text-decoration:none}
footer{padding:12px 16px}
section.grid{content-visibility:auto;contain-intrinsic-size:auto 800px}
.scroll{overflow:auto;padding:0 16px 16px}
table{border-collapse:separate;border-spacing:6px}
caption{text-align:left;color:var(--mute);font-size:12px}
th{font-weight:600;text-align:center;vertical-align:bottom}
thead th{position:sticky;top:0;background:var(--bg);z-index:1}
th.xval{max-width:260px;overflow-wrap:anywhere}
th.yval{position:sticky;left:0;background:var(--bg);max-width:180px;text-align:right;
vertical-align:top;padding-top:8px;overflow-wrap:anywhere;font-size:13px;z-index:1}
th.corner{font-size:12px;color:var(--mute);font-weight:normal}
td.cell{vertical-align:top;background:var(--card);border:1px solid var(--line);
border-radius:6px;padding:6px;min-width:140px}
td.empty{color:var(--mute);text-align:center;vertical-align:middle}
figure.task{margin:0;width:260px}
.variants{display:grid;grid-template-columns:repeat(var(--per-row),124px);gap:6px}
.stack figure.task{width:124px}.stack .meta,.stack .err{font-size:11px}
.stack figure .prompt{-webkit-line-clamp:2;font-size:11px}
.shared{margin-top:4px;border-top:1px solid var(--line)}
.stack .ph{height:80px;font-size:11px}
figure.task img{display:block;max-width:100%;height:auto;margin:auto;background:var(--line)}
a.img{display:block;text-align:center}
.ph{display:flex;align-items:center;justify-content:center;height:120px;border-radius:4px;
border:2px dashed currentColor;font-weight:600;text-transform:uppercase;letter-spacing:.05em;
color:var(--ink,var(--other))}.meta .state{color:var(--ink,var(--other));font-weight:600}
figcaption{font-size:12px}.prompt{margin:4px 0 2px;display:-webkit-box;-webkit-line-clamp:3;
-webkit-box-orient:vertical;overflow:hidden}.meta{margin:0;color:var(--mute)}
.err{margin:2px 0 0;color:var(--ink,var(--other));overflow-wrap:anywhere}
.sheet{font-size:12px;font-weight:normal}
body.nocaptions figcaption{display:none}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.88);z-index:9;display:flex;
flex-direction:column;align-items:center;justify-content:center;padding:16px;color:#eee}
#lightbox img{max-width:100%;max-height:calc(100vh - 120px);object-fit:contain}
#lightbox p{max-width:900px;font-size:13px}
#lightbox button{position:absolute;top:8px;right:12px;font-size:24px;background:none;
color:#eee;border:0;cursor:pointer}
"""

_LIGHTBOX: Final = (
    '<div id="lightbox" hidden role="dialog" aria-label="full-size image">'
    '<button type="button" id="lb-close" aria-label="close">&times;</button>'
    '<img id="lb-img" alt=""><p id="lb-cap"></p>'
    '<p><a id="lb-open" href="#">open the file</a></p></div>\n'
)

# Plain ES5-level JavaScript: filters show and hide grids and tasks (kept in the URL
# hash so a filtered view can be shared), the lightbox shows the full image. It only
# reads data- attributes and textContent, never writes HTML.
_JS: Final = """
(function(){"use strict";
var filters=[].slice.call(document.querySelectorAll("select[data-filter]"));
var stateSel=document.getElementById("state-filter");
var captions=document.getElementById("captions");
var shown=document.getElementById("shown");
var sections=[].slice.call(document.querySelectorAll("section.grid"));
function apply(){
  var n=0,hash=[];
  filters.forEach(function(s){if(s.value!==""){hash.push("f"+s.dataset.filter+"="+s.value);}});
  var st=stateSel.value;if(st!==""){hash.push("state="+encodeURIComponent(st));}
  sections.forEach(function(sec){
    var ok=filters.every(function(s){
      return s.value===""||sec.getAttribute("data-f"+s.dataset.filter)===s.value;});
    sec.hidden=!ok;
    [].forEach.call(sec.querySelectorAll("figure.task"),function(f){
      f.hidden=st!==""&&f.dataset.state!==st;if(ok&&!f.hidden){n++;}});
  });
  shown.textContent=n+(n===1?" task":" tasks")+" shown";
  var h=hash.join("&");
  if(("#"+h)!==location.hash&&!(h===""&&location.hash==="")){
    history.replaceState(null,"",h?"#"+h:location.pathname+location.search);}
}
function restore(){
  location.hash.replace(/^#/,"").split("&").forEach(function(kv){
    var p=kv.split("="),k=p[0],v=decodeURIComponent(p[1]||"");
    if(k==="state"){stateSel.value=v;}
    filters.forEach(function(s){if("f"+s.dataset.filter===k){s.value=v;}});
  });
}
filters.concat([stateSel]).forEach(function(s){s.addEventListener("change",apply);});
captions.addEventListener("change",function(){
  document.body.classList.toggle("nocaptions",!captions.checked);});
var lb=document.getElementById("lightbox"),lbImg=document.getElementById("lb-img");
var lbCap=document.getElementById("lb-cap"),lbOpen=document.getElementById("lb-open");
var current=null;
function visibleLinks(){return [].filter.call(document.querySelectorAll("a.img"),
  function(a){return a.offsetParent!==null;});}
function open(a){
  current=a;lbImg.src=a.getAttribute("href");lbOpen.setAttribute("href",a.getAttribute("href"));
  var cap=a.closest("figure").querySelector("figcaption");
  var shared=a.closest("td")&&a.closest("td").querySelector(".shared");
  lbCap.textContent=(shared?shared.textContent+" \u2014 ":"")+(cap?cap.textContent:"");
  lb.hidden=false;
}
function close(){lb.hidden=true;lbImg.removeAttribute("src");current=null;}
document.addEventListener("click",function(e){
  var a=e.target.closest&&e.target.closest("a.img");
  if(a&&!e.ctrlKey&&!e.metaKey&&!e.shiftKey&&e.button===0){e.preventDefault();open(a);return;}
  if(!lb.hidden&&(e.target===lb||e.target.id==="lb-close")){close();}
});
document.addEventListener("keydown",function(e){
  if(lb.hidden){return;}
  if(e.key==="Escape"){close();return;}
  if(e.key==="ArrowRight"||e.key==="ArrowLeft"){
    var links=visibleLinks(),i=links.indexOf(current);
    if(i<0){return;}
    var next=links[i+(e.key==="ArrowRight"?1:-1)];if(next){open(next);}
  }
});
restore();apply();
})();
"""
