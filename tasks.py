#!/usr/bin/env python3
"""Developer tasks that need nothing but Python 3.11+: each creates .venv on first use.

    python3 tasks.py demo          check, then run, jobs/quickstart.yaml on the built-in simulator
    python3 tasks.py test          every CI check: ruff, ruff format, mypy --strict, pytest
                                   (the browser tests too, when Chromium can be had)
    python3 tasks.py reliability   the crash/resume loop and fault matrix (minutes)
    python3 tasks.py browser       the gallery tests in headless Chromium
    python3 tasks.py bench         every benchmark scenario, printed as a table
    python3 tasks.py sim           the simulator on http://127.0.0.1:8787/v1

Extra arguments go to the underlying tool, e.g. ``python3 tasks.py test -k ledger``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
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


def task_test(extra: list[str]) -> int:
    for step in (
        (tool("ruff"), "check", "."),
        (tool("ruff"), "format", "--check", "."),
        (tool("mypy"),),
    ):
        if code := run(*step):
            return code
    why_not = ensure_browser()
    if why_not is None:
        # The default markers leave the browser tests out; here they run with the rest.
        return run(tool("pytest"), "-q", "-m", "not slow and not reliability", *extra)
    print(f"browser tests skipped: {why_not}", flush=True)
    return run(tool("pytest"), "-q", *extra)


def task_reliability(extra: list[str]) -> int:
    return run(tool("pytest"), "-q", "-s", "-m", "reliability", *extra)


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


TASKS = {
    "demo": task_demo,
    "test": task_test,
    "reliability": task_reliability,
    "browser": task_browser,
    "bench": task_bench,
    "sim": task_sim,
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
