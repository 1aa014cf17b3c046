"""Shared machinery of the reliability suite: processes, specs, ledger checks, figures.

Everything here drives batchgen the way a user does: ``batchgen sim`` and ``batchgen
run`` as real subprocesses (own process group each, so a fixture can always kill them),
the ledger read with plain ``sqlite3`` after the run, and the simulator's own records
(``/_sim/stats``, ``/_sim/tasks``) as the ground truth for charges and served bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import yaml

#: The API key of the whole suite. It deliberately does not look like ``sk-...``: the
#: pattern-based redaction would mask such a key anywhere, so only batchgen's real
#: secret handling (register_secret, headers only) keeps this one out of every text.
CANARY = "cnry-R3liab1l1ty-7f3a9c2e5b41d806"

PY = sys.executable

#: Every ``RELIABILITY ...`` line printed in this session (re-printed at the end).
FIGURES: list[str] = []


def figure(name: str, text: str) -> str:
    """Print one copyable figure line and remember it for the end-of-run summary."""
    line = f"RELIABILITY {name}: {text}"
    FIGURES.append(line)
    print("\n" + line, flush=True)
    return line


def median_max(values: Sequence[float]) -> str:
    """``median X s, max Y s`` of ``values`` (``n/a`` when empty)."""
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


# --- the canary --------------------------------------------------------------------------


@dataclass
class CanaryScanner:
    """Searches files and texts for the canary key; counts what it searched."""

    needle: bytes = CANARY.encode()
    files: int = 0
    nbytes: int = 0
    texts: int = 0
    hits: list[str] = field(default_factory=list)
    seen: set[tuple[str, int, float]] = field(default_factory=set)

    def scan_bytes(self, label: str, data: bytes) -> None:
        """Search one blob (also its UTF-16 form, as SQLite or Windows tools might store)."""
        self.nbytes += len(data)
        if self.needle in data or CANARY.encode("utf-16-le") in data:
            self.hits.append(label)

    def scan_text(self, label: str, text: str) -> None:
        """Search an exception text, a log line, a message."""
        self.texts += 1
        self.scan_bytes(label, text.encode("utf-8", "surrogatepass"))

    def scan_dir(self, root: Path) -> None:
        """Search every regular file under ``root`` (each file once per version)."""
        if not root.exists():
            return
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink():
                        continue
                    ident = (str(path), st.st_size, st.st_mtime)
                    if ident in self.seen:
                        continue
                    self.seen.add(ident)
                    data = path.read_bytes()
                except OSError:
                    continue
                self.files += 1
                self.scan_bytes(str(path), data)


CANARY_SCAN = CanaryScanner()


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every subprocess a test starts; :meth:`cleanup` kills their process groups."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        stdout: Any,
        stderr: Any,
        env: Mapping[str, str] | None = None,
        preexec: Any = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in a new session (its own process group)."""
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=preexec,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        """SIGKILL every process group still alive and reap it."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def run_env(key: str | None = CANARY) -> dict[str, str]:
    """The environment of a ``batchgen`` subprocess: our key, no inherited base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COBABA_")}
    if key is not None:
        env["COBABA_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Sim:
    """A ``batchgen sim`` subprocess."""

    proc: subprocess.Popen[bytes]
    base_url: str
    origin: str
    summary: str

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        data: dict[str, Any] = httpx.get(self.origin + "/_sim/stats", timeout=30).json()
        return data

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /_sim/tasks``: every task with ``charged`` and ``served_sha256``."""
        data: list[dict[str, Any]] = httpx.get(self.origin + "/_sim/tasks", timeout=60).json()
        return data

    def configure(self, **changes: object) -> dict[str, Any]:
        """``POST /_sim/config`` (faults change at once)."""
        answer = httpx.post(self.origin + "/_sim/config", json=changes, timeout=30)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data


def start_sim(procs: Processes, logdir: Path, *args: str, key: str = CANARY) -> Sim:
    """Start ``batchgen sim --port 0 --key KEY ARGS``; wait for its base URL line."""
    logdir.mkdir(parents=True, exist_ok=True)
    n = len(list(logdir.glob("sim-*.out")))
    out_path = logdir / f"sim-{n}.out"
    err_path = logdir / f"sim-{n}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = procs.spawn(
            [PY, "-m", "batchgen", "sim", "--port", "0", "--key", key, *args],
            cwd=logdir,
            stdout=out,
            stderr=err,
            env=run_env(None),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = out_path.read_text(encoding="utf-8", errors="replace").splitlines()
        if len(lines) >= 2:
            base_url = lines[0].strip()
            return Sim(proc, base_url, base_url.removesuffix("/v1"), lines[1].strip())
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(
        f"simulator did not start: {err_path.read_text(encoding='utf-8', errors='replace')}"
    )


@dataclass
class CliResult:
    """A finished ``batchgen`` command."""

    rc: int
    stdout: str
    stderr: str
    elapsed: float
    start: float | None = None

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + "\n" + self.stderr


class RunProcess:
    """A running ``batchgen`` subprocess whose stdout lines are timestamped as they come."""

    def __init__(
        self,
        procs: Processes,
        args: Sequence[str],
        *,
        cwd: Path,
        logdir: Path,
        key: str | None = CANARY,
        preexec: Any = None,
    ) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        n = len(list(logdir.glob("run-*.err")))
        self.out_path = logdir / f"run-{n}.out"
        self.err_path = logdir / f"run-{n}.err"
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        with self.err_path.open("wb") as err:
            self.proc = procs.spawn(
                [PY, "-m", "batchgen", *args],
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=err,
                env=run_env(key),
                preexec=preexec,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.out_path.open("wb") as copy:
            for raw in self.proc.stdout:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
                copy.write(raw)
                copy.flush()

    def json_events(self) -> list[tuple[float, dict[str, Any]]]:
        """The ``--json`` events seen so far, with the time each arrived."""
        events: list[tuple[float, dict[str, Any]]] = []
        for at, line in list(self.lines):
            if line.startswith("{"):
                try:
                    events.append((at, json.loads(line)))
                except ValueError:
                    continue
        return events

    def start_time(self) -> float | None:
        """Seconds from spawn to the ``start`` event (the run is about to submit)."""
        for at, event in self.json_events():
            if event.get("event") == "start":
                return at - self.started
        return None

    def messages(self) -> list[str]:
        """The texts of ``message`` events."""
        return [str(e.get("text")) for _, e in self.json_events() if e.get("event") == "message"]

    def wait(self, timeout: float) -> int:
        """Wait for the exit code (raises subprocess.TimeoutExpired)."""
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the run (if still alive)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stderr(self) -> str:
        """What the run wrote on stderr so far."""
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        """What the run wrote on stdout so far."""
        return "\n".join(line for _, line in self.lines)


def run_cli(
    procs: Processes,
    args: Sequence[str],
    *,
    cwd: Path,
    logdir: Path,
    timeout: float = 300,
    key: str | None = CANARY,
    preexec: Any = None,
) -> CliResult:
    """Run ``batchgen ARGS`` to the end (SIGKILL and AssertionError after ``timeout``)."""
    run = RunProcess(procs, args, cwd=cwd, logdir=logdir, key=key, preexec=preexec)
    try:
        rc = run.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.wait(30)
        raise AssertionError(
            f"`batchgen {' '.join(args)}` still running after {timeout:.0f}s;"
            f" stderr: {run.stderr()[-2000:]}"
        ) from None
    return CliResult(
        rc, run.stdout(), run.stderr(), time.monotonic() - run.started, run.start_time()
    )


# --- specs ------------------------------------------------------------------------------------


def write_spec(
    folder: Path,
    *,
    name: str,
    tasks: int,
    concurrency: int = 8,
    limits: Mapping[str, object] | None = None,
    model: str = "nano-banana-fast",
    prompt: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A job of ``tasks`` distinct prompts (one axis ``s``), output in ``folder/out``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, object] = {
        "version": 1,
        "name": name,
        "output": "out",
        "model": model,
        "aspect_ratio": "1:1",
        "prompt": prompt or f"reliability {name} subject {{s}}",
        "matrix": {"s": [f"s{i:05d}" for i in range(tasks)]},
        "limits": {"concurrency": concurrency, **(limits or {})},
    }
    spec.update(extra or {})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# --- the ledger and the output tree --------------------------------------------------------


@dataclass(frozen=True)
class LedgerRow:
    """The columns of a ledger task the checks need."""

    key: str
    state: str
    remote_id: str | None
    prompt: str
    attempts: int
    regenerations: int
    error_code: str | None
    error_message: str | None
    charged: float
    files: tuple[dict[str, Any], ...]
    next_at: float | None


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def ledger_rows(db: Path) -> list[LedgerRow]:
    """Every task row of the ledger."""
    with _connect(db) as conn:
        cur = conn.execute(
            "SELECT key, state, remote_id, prompt, attempts, regenerations, error_code,"
            " error_message, charged, files, next_at FROM tasks ORDER BY seq"
        )
        rows = [
            LedgerRow(
                key=r[0],
                state=r[1],
                remote_id=r[2],
                prompt=r[3],
                attempts=r[4],
                regenerations=r[5],
                error_code=r[6],
                error_message=r[7],
                charged=r[8],
                files=tuple(json.loads(r[9])) if r[9] else (),
                next_at=r[10],
            )
            for r in cur.fetchall()
        ]
    conn.close()
    return rows


def ledger_counts(db: Path) -> Counter[str]:
    """Tasks per state."""
    return Counter(row.state for row in ledger_rows(db))


def keys_ever_in(db: Path, state: str) -> set[str]:
    """Keys with at least one event in ``state`` (the audit trail)."""
    with _connect(db) as conn:
        keys = {
            str(r[0])
            for r in conn.execute("SELECT DISTINCT key FROM events WHERE state = ?", (state,))
        }
    conn.close()
    return keys


def integrity_check(db: Path) -> str:
    """``PRAGMA integrity_check`` of the ledger file."""
    with _connect(db) as conn:
        row = conn.execute("PRAGMA integrity_check").fetchone()
    conn.close()
    return str(row[0]) if row else "no answer"


def charges_by_key(
    rows: Iterable[LedgerRow], sim_tasks: Iterable[Mapping[str, Any]]
) -> Counter[str]:
    """How many times the simulator charged each ledger task (matched by prompt)."""
    by_prompt = {row.prompt: row.key for row in rows}
    counts: Counter[str] = Counter()
    for task in sim_tasks:
        if float(task.get("charged", 0)) > 0:
            key = by_prompt.get(str(task["prompt"]))
            counts[key if key is not None else f"?{task['prompt']}"] += 1
    return counts


TEMP_MARKERS = (".part", ".tmp")


def leftover_files(out: Path) -> list[Path]:
    """Temporary or partial files under ``out`` (hidden files, ``*.part``, ``*.tmp``)."""
    found: list[Path] = []
    for dirpath, _dirs, names in os.walk(out):
        for name in names:
            if name.endswith(TEMP_MARKERS) or name.startswith("."):
                found.append(Path(dirpath, name))
    return found


@dataclass
class OutputCheck:
    """What :func:`check_outputs` found."""

    images: int = 0
    verified: int = 0
    problems: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_outputs(
    out: Path, rows: Iterable[LedgerRow], sim_tasks: Iterable[Mapping[str, Any]]
) -> OutputCheck:
    """Every done task's files exist and hash to what the simulator served for its remote id."""
    served = {str(t["id"]): set(t.get("served_sha256") or ()) for t in sim_tasks}
    check = OutputCheck()
    root = out.resolve()
    for row in rows:
        if row.state != "done":
            continue
        if not row.files:
            check.problems.append(f"{row.key}: done without files")
        for entry in row.files:
            check.images += 1
            path = (root / str(entry.get("path"))).resolve()
            if root not in path.parents:
                check.problems.append(f"{row.key}: {path} outside {root}")
                continue
            if not path.is_file():
                check.problems.append(f"{row.key}: missing {path}")
                continue
            digest = sha256_file(path)
            if digest != entry.get("sha256"):
                check.problems.append(f"{row.key}: sha256 differs from the ledger")
            elif digest not in served.get(str(row.remote_id), set()):
                check.problems.append(f"{row.key}: bytes not served for remote {row.remote_id}")
            else:
                check.verified += 1
    return check


def png_files(out: Path) -> list[Path]:
    """Every ``.png`` under ``out``."""
    return sorted(p for p in out.rglob("*.png") if p.is_file())
