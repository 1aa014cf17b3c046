"""Load test of the simulator: small JSON requests per second from several processes.

``python -m benchmarks.sim_load`` starts ``batchgen sim`` as a subprocess (or uses
``--url``), submits one task and waits for it, then has ``--clients`` processes fire
``POST /v1/draw/result`` for that task and ``GET /_sim/stats``, alternately, over
keep-alive connections for ``--seconds``, and prints requests per second. The target
is at least 1,000 requests/s on a 2-core machine.

Clients use the standard library's ``http.client``: the cheapest client per request,
so the figure measures the server rather than the load generator.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["LoadResult", "main", "run_load"]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    errors: int
    seconds: float
    clients: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"sim_load: {self.requests} requests in {self.seconds:.1f} s from {self.clients} "
            f"clients: {self.rate:,.0f} req/s (errors {self.errors}, "
            f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms)"
        )


def _connection(origin: str) -> http.client.HTTPConnection:
    parts = urlsplit(origin)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)


def _call(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, key: str
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _worker(origin: str, key: str, task_id: str, start_at: float, stop_at: float) -> list[float]:
    """Fire requests until ``stop_at``; the latency of each success, -1.0 per failure."""
    conn = _connection(origin)
    poll = json.dumps({"id": task_id}).encode()
    latencies: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    n = 0
    while True:
        t0 = time.perf_counter()
        if time.time() >= stop_at:
            break
        try:
            if n % 2:
                status, _ = _call(conn, "GET", "/_sim/stats", None, key)
            else:
                status, _ = _call(conn, "POST", "/v1/draw/result", poll, key)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = _connection(origin)
            status = 0
        latencies.append(time.perf_counter() - t0 if status == 200 else -1.0)
        n += 1
    conn.close()
    return latencies


def _finished_task(origin: str, key: str) -> str:
    """Submit one quick task and wait until it has ended; its id."""
    conn = _connection(origin)
    body = json.dumps(
        {"model": "nano-banana-fast", "prompt": "load test [sim:latency=0]", "replyType": "async"}
    ).encode()
    status, raw = _call(conn, "POST", "/v1/api/generate", body, key)
    if status != 200:
        raise RuntimeError(f"submission failed: HTTP {status} {raw[:200]!r}")
    answer = json.loads(raw)
    task_id: str = answer.get("id") or answer["data"]["id"]
    for _ in range(100):
        status, raw = _call(
            conn, "POST", "/v1/draw/result", json.dumps({"id": task_id}).encode(), key
        )
        if status == 200 and json.loads(raw)["data"]["status"] != "running":
            break
        time.sleep(0.05)
    conn.close()
    return task_id


def run_load(
    origin: str, *, clients: int = 4, seconds: float = 5.0, key: str = "sk-sim"
) -> LoadResult:
    """Measure a simulator at ``origin`` (``http://host:port``) with ``clients`` processes."""
    task_id = _finished_task(origin, key)
    start_at = time.time() + 0.5  # every client starts at once, after its process is up
    stop_at = start_at + seconds
    context = multiprocessing.get_context("fork")
    with context.Pool(clients) as pool:
        results = pool.starmap(_worker, [(origin, key, task_id, start_at, stop_at)] * clients)
    good = sorted(t for r in results for t in r if t >= 0)
    errors = sum(1 for r in results for t in r if t < 0)

    def percentile(q: float) -> float:
        return good[min(len(good) - 1, int(q * len(good)))] * 1000 if good else 0.0

    return LoadResult(len(good), errors, seconds, clients, percentile(0.5), percentile(0.99))


def _start_simulator() -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "batchgen.sim.cli", "--port", "0", "--latency", "0.01"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http"):
        process.kill()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return process, line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; print the figure; 0 if it reached ``--target`` requests/s."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_load", description=__doc__)
    parser.add_argument("--url", help="base URL of a running simulator (default: start one)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (%(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration (%(default)s)")
    parser.add_argument("--key", default="sk-sim", help="API key (%(default)s)")
    parser.add_argument("--target", type=float, default=1000.0, help="requests/s to reach")
    ns = parser.parse_args(argv)
    process = None
    url = ns.url
    if url is None:
        process, url = _start_simulator()
    try:
        parts = urlsplit(url)
        result = run_load(
            f"{parts.scheme}://{parts.netloc}", clients=ns.clients, seconds=ns.seconds, key=ns.key
        )
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
    print(result, flush=True)
    return 0 if result.rate >= ns.target else 1


if __name__ == "__main__":
    sys.exit(main())
