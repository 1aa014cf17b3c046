"""Tables of results: plain text for the terminal, Markdown for ``benchmarks/README.md``.

Each scenario returns a :class:`ScenarioResult` (tables, notes, raw data). The
Markdown file keeps one section per scenario between ``<!-- scenario:NAME -->``
markers, so running a subset (``--only``) replaces only those sections and keeps the
others, each section saying when it was measured and at what load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ScenarioResult", "Table", "fmt", "goal", "update_markdown"]


def fmt(value: object, digits: int = 2) -> str:
    """A cell: numbers rounded, ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def goal(ok: bool | None) -> str:
    """The goal column: met, MISSED, or a dash when the row has no goal."""
    if ok is None:
        return "-"
    return "met" if ok else "MISSED"


@dataclass
class Table:
    """A titled table of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row (cells formatted with :func:`fmt` unless already strings)."""
        self.rows.append([c if isinstance(c, str) else fmt(c) for c in cells])

    def text(self) -> str:
        """Aligned plain text."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        out = [self.title, line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        return "\n".join(out)

    def markdown(self) -> str:
        """A Markdown table with a bold title line."""
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(out)


@dataclass
class ScenarioResult:
    """What one scenario measured."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    goals: dict[str, bool] = field(default_factory=dict)
    load_start: list[float] = field(default_factory=list)
    load_end: list[float] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    quick: bool = False

    def text(self) -> str:
        """The scenario for the terminal."""
        head = (
            f"== {self.title} ({self.seconds:,.0f} s; load {_load(self.load_start)} at start,"
            f" {_load(self.load_end)} at end{'; QUICK' if self.quick else ''})"
        )
        parts = [head, *(t.text() for t in self.tables)]
        parts += [f"  * {n}" for n in self.notes]
        return "\n\n".join(parts)

    def markdown(self) -> str:
        """The scenario as a Markdown section, between its markers."""
        quick = " Quick mode (fewer tasks): development figures only." if self.quick else ""
        lines = [
            f"<!-- scenario:{self.name} -->",
            f"### {self.title}",
            "",
            f"Measured {self.started}, {self.seconds:,.0f} s; load average (1/5/15 min)"
            f" {_load(self.load_start)} at start, {_load(self.load_end)} at end.{quick}",
            "",
        ]
        for table in self.tables:
            lines += [table.markdown(), ""]
        lines += [f"- {n}" for n in self.notes]
        lines.append(f"<!-- /scenario:{self.name} -->")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "name": self.name,
            "title": self.title,
            "started": self.started,
            "seconds": round(self.seconds, 2),
            "quick": self.quick,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "goals": self.goals,
            "tables": [
                {"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables
            ],
            "notes": self.notes,
            "raw": self.raw,
        }


def _load(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


_HEADER = """# batchgen benchmarks

Written by `python -m benchmarks` (see `benchmarks/__main__.py` for every option). Each
section below is replaced when its scenario runs again; the machine block is the one
of the latest run. Raw results of every run are in `benchmarks/results/` (not in git).
"""


def _machine_block(machine: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            "<!-- machine -->",
            "## Machine",
            "",
            "```",
            f"uname -a : {machine.get('uname')}",
            f"nproc    : {machine.get('nproc')}",
            f"cpu      : {machine.get('cpu')}",
            f"memory   : {machine.get('memory')}",
            f"python   : {machine.get('python')}",
            f"httpx    : {machine.get('httpx')}; httpx2 {machine.get('httpx2')}",
            f"commit   : {machine.get('commit')}",
            f"load     : {_load(machine.get('load') or [])} (1/5/15 min, at the start)",
            f"date     : {machine.get('date')}",
            "```",
            "<!-- /machine -->",
        ]
    )


_NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)
_SECTION = re.compile(r"<!-- scenario:(?P<name>[\w-]+) -->.*?<!-- /scenario:(?P=name) -->", re.S)
_MACHINE = re.compile(r"<!-- machine -->.*?<!-- /machine -->", re.S)


def update_markdown(
    path: Path,
    machine: Mapping[str, Any],
    results: Sequence[ScenarioResult],
    order: Sequence[str],
    summary: str,
) -> None:
    """Write ``path``: header, machine, goal summary, then each scenario's section.

    Sections of scenarios that did not run this time are kept from the old file, and
    so is the hand-written analysis between ``<!-- notes -->`` and ``<!-- /notes -->``.
    """
    old = path.read_text() if path.exists() else ""
    notes = _NOTES.search(old)
    sections = {m.group("name"): m.group(0) for m in _SECTION.finditer(old)}
    for result in results:
        sections[result.name] = result.markdown()
    body = [_HEADER, _machine_block(machine), "", "## Goals", "", summary, ""]
    if notes is not None:
        body += [notes.group(0), ""]
    body += ["## Results", ""]
    for name in order:
        if name in sections:
            body += [sections[name], ""]
    for name, text in sections.items():
        if name not in order:
            body += [text, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body).rstrip() + "\n")
