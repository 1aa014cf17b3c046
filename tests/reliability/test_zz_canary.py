"""The canary API key: used by the whole suite, found nowhere (runs last: ``zz``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from batchgen.api.auth import BearerAuth
from batchgen.api.client import CobabaClient
from batchgen.errors import AuthenticationError
from batchgen.runner.job import RunOptions
from tests.reliability.harness import (
    CANARY,
    CANARY_SCAN,
    CanaryScanner,
    Processes,
    RunProcess,
    figure,
    run_cli,
    start_sim,
    write_spec,
)


@pytest.mark.reliability
def test_scanner_finds_a_planted_canary(tmp_path: Path) -> None:
    """Positive control: the scanner does find the key when it is there (plain and UTF-16)."""
    probe = CanaryScanner()
    (tmp_path / "a.log").write_text(f"Authorization: Bearer {CANARY}\n", encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(b"\0" + CANARY.encode("utf-16-le"))
    probe.scan_dir(tmp_path)
    assert len(probe.hits) == 2
    for path in tmp_path.iterdir():
        path.unlink()  # the suite-wide scan must not count the planted copies


@pytest.mark.reliability
def test_canary_in_no_log_ledger_output_or_error(tmp_path: Path, procs: Processes) -> None:
    """A verbose run whose key is revoked mid-run, then status/export/plan: the key is nowhere."""
    logs = tmp_path / "logs"
    sim = start_sim(
        procs, logs, "--latency", "0.5", "--seed", "9", "--image-scale", "0.1",
        "--busy-rate", "0.1", "--error-rate", "0.05", "--drop-rate", "0.05",
        "--truncate-rate", "0.1",
    )  # fmt: skip
    job = tmp_path / "job"
    spec = write_spec(job, name="canary", tasks=40, concurrency=8)
    args = ["-vv", "run", str(spec), "--base-url", sim.base_url, "--json"]
    run = RunProcess(procs, args, cwd=job, logdir=logs)
    deadline = time.monotonic() + 60
    while sim.stats()["submissions_charged"] < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    sim.configure(keys=["someone-else"])  # 401s with the key's own error text
    assert run.wait(120) == 3
    sim.configure(keys=[CANARY])
    resumed = run_cli(procs, args, cwd=job, logdir=logs, timeout=300)
    assert resumed.rc in (0, 1)
    for extra in (
        ["status", str(spec), "--json"],
        ["export", str(spec), "-o", str(job / "export.jsonl")],
        ["export", str(spec), "--format", "csv"],
        ["plan", "--json", str(spec)],
        ["retry", str(spec), "--unknown"],
    ):
        assert run_cli(procs, extra, cwd=job, logdir=logs, timeout=120).rc == 0
    interrupted = RunProcess(procs, args, cwd=job, logdir=logs)
    time.sleep(1.0)
    interrupted.signal(signal.SIGINT)
    interrupted.wait(60)
    # In-process texts a library user would see.
    client = CobabaClient(auth=BearerAuth(CANARY), base_url=sim.base_url)
    texts = [
        repr(client),
        repr(BearerAuth(CANARY)),
        repr(RunOptions(auth=BearerAuth(CANARY))),
        str(AuthenticationError(f"refused key {CANARY}", status=401)),
        repr(AuthenticationError(f"Bearer {CANARY}", status=401)),
    ]
    for text in texts:
        CANARY_SCAN.scan_text("in-process text", text)
        assert CANARY not in text
    CANARY_SCAN.scan_dir(tmp_path)
    assert sim.stats()["downloads_with_credentials"] == 0


@pytest.mark.reliability
def test_canary_summary() -> None:
    """Across every test of this session, the canary key was found zero times."""
    assert CANARY_SCAN.hits == [], CANARY_SCAN.hits
    figure(
        "canary",
        f"key {CANARY[:8]}... used by every simulator and run of the session; searched"
        f" {CANARY_SCAN.files} files ({CANARY_SCAN.nbytes / 1e6:.1f} MB: logs, ledgers, WAL,"
        f" images, manifests, summaries, exports) and {CANARY_SCAN.texts} exception/message"
        f" texts: found {len(CANARY_SCAN.hits)} times",
    )
