"""``batchgen sim`` as a real subprocess: prints its URL, serves, stops cleanly on signals."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

import httpx2 as httpx
import pytest

import batchgen.sim as sim_package
from batchgen.sim.cli import configure_parser, main


def start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start the simulator CLI on a free port; the process, its base URL and summary line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen.sim.cli", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip()
    summary = process.stdout.readline().strip()
    return process, base_url, summary


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_and_stops_on_signal(signum: signal.Signals) -> None:
    """The CLI prints the base URL, answers requests, and exits 0 on SIGINT or SIGTERM."""
    process, base_url, summary = start("--latency", "0.01", "--rpm", "30", "--drop-rate", "0.5")
    try:
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        assert "rpm=30" in summary
        assert "drop_rate=0.5" in summary
        origin = base_url.removesuffix("/v1")
        stats = httpx.get(origin + "/_sim/stats", timeout=5)
        assert stats.status_code == 200
        assert stats.json()["submissions_charged"] == 0
        answer = httpx.post(
            base_url + "/draw/result",
            json={"id": "task_x"},
            headers={"Authorization": "Bearer sk-sim"},
            timeout=5,
        )
        assert answer.status_code == 404
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_cli_reports_a_busy_port() -> None:
    """A port already in use is exit code 1 with a message, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1


def test_cli_rejects_unusable_options() -> None:
    """Options that fail validation are exit code 2."""
    assert main(["--burst", "0.5"]) == 2


def test_every_option_has_help() -> None:
    """Every batchgen sim option documents itself in --help."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 33
    assert all(a.help for a in options), [a.dest for a in options if not a.help]


def test_public_names() -> None:
    """batchgen.sim exports a sorted __all__ with the in-process API."""
    names = sim_package.__all__
    assert names == sorted(names)
    assert {"SimConfig", "SimServer", "running_simulator", "create_app"} <= set(names)
    assert all(hasattr(sim_package, name) for name in names)
