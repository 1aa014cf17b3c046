"""What every scenario shares: the simulator process, job specs, workers, the machine.

The simulator always runs as its own process (``python -m batchgen.sim.cli``), so its
CPU is never counted as the client's. batchgen itself runs in a worker subprocess
(:mod:`benchmarks.worker`) that measures its own CPU time and peak RSS around the run
and prints one JSON object; the peers are standalone scripts run the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Sim",
    "WorkerError",
    "load_now",
    "machine_info",
    "plan_json",
    "run_json",
    "run_worker",
    "scratch_dir",
    "start_sim",
    "write_job",
]

ROOT = Path(__file__).resolve().parent.parent
#: Prices are per image; keep every key's balance far above any benchmark's spend.
_CREDITS = "1000000000"


class WorkerError(RuntimeError):
    """A worker or peer subprocess failed or printed no result."""


@dataclass
class Sim:
    """A running ``batchgen sim`` process and the keys it accepts."""

    process: subprocess.Popen[str]
    base_url: str
    keys: list[str]
    flags: list[str]
    _next_key: int = 0

    @property
    def origin(self) -> str:
        """``http://host:port`` (the base URL without ``/v1``)."""
        return self.base_url.removesuffix("/v1")

    def key(self) -> str:
        """A key nobody has used yet on this simulator (a fresh, full token bucket)."""
        key = self.keys[self._next_key]
        self._next_key += 1
        return key

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.origin + path, timeout=60) as response:  # noqa: S310
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        data: dict[str, Any] = self._get("/_sim/stats")
        return data

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /_sim/tasks``: every task with its account and creation time."""
        data: list[dict[str, Any]] = self._get("/_sim/tasks")
        return data

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the simulator process has used so far."""
        return process_cpu(self.process.pid)

    def stop(self) -> None:
        """Stop the simulator (SIGINT, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from ``/proc/<pid>/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_sim(flags: Sequence[str], *, keys: int = 8) -> Sim:
    """Start ``batchgen sim --port 0 FLAGS`` with ``keys`` fresh keys; wait for its URL."""
    key_list = [f"sk-bench-{i:02d}-{secrets.token_hex(8)}" for i in range(keys)]
    command = [sys.executable, "-m", "batchgen.sim.cli", "--port", "0", "--credits", _CREDITS]
    command += list(flags)
    for key in key_list:
        command += ["--key", key]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http"):
        process.kill()
        raise WorkerError(f"the simulator did not start ({' '.join(flags)}): {line!r}")
    # The second line names the config; the pipe is then left alone (nothing more comes).
    process.stdout.readline()
    return Sim(process, line, key_list, list(flags))


@contextlib.contextmanager
def running_sim(flags: Sequence[str], *, keys: int = 8) -> Iterator[Sim]:
    """:func:`start_sim` as a context manager."""
    sim = start_sim(flags, keys=keys)
    try:
        yield sim
    finally:
        sim.stop()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for job specs and outputs, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"batchgen-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _axes(tasks: int) -> dict[str, list[int]]:
    """Axes whose cross product has exactly ``tasks`` combinations (at most 1,000 a side)."""
    if tasks <= 1000:
        return {"n": list(range(tasks))}
    if tasks % 1000:
        raise ValueError(f"jobs above 1,000 tasks must be a multiple of 1,000, not {tasks}")
    return {"a": list(range(tasks // 1000)), "b": list(range(1000))}


def write_job(
    folder: Path,
    *,
    name: str,
    tasks: int,
    concurrency: int,
    rpm: float | None = None,
    burst: int | None = None,
    axes: Mapping[str, Sequence[object]] | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Write a job spec of ``tasks`` distinct prompts (one model, 1:1, 1K); its path.

    Every task has its own prompt (an axis of numbers), as a real grid would. ``axes``
    replaces the default axes (the planning scenario uses three); ``extra`` lines are
    appended as they are (top-level keys such as ``api: {reply: stream}``).
    """
    chosen = dict(axes) if axes is not None else _axes(tasks)
    placeholders = " ".join(f"{{{name}}}" for name in chosen)
    lines = [
        "version: 1",
        f"name: {name}",
        "output: out",
        "model: nano-banana-fast",
        'aspect_ratio: "1:1"',
        "image_size: 1K",
        f'prompt: "benchmark image {placeholders}"',
        "matrix:",
    ]
    lines += [f"  {axis}: {json.dumps(list(values))}" for axis, values in chosen.items()]
    lines += ["limits:", f"  concurrency: {concurrency}", f"  max_tasks: {max(tasks, 10)}"]
    if rpm is not None:
        lines.append(f"  requests_per_minute: {rpm:g}")
    if burst is not None:
        lines.append(f"  burst: {burst}")
    lines += list(extra)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def plan_json(spec: Path, dest: Path) -> Path:
    """``batchgen plan --json SPEC > dest``: the job as the peers read it."""
    with dest.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "batchgen", "plan", "--json", str(spec)],
            stdout=out,
            check=True,
            cwd=ROOT,
        )
    return dest


def run_json(command: Sequence[str], *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a subprocess that prints a JSON object on its last stdout line; that object.

    ``cpu_children`` is added: the user + system CPU of the subprocess as the OS
    counted it (``RUSAGE_CHILDREN``), interpreter start-up and imports included.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        list(command), capture_output=True, text=True, cwd=ROOT, env=full_env, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise WorkerError(
            f"{' '.join(command[:4])}... exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise WorkerError(f"no JSON result: {lines[-1][:500]!r}\n{done.stderr[-2000:]}") from exc
    data["cpu_children"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 4
    )
    return data


#: Where ``httpx+sniffio`` finds sniffio (``pip install --target DIR sniffio``), if not
#: in the environment already. Set by ``--sniffio-path``.
SNIFFIO_PATH: list[str] = []


def run_worker(mode: str, options: Mapping[str, Any], *, http: str = "httpx2") -> dict[str, Any]:
    """Run ``python -m benchmarks.worker MODE OPTIONS`` with ``http`` as the HTTP stack."""
    command = [sys.executable, "-m", "benchmarks.worker", mode, json.dumps(dict(options))]
    env = {"BATCHGEN_BENCH_HTTP": http}
    if http == "httpx+sniffio" and SNIFFIO_PATH:
        env["PYTHONPATH"] = os.pathsep.join([*SNIFFIO_PATH, os.environ.get("PYTHONPATH", "")])
    return run_json(command, env=env)


def load_now() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """``uname -a``, cores, CPU model, memory, Python and library versions, load, date."""
    uname = " ".join(platform.uname())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        uname = subprocess.run(
            ["/bin/uname", "-a"], capture_output=True, text=True, check=True
        ).stdout.strip()
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    git = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    return {
        "uname": uname,
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": mem,
        "python": sys.version.split()[0],
        "httpx": _version("httpx"),
        "httpx2": _version("httpx2"),
        "commit": git,
        "load": load_now(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
