#!/usr/bin/env python3
"""Developer tasks that need nothing but Python 3.11+: each creates .venv on first use.

    python3 tasks.py demo          check, then run, jobs/quickstart.yaml on the built-in simulator
    python3 tasks.py test          every CI check: ruff, ruff format, mypy --strict, pytest
                                   (the browser tests too, when Chromium can be had)
    python3 tasks.py reliability   the crash/resume loop and fault matrix (minutes)
    python3 tasks.py slow          the long tests kept out of CI (big matrices, long runs)
    python3 tasks.py browser       the gallery tests in headless Chromium
    python3 tasks.py bench         every benchmark scenario, printed as a table
    python3 tasks.py sim           the simulator on http://127.0.0.1:8787/v1
    python3 tasks.py catalogs      add new messages to the .po catalogs, compile the .mo

Extra arguments go to the underlying tool, e.g. ``python3 tasks.py test -k ledger``.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create .venv and install batchgen with its dev tools, pinned by constraints.txt."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before any check
        sys.exit(f"batchgen needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = _inputs_digest()
    if STAMP.exists() and STAMP.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("installing batchgen and its dev tools into .venv ...", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    # The build backend notes that editable installs can be shadowed by folders: noise.
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # dataset: `datasets`, so that the test loading an output folder with it runs.
    subprocess.run(
        [*pip, "-c", "constraints.txt", "-e", ".[dev,dataset]"], check=True, cwd=ROOT, env=quiet
    )
    STAMP.write_text(wanted)


def run(*argv: str) -> int:
    """Run a command from .venv in the project folder; return its exit code."""
    print("$", " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def tool(name: str) -> str:
    return str(BIN / name)


def task_demo(extra: list[str]) -> int:
    # Before paying, ask: the key, its models, live prices, the balance (here the
    # simulator's, like the real service); then run.
    code = run(
        tool("batchgen"), "check", "jobs/quickstart.yaml", "--sim", "--sim-profile", "gateway"
    )
    if code:
        return code
    return run(tool("batchgen"), "run", "jobs/quickstart.yaml", "--sim", *extra)


def find_chromium() -> str | None:
    """The Chromium the browser tests drive: $BATCHGEN_CHROMIUM, else one on PATH."""
    named = os.environ.get("BATCHGEN_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def apt_install(*packages: str) -> bool:
    """Install Debian packages when this is root with apt (CI); False when it cannot."""
    apt = "/usr/bin/apt-get"
    if not Path(apt).exists() or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    print(f"installing {', '.join(packages)} with apt ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> bool:
        done = subprocess.run([apt, *args], capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            print(done.stderr.strip()[-2000:], file=sys.stderr)
        return done.returncode == 0

    install = ("install", "-y", "-q", "--no-install-recommends", *packages)
    if apt_get(*install):
        return True
    apt_get("update", "-q")  # a fresh machine has no package lists yet
    return apt_get(*install)


def ensure_browser() -> str | None:
    """Make the gallery's browser tests runnable; return why not when they cannot be."""
    chromium = find_chromium()
    if chromium is None and apt_install("chromium"):
        chromium = find_chromium()
    if chromium is None:
        return (
            "no Chromium found; install one (Debian: `apt-get install chromium`) or point"
            " BATCHGEN_CHROMIUM at one to run them"
        )
    probe = [str(PY), "-c", "import playwright.sync_api"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        # Playwright drives that Chromium; it never downloads a browser of its own here.
        print("installing playwright (the browser extra) into .venv ...", flush=True)
        pip = [str(PY), "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        subprocess.run([*pip, ".[browser]"], check=False, cwd=ROOT, env=env)
        if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            return "playwright could not be installed (`pip install -e '.[browser]'`)"
    os.environ["BATCHGEN_CHROMIUM"] = chromium
    return None


#: Debian's smallest complete CJK font (1.6 MB, against 57 MB for fonts-noto-cjk).
CJK_FONT_PACKAGE = "fonts-wqy-microhei"


def ensure_cjk_font() -> str | None:
    """Make the CJK glyph tests runnable: install a CJK font when this is root with apt
    (CI) and none is found; return why not when there is none."""
    probe = [str(PY), "-c", "from batchgen.fonts import system_fonts; print(system_fonts().cjk)"]

    def found() -> bool:
        done = subprocess.run(probe, capture_output=True, text=True, check=False, cwd=ROOT)
        return done.returncode == 0 and done.stdout.strip() not in ("", "None")

    if found() or (apt_install(CJK_FONT_PACKAGE) and found()):
        return None
    return f"no CJK font found; install one (Debian: `apt-get install {CJK_FONT_PACKAGE}`)"


def task_test(extra: list[str]) -> int:
    for step in (
        (tool("ruff"), "check", "."),
        (tool("ruff"), "format", "--check", "."),
        (tool("mypy"),),
    ):
        if code := run(*step):
            return code
    no_font = ensure_cjk_font()
    if no_font is not None:
        print(f"CJK glyph tests skipped: {no_font}", flush=True)
    why_not = ensure_browser()
    if why_not is None:
        # The default markers leave the browser tests out; here they run with the rest.
        return run(tool("pytest"), "-q", "-m", "not slow and not reliability", *extra)
    print(f"browser tests skipped: {why_not}", flush=True)
    return run(tool("pytest"), "-q", *extra)


def task_reliability(extra: list[str]) -> int:
    return run(tool("pytest"), "-q", "-s", "-m", "reliability", *extra)


def task_slow(extra: list[str]) -> int:
    return run(tool("pytest"), "-q", "-m", "slow", *extra)


def task_browser(extra: list[str]) -> int:
    why_not = ensure_browser()
    if why_not is not None:
        print(f"browser tests cannot run: {why_not}", file=sys.stderr)
        return 1
    return run(tool("pytest"), "-q", "-m", "browser", *extra)


def task_bench(extra: list[str]) -> int:
    return run(str(PY), "-m", "benchmarks", *extra)


def task_sim(extra: list[str]) -> int:
    return run(tool("batchgen"), "sim", "--port", "8787", *extra)


# --- message catalogs (stdlib only: no gettext tools needed) ---------------------------------

LOCALE = ROOT / "batchgen" / "locale"
#: A message id: the text, or (singular, plural) for a message with plural forms.
MessageId = str | tuple[str, str]
_MARKERS = {"_": 1, "N_": 1, "ngettext": 2}


def extract_messages(package: Path = ROOT / "batchgen") -> dict[MessageId, str]:
    """Every message marked with _(), N_() or ngettext() in the package, with where it is
    first written (``path:line``); the catalogs must hold exactly these."""
    found: dict[MessageId, str] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            wanted = _MARKERS.get(node.func.id)
            args = node.args[: wanted or 0]
            if not wanted or len(args) < wanted:
                continue
            if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                continue
            texts = [str(a.value) for a in args if isinstance(a, ast.Constant)]
            key: MessageId = texts[0] if wanted == 1 else (texts[0], texts[1])
            found.setdefault(key, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _po_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _po_unquote(text: str) -> str:
    body = text.strip()[1:-1]
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def parse_po(text: str) -> dict[MessageId, list[str]]:
    """The entries of a .po file: message id to its translations (one, or one per plural
    form; empty strings when untranslated). Fuzzy entries count as untranslated."""
    entries: dict[MessageId, list[str]] = {}
    for block in _po_blocks(text):
        fields: dict[str, str] = {}
        current = ""
        fuzzy = False
        for line in block:
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith('"'):
                fields[current] += _po_unquote(line)
                continue
            current, _sep, rest = line.partition(" ")
            fields[current] = _po_unquote(rest)
        if "msgid" not in fields:
            continue
        key: MessageId = fields["msgid"]
        if "msgid_plural" in fields:
            key = (fields["msgid"], fields["msgid_plural"])
            forms = sorted(k for k in fields if k.startswith("msgstr["))
            strings = [fields[k] for k in forms]
        else:
            strings = [fields.get("msgstr", "")]
        entries[key] = ["" for _s in strings] if fuzzy and key != "" else strings
    return entries


def _po_blocks(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if block:
                yield block
            block = []
        else:
            block.append(line)
    if block:
        yield block


def compile_mo(entries: dict[MessageId, list[str]]) -> bytes:
    """The GNU .mo file of ``entries`` (translated ones only, as msgfmt writes them)."""
    pairs: list[tuple[bytes, bytes]] = []
    for key, strings in entries.items():
        if not any(strings):
            continue
        text = key if isinstance(key, str) else f"{key[0]}\0{key[1]}"
        pairs.append((text.encode("utf-8"), "\0".join(strings).encode("utf-8")))
    pairs.sort()
    count = len(pairs)
    originals_at = 7 * 4
    translations_at = originals_at + count * 8
    data_at = translations_at + count * 8
    table_o: list[tuple[int, int]] = []
    table_t: list[tuple[int, int]] = []
    blob = b""
    for source, _target in pairs:
        table_o.append((len(source), data_at + len(blob)))
        blob += source + b"\0"
    for _source, target in pairs:
        table_t.append((len(target), data_at + len(blob)))
        blob += target + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, count, originals_at, translations_at, 0, data_at)
    tables = b"".join(struct.pack("<2I", *entry) for entry in table_o + table_t)
    return head + tables + blob


def task_catalogs(extra: list[str]) -> int:
    """Add the messages marked in the code but missing from each .po (untranslated, at the
    end), report the ones no longer marked, and compile every .po into its .mo."""
    marked = extract_messages()
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/*.po")):
        text = po.read_text(encoding="utf-8")
        entries = parse_po(text)
        added = [key for key in marked if key not in entries]
        for key in added:
            text += f"\n#: {marked[key].rsplit(':', 1)[0]}\n#, python-brace-format\n"
            if isinstance(key, str):
                text += f'msgid {_po_string(key)}\nmsgstr ""\n'
            else:
                text += f"msgid {_po_string(key[0])}\nmsgid_plural {_po_string(key[1])}\n"
                text += 'msgstr[0] ""\n'
        if added:
            po.write_text(text, encoding="utf-8")
            entries = parse_po(text)
        stale = [key for key in entries if key != "" and key not in marked]
        po.with_suffix(".mo").write_bytes(compile_mo(entries))
        untranslated = sum(1 for key, strings in entries.items() if key and not any(strings))
        print(f"{po.relative_to(ROOT)}: {len(added)} added, {untranslated} untranslated")
        for key in stale:
            print(f"  no longer in the code (remove it): {key!r}")
    return 0


TASKS = {
    "demo": task_demo,
    "test": task_test,
    "reliability": task_reliability,
    "slow": task_slow,
    "browser": task_browser,
    "bench": task_bench,
    "sim": task_sim,
    "catalogs": task_catalogs,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TASKS:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    try:
        return TASKS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
